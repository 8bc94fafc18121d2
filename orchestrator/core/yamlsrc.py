"""Located YAML: PyYAML that remembers where every key, item and value came from.

    data = load_yaml_file("compose.yaml")        # or parse_yaml(text, "compose.yaml")
    data["services"].loc                          # Loc(file, line, column) of the mapping
    data["services"].loc_of("web")                # where the key `web` is written
    data["services"].value_loc("web")             # where its value starts
    data["services"]["web"]["ports"].loc_of(1)    # where the second item is

Containers are `YMap` (a dict) and `YList` (a list); scalars stay plain Python
values (str, int, float, bool, None). Lines and columns are 1-based.

Scalars resolve by the YAML 1.2 core schema, as Docker Compose (Go yaml.v3) does,
not by PyYAML's YAML 1.1 rules: `yes`/`no`/`on`/`off` stay strings, `22:22` stays
the string "22:22" (YAML 1.1 reads it as the base-60 integer 1342), timestamps stay
strings. Integers accept `0x`, `0o`, `0b`, a leading-zero octal (`0440`, as in Go) and
`_` separators. Mapping keys are always strings (the key's text as written).

Compose's `!reset` and `!override` tags are kept beside the value, in the parent
mapping: `parent.tag_of(key)` returns "reset", "override" or None (`YList.tag_of(i)`
likewise for items). The value itself is constructed as if untagged (so
`ports: !reset []` gives `[]` with tag "reset"). Any other local tag (`!foo`) is an
error. `<<` merge keys are honoured (explicit keys win over merged ones); a key written
twice in the same mapping is an error.

Errors raise `orchestrator.errors.InputError` with file, line, column and a fix:
syntax errors, duplicate keys, unknown tags, recursive aliases, files that are not
UTF-8, unreadable files. An empty document parses to None.

Hostile input is refused the same way (limits in `orchestrator.limits`): files over
YAML_MAX_BYTES or that are not regular files, nesting deeper than YAML_MAX_DEPTH, and
aliases that repeat more than YAML_MAX_ALIAS_NODES values or YAML_MAX_ALIAS_CHARS
characters (a "billion laughs" of nested aliases is refused as soon as it passes them).
"""


from __future__ import annotations

import contextlib
import gc
import os
from typing import Any

import yaml

from orchestrator.errors import InputError, Problem
from orchestrator.limits import YAML_MAX_BYTES, read_bounded
from orchestrator.core.yamlbuild import HAVE_LIBYAML, Builder, Loader, Refused
from orchestrator.core.yamltree import (  # noqa: F401 - the located tree, loaded from here
    OVERRIDE, RESET, Loc, YList, YMap, iter_located, locate, map_strings, to_plain)

__all__ = [
    "Loc",
    "YMap",
    "YList",
    "load_yaml_file",
    "parse_yaml",
    "map_strings",
    "locate",
    "to_plain",
    "iter_located",
    "RESET",
    "OVERRIDE",
    "HAVE_LIBYAML",
    "no_gc",
]


