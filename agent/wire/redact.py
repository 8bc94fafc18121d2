"""What counts as a secret, and how it is masked: the one rule for output and the ledger.

Pure and stdlib-only (Python 3.9): the controller imports it for its output filter and
for the manifests it records, the agent for its check that a manifest it stores holds
no secret in clear. A value is a secret when

  (a) it is a known secret value: a Compose secret's content, a registry password, a
      value under a secret name in the environment or .env (the caller passes them);
  (b) it sits under a secret NAME (secret_name) as a mapping value anywhere in a
      Compose project: environment, labels, build args, x-* extensions, ...;
  (c) it is the password part of text: the userinfo password of a URL
      (scheme://user:PW@host, scheme://:PW@host), the value of a NAME=VALUE pair whose
      NAME is a secret name (Password=PW; in a connection string, --api-key=PW,
      DB_PASSWORD=PW in a shell command), or the word after a secret-named flag in an
      argument list (["--password", "PW"]). Only that part is masked.

Masking replaces the whole value (b) or just the secret part (a, c) by a fixed mark:
"***" in output, REDACTED ("<redacted>") in the ledger. Nothing derived from a secret
(no hash, salted or not) is kept, so a copy of the ledger allows no offline guessing.

Secret names: the name is cut into words at "_", "-", ".", spaces and lower->upper
case changes (dbPassword -> DB, PASSWORD). It is secret when a word is one of
SECRET_WORDS, or contains one of SECRET_STEMS (PGPASSWORD, MYSECRET), unless its last
word says it names where a secret is or who uses it (NOT_SECRET_LAST: ..._FILE,
..._PATH, ..._URL, ..._USER, ...), or it is the shell's PWD/OLDPWD (upper case
exactly: "pwd=" in a connection string is a password). Whole words keep
KEYBOARD, MONKEY, AUTHOR, PASSENGER, BYPASS from being secrets; a public name that
has a secret word (PUBLIC_KEY) is masked: a false positive only hides a value.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, List, Optional, Tuple

MASK = "***"
REDACTED = "<redacted>"
# Markers an older orch wrote ("<redacted sha256:...>") are still recognised.
REDACTED_PREFIX = "<redacted"

SECRET_WORDS = frozenset((
    "PASSWORD", "PASSWORDS", "PASSWD", "PASS", "PWD", "PASSPHRASE", "SECRET", "SECRETS", "TOKEN", "TOKENS",
    "KEY", "KEYS", "APIKEY", "PRIVATE", "PRIVKEY", "CREDENTIAL", "CREDENTIALS", "CREDS", "AUTH", "DSN",
))
SECRET_STEMS = ("PASSWORD", "PASSWD", "PASSPHRASE", "SECRET", "CREDENTIAL", "APIKEY", "PRIVATEKEY")
NOT_SECRET_LAST = frozenset(("FILE", "PATH", "DIR", "ENV", "URL", "USER", "USERNAME", "NAME", "ID"))
NOT_SECRET_NAMES = frozenset(("PWD", "OLDPWD"))

_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# scheme://[user]:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@\s/]+)(?=@)")
# NAME=VALUE (also "NAME = VALUE", not "NAME==VALUE") up to a separator: ; & , whitespace or a quote
_PAIR = re.compile(r"(?P<head>(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)\s*=(?!=)\s*)(?P<secret>[^\s;&,'\"]+)")
_FLAG = re.compile(r"^--?(?P<name>[A-Za-z][A-Za-z0-9_.-]*)$")


def _words(name: str) -> List[str]:
    return [w.upper() for w in _WORD_SPLIT.split(name) if w]


def secret_name(name: Any) -> bool:
    """Does a variable, label or option with this name hold a secret? (module docstring)"""
    if not isinstance(name, str) or name in NOT_SECRET_NAMES:  # exact case: "pwd=" is a password
        return False
    words = _words(name)
    if not words or words[-1] in NOT_SECRET_LAST:
        return False
    return any(w in SECRET_WORDS or any(s in w for s in SECRET_STEMS) for w in words)


def is_redacted(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(REDACTED_PREFIX)


def _text_spans(text: str) -> List[Tuple[int, int]]:
    """Where the (c) secrets are in text: (start, end) of each password part."""
    spans = [m.span("secret") for m in _URL_PASSWORD.finditer(text)]
    spans += [m.span("secret") for m in _PAIR.finditer(text) if secret_name(m.group("name"))]
    return spans


def text_secrets(text: str) -> List[str]:
    """The password parts of text under rule (c)."""
    return [text[a:b] for a, b in _text_spans(text) if not text[a:b].startswith(REDACTED_PREFIX)]


def mask_text(text: str, mark: str = MASK, known: Iterable[str] = ()) -> str:
    """text with rule (c)'s password parts and every known value replaced by mark."""
    spans = sorted(_text_spans(text), reverse=True)
    for a, b in spans:
        if not text[a:b].startswith(REDACTED_PREFIX):
            text = text[:a] + mark + text[b:]
    return mask_known(text, known, mark)


