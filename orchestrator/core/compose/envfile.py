"""`.env` and `env_file` files, in Compose's dotenv syntax.

    # comment
    export KEY=value          # inline comment after whitespace
    KEY="double quoted, may span lines, \\n escapes, ${OTHER} interpolated"
    KEY='single quoted: literal, may span lines'
    KEY=                      # empty string
    KEY                       # no '=': the value comes from the lookup (environment),
                              # and the key is left out when the lookup has none

Unquoted and double-quoted values are interpolated (${VAR}, ${VAR:-default}, ...)
against the lookup first, then against keys defined earlier in the same file.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Mapping

from orchestrator.errors import InputError, Problem
from orchestrator.limits import DOTENV_MAX_BYTES, read_bounded
from orchestrator.core.yamlsrc import decode_utf8

from .interpolate import TemplateError, substitute

_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "$": "$", "'": "'"}


def parse_dotenv(
    text: str,
    file: str,
    lookup: Callable[[str], str | None] | None = None,
    fallback: Callable[[str], str | None] | None = None,
) -> dict[str, str]:
    """Parse dotenv text. Raises InputError listing every bad line.

    Interpolation looks a name up in `lookup` (the shell), then in the keys defined
    earlier in this file, then in `fallback` (e.g. earlier env files).
    """
    out: dict[str, str] = {}
    problems: list[Problem] = []
    base = lookup or (lambda _k: None)
    after = fallback or (lambda _k: None)

    def get(name: str) -> str | None:
        v = base(name)
        if v is None:
            v = out.get(name)
        if v is None:
            v = after(name)
        return v

    lines = text.splitlines()
    n = 0
    while n < len(lines):
        raw = lines[n]
        lineno = n + 1
        n += 1
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[7:].lstrip()
        m = _KEY_RE.match(line)
        if not m:
            problems.append(Problem(
                f"invalid line {raw.strip()!r}: a variable name must start with a letter or _",
                file=file, line=lineno, column=1,
                fix="write KEY=value (names: letters, digits, _ . -)",
            ))
            continue
        key = m.group(0)
        rest = line[m.end():]
        stripped = rest.lstrip()
        if not stripped or stripped.startswith("#"):
            value = get(key)
            if value is not None:
                out[key] = value
            continue
        if stripped[0] not in "=:" or (stripped[0] == ":" and not stripped[1:2].isspace()):
            what = ("a variable name cannot contain spaces" if rest[:1].isspace()
                    else f"unexpected character {stripped[0]!r} after the name {key!r}")
            problems.append(Problem(
                f"invalid line {raw.strip()!r}: {what}",
                file=file, line=lineno, column=raw.find(stripped) + 1 if stripped in raw else 1,
                fix="write KEY=value without spaces in the name; quote values with spaces",
            ))
            continue
        value_text = stripped[1:].lstrip(" \t")
        try:
            if value_text.startswith("'"):
                value, n = _quoted(value_text, "'", lines, n)
            elif value_text.startswith('"'):
                value, n = _quoted(value_text, '"', lines, n)
                value = _unescape(value)
                value = substitute(value, get)
            else:
                value = _strip_comment(value_text).rstrip()
                value = substitute(value, get)
        except _Unclosed as err:
            problems.append(Problem(
                f"unterminated {err.quote} quote in the value of {key}", file=file,
                line=lineno, column=1, fix=f"close the value with {err.quote}",
            ))
            break
        except TemplateError as err:
            problems.append(Problem(f"{key}: {err.message}", file=file, line=lineno, column=1,
                                    fix=err.fix))
            continue
        out[key] = value
    if problems:
        raise InputError(problems)
    return out


class _Unclosed(Exception):
    def __init__(self, quote: str):
        self.quote = quote


def _quoted(first: str, quote: str, lines: list[str], n: int) -> tuple[str, int]:
    """Read a quoted value that starts on `first` and may continue on later lines."""
    buf = first[1:]
    while True:
        end = _find_close(buf, quote)
        if end >= 0:
            return buf[:end], n
        if n >= len(lines):
            raise _Unclosed(quote)
        buf += "\n" + lines[n]
        n += 1


def _find_close(s: str, quote: str) -> int:
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and quote == '"':
            i += 2
            continue
        if c == quote:
            return i
        i += 1
    return -1


def _unescape(s: str) -> str:
    if "\\" not in s:
        return s
    out = []
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt == "$":
                out.append("$$")  # stays literal through interpolation
            else:
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _strip_comment(s: str) -> str:
    for i, c in enumerate(s):
        if c == "#" and (i == 0 or s[i - 1] in " \t"):
            return s[:i]
    return s


def read_dotenv(
    path: str | os.PathLike,
    display: str | None = None,
    lookup: Callable[[str], str | None] | None = None,
    fallback: Callable[[str], str | None] | None = None,
) -> dict[str, str]:
    """Read and parse a dotenv file (UTF-8). Raises InputError."""
    name = display or str(path)
    try:
        raw = read_bounded(path, DOTENV_MAX_BYTES, "an env file")
    except FileNotFoundError:
        raise InputError(Problem(f"env file not found: {name}", file=name,
                                 fix="create the file or correct the path")) from None
    except OSError as err:
        raise InputError(Problem(f"cannot read env file {name}: {err.strerror or err}",
                                 file=name, fix=getattr(err, "fix", None) or "check the file's permissions")) from None
    return parse_dotenv(decode_utf8(raw, name), name, lookup, fallback)


def layered_lookup(*maps: Mapping[str, str]) -> Callable[[str], str | None]:
    """Look a name up in each mapping in turn."""

    def get(name: str) -> str | None:
        for m in maps:
            v = m.get(name)
            if v is not None:
                return v
        return None

    return get