# --------------------------------------------------------------------------- loading
@contextlib.contextmanager
def no_gc():
    """Pause the cyclic garbage collector while building many objects.

    Building a large tree of containers triggers collections again and again
    (quadratic-ish); nothing built here is cyclic, so pausing it is safe and makes
    loading a 5,000-service file several times faster.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse_yaml(text: str, file: str) -> Any:
    """Parse one YAML document from `text`; `file` names it in locations and errors."""
    with no_gc():
        return _parse_yaml(text, file)


def _parse_yaml(text: str, file: str) -> Any:
    try:
        loader = Loader(text)
        try:
            node = loader.get_single_node()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        raise InputError(_syntax_problem(err, file, text)) from None
    except yaml.YAMLError as err:  # reader errors and the like
        raise InputError(_reader_problem(err, file, text)) from None
    if node is None:
        return None
    builder = Builder(file)
    try:
        value, _ = builder.build(node)
    except Refused as err:
        m = err.mark
        raise InputError(Problem(err.message, file=file, line=m.line + 1, column=m.column + 1, key=err.key(),
                                 fix=err.fix)) from None
    if builder.problems:
        raise InputError(builder.problems)
    return value


def load_yaml_file(path: str | os.PathLike, display: str | None = None) -> Any:
    """Read and parse a YAML file. `display` overrides the file name shown in errors."""
    name = display or str(path)
    try:
        raw = read_bounded(path, YAML_MAX_BYTES, "a YAML file")
    except FileNotFoundError:
        raise InputError(Problem(f"file not found: {name}", file=name,
                                 fix="check the path (relative paths are from the working directory)")) from None
    except IsADirectoryError:
        raise InputError(Problem(f"{name} is a directory, not a file", file=name,
                                 fix="name the YAML file inside it")) from None
    except OSError as err:
        raise InputError(Problem(f"cannot read {name}: {err.strerror or err}", file=name,
                                 fix=getattr(err, "fix", None) or "check that the file exists and is readable")) from None
    return parse_yaml(decode_utf8(raw, name), name)


def decode_utf8(raw: bytes, name: str) -> str:
    """Decode file bytes as UTF-8 (a BOM is allowed) or raise a located InputError."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start
        before = raw[:start]
        line = before.count(b"\n") + 1
        col_bytes = before[before.rfind(b"\n") + 1:]
        column = len(col_bytes.decode("utf-8", errors="replace")) + 1
        if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
            hint = "the file looks like UTF-16; save it as UTF-8"
        else:
            hint = "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
        raise InputError(Problem(
            f"file is not valid UTF-8 (byte 0x{raw[start]:02x} at offset {start})",
            file=name, line=line, column=column, fix=hint,
        )) from None


def _syntax_problem(err: yaml.MarkedYAMLError, file: str, text: str = "") -> Problem:
    mark = err.problem_mark or err.context_mark
    what = err.problem or "invalid YAML"
    if err.context:
        cm = err.context_mark
        where = ""
        if cm is not None and (mark is None or cm.line != mark.line):
            where = f" started at line {cm.line + 1}"
        what = f"{what} ({err.context}{where})"
    what = what.replace("\n", " ")
    fix = "check the indentation and quoting around this line"
    low = what.lower()
    bad_char = ""
    if mark is not None and text:
        lines = text.split("\n")
        if mark.line < len(lines) and mark.column < len(lines[mark.line]):
            bad_char = lines[mark.line][mark.column]
    if bad_char == "\t" or "'\\t'" in low:
        fix = "YAML does not allow tabs for indentation; use spaces"
    elif "expected a single document" in low:
        fix = "keep one YAML document per file (remove the extra `---`)"
    elif "mapping values are not allowed" in low:
        fix = "quote values that contain ': ' or check the indentation of this line"
    elif "found undefined alias" in low:
        fix = "define the anchor (&name) before using the alias (*name)"
    return Problem(f"YAML syntax error: {what}", file=file,
                   line=(mark.line + 1) if mark else None,
                   column=(mark.column + 1) if mark else None, fix=fix)


def _reader_problem(err: yaml.YAMLError, file: str, text: str) -> Problem:
    line = column = None
    pos = getattr(err, "position", None)
    char = getattr(err, "character", None)
    if isinstance(pos, int) and 0 <= pos <= len(text):
        before = text[:pos]
        line = before.count("\n") + 1
        column = pos - (before.rfind("\n") + 1) + 1
    if isinstance(err, yaml.reader.ReaderError) and isinstance(char, int):
        msg = f"unacceptable character #x{char:04x} (a control character)"
        fix = "remove the control character, or write it as an escape inside double quotes"
    else:
        msg = str(err).replace("\n", " ")
        fix = "check the file's YAML syntax"
    return Problem(f"YAML error: {msg}", file=file, line=line, column=column, fix=fix)