# A known value quoted in part (an error message cuts a long value short) is masked
# from its first PARTIAL_MIN characters on: shorter fragments would hit ordinary text.
PARTIAL_MIN = 16


def mask_known(text: str, known: Iterable[str], mark: str = MASK) -> str:
    """text with every known value (longest first), and every quote of one's first
    PARTIAL_MIN or more characters, replaced by mark."""
    for value in known:
        if value in text:
            text = text.replace(value, mark)
        if len(value) <= PARTIAL_MIN:
            continue
        head = value[:PARTIAL_MIN]
        start = text.find(head)
        while start >= 0:
            end, limit = start + PARTIAL_MIN, min(len(text), start + len(value))
            while end < limit and text[end] == value[end - start]:
                end += 1
            text = text[:start] + mark + text[end:]
            start = text.find(head, start + len(mark))
    return text


def _flag_secret(prev: Any) -> bool:
    m = _FLAG.match(prev) if isinstance(prev, str) else None
    return bool(m and secret_name(m.group("name")))


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def mask_tree(tree: Any, mark: str = MASK, known: Iterable[str] = ()) -> Any:
    """A copy of a Compose project / service (dicts, lists, scalars) with rules (a)-(c)
    applied. Already redacted values are kept as they are."""
    known = sorted({k for k in known if isinstance(k, str) and k}, key=len, reverse=True)

    def walk(value: Any, key: Any = None, prev: Any = None, kind: str = "") -> Any:
        if isinstance(value, dict):
            out = {}
            for k, v in value.items():
                if kind == "secrets" and isinstance(v, dict) and _scalar(v.get("content")) and v["content"] != "":
                    v = dict(v, content=mark)  # a Compose secret's inline content
                out[k] = walk(v, k, kind=k if value is tree else "")
            return out
        if isinstance(value, list):
            return [walk(v, prev=value[i - 1] if i else None) for i, v in enumerate(value)]
        if not _scalar(value) or value == "" or is_redacted(value):
            return value
        if secret_name(key) or _flag_secret(prev):
            return mark
        return mask_text(value, mark, known) if isinstance(value, str) else value

    return walk(tree)


def find_secrets(tree: Any) -> List[str]:
    """The clear values rules (b) and (c) find in a tree (for the output filter)."""
    out: List[str] = []

    def walk(value: Any, key: Any = None, prev: Any = None, top: Optional[str] = None) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if top == "secrets" and isinstance(v, dict) and isinstance(v.get("content"), str):
                    out.append(v["content"])
                walk(v, k, top=k if value is tree else None)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(v, prev=value[i - 1] if i else None)
        elif _scalar(value) and value != "" and not is_redacted(value):
            if secret_name(key) or _flag_secret(prev):
                out.append(str(value))
            elif isinstance(value, str):
                out.extend(text_secrets(value))

    walk(tree)
    return out


def first_clear_secret(tree: Any, path: str = "") -> Optional[str]:
    """The key path of the first value rules (b) and (c) find in clear, or None (the
    agent's check that a manifest it stores is redacted)."""

    def walk(value: Any, path: str, key: Any = None, prev: Any = None) -> Optional[str]:
        if isinstance(value, dict):
            for k, v in value.items():
                if path == "secrets" and isinstance(v, dict) and isinstance(v.get("content"), str) \
                        and v["content"] and not is_redacted(v["content"]):
                    return "secrets.%s.content" % k
                found = walk(v, "%s.%s" % (path, k) if path else str(k), k)
                if found:
                    return found
            return None
        if isinstance(value, list):
            for i, v in enumerate(value):
                found = walk(v, "%s[%d]" % (path, i), prev=value[i - 1] if i else None)
                if found:
                    return found
            return None
        if _scalar(value) and value != "" and not is_redacted(value):
            if secret_name(key) or _flag_secret(prev) or (isinstance(value, str) and text_secrets(value)):
                return path
        return None

    return walk(tree, path)
