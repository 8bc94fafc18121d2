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
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from orchestrator.errors import InputError, Problem
from orchestrator.limits import (
    YAML_MAX_ALIAS_CHARS,
    YAML_MAX_ALIAS_NODES,
    YAML_MAX_BYTES,
    YAML_MAX_DEPTH,
    read_bounded,
)

try:  # libyaml: parsing and composing in C
    from yaml._yaml import CParser as _Parser

    HAVE_LIBYAML = True
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml.composer import Composer as _Composer
    from yaml.parser import Parser as _PyParser
    from yaml.reader import Reader as _Reader
    from yaml.scanner import Scanner as _Scanner

    class _Parser(_Reader, _Scanner, _PyParser, _Composer):  # type: ignore[no-redef]
        def __init__(self, stream):
            _Reader.__init__(self, stream)
            _Scanner.__init__(self)
            _PyParser.__init__(self)
            _Composer.__init__(self)

    HAVE_LIBYAML = False

__all__ = [
    "Loc",
    "YMap",
    "YList",
    "load_yaml_file",
    "parse_yaml",
    "map_strings",
    "locate",
    "to_plain",
    "RESET",
    "OVERRIDE",
    "HAVE_LIBYAML",
    "no_gc",
]

RESET = "reset"
OVERRIDE = "override"


@dataclass(frozen=True, slots=True)
class Loc:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    def problem(self, message: str, *, key: str | None = None, fix: str | None = None) -> Problem:
        return Problem(message, file=self.file, line=self.line, column=self.column, key=key, fix=fix)


# A position is stored compactly as (file, line, column); Loc objects are made on demand.
_Pos = tuple  # (file, line, column)


def _loc(pos: _Pos | None) -> Loc | None:
    return None if pos is None else Loc(pos[0], pos[1], pos[2])


class YMap(dict):
    """A dict that remembers where it, each key and each value were written.

    Per key it keeps (file, key line, key column, value line, value column); file is
    per key because merged mappings hold keys from several files.
    """

    __slots__ = ("_pos", "_meta", "_tags")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._pos: _Pos | None = None
        self._meta: dict = {}
        self._tags: dict | None = None

    # --- locations -------------------------------------------------------------------
    @property
    def loc(self) -> Loc | None:
        return _loc(self._pos)

    @loc.setter
    def loc(self, value: Loc | None) -> None:
        self._pos = None if value is None else (value.file, value.line, value.column)

    def loc_of(self, key: Any) -> Loc | None:
        """Where `key` is written; the mapping's own location if the key is absent."""
        m = self._meta.get(key)
        if m is None:
            return self.loc
        return Loc(m[0], m[1], m[2])

    def value_loc(self, key: Any) -> Loc | None:
        """Where the value of `key` starts; falls back like loc_of."""
        m = self._meta.get(key)
        if m is None:
            return self.loc
        return Loc(m[0], m[3], m[4])

    def tag_of(self, key: Any) -> str | None:
        """"reset", "override" or None: the Compose tag written on the value of `key`."""
        return self._tags.get(key) if self._tags else None

    # --- building --------------------------------------------------------------------
    def set_located(
        self, key: Any, value: Any, key_loc: Loc | None, value_loc: Loc | None = None,
        tag: str | None = None,
    ) -> None:
        """Set `key` with explicit locations (value_loc defaults to key_loc)."""
        self[key] = value
        if key_loc is not None:
            v = value_loc or key_loc
            self._meta[key] = (key_loc.file, key_loc.line, key_loc.column, v.line, v.column)
        self.set_tag(key, tag)

    def set_tag(self, key: Any, tag: str | None) -> None:
        if tag:
            if self._tags is None:
                self._tags = {}
            self._tags[key] = tag
        elif self._tags:
            self._tags.pop(key, None)

    def copy_meta(self, key: Any, src: "YMap", src_key: Any = None, *, with_tag: bool = False) -> None:
        """Give `key` the locations (and optionally tag) that `src[src_key]` has."""
        sk = key if src_key is None else src_key
        m = src._meta.get(sk)
        if m is not None:
            self._meta[key] = m
        if with_tag:
            self.set_tag(key, src.tag_of(sk))

    def shallow(self) -> "YMap":
        """A shallow copy that keeps locations and tags."""
        out = YMap(self)
        out._pos = self._pos
        out._meta = dict(self._meta)
        out._tags = dict(self._tags) if self._tags else None
        return out

    copy = shallow  # dict.copy() would drop locations

    def __delitem__(self, key):
        super().__delitem__(key)
        self._meta.pop(key, None)
        if self._tags:
            self._tags.pop(key, None)

    def pop(self, key, *default):
        self._meta.pop(key, None)
        if self._tags:
            self._tags.pop(key, None)
        return super().pop(key, *default)

    def __repr__(self) -> str:
        return f"YMap({dict.__repr__(self)})"

    def __reduce__(self):
        return (_rebuild_ymap, (dict(self), self._pos, self._meta, self._tags))


def _rebuild_ymap(items, pos, meta, tags):
    m = YMap(items)
    m._pos, m._meta, m._tags = pos, meta, tags
    return m


class YList(list):
    """A list that remembers where it and each of its items were written."""

    __slots__ = ("_pos", "_ipos", "_tags")

    def __init__(self, *args):
        super().__init__(*args)
        self._pos: _Pos | None = None
        self._ipos: list = []  # per item (file, line, column), or None
        self._tags: dict | None = None

    @property
    def loc(self) -> Loc | None:
        return _loc(self._pos)

    @loc.setter
    def loc(self, value: Loc | None) -> None:
        self._pos = None if value is None else (value.file, value.line, value.column)

    def loc_of(self, index: int) -> Loc | None:
        """Where item `index` is written; the list's own location if unknown."""
        try:
            p = self._ipos[index]
        except IndexError:
            p = None
        return _loc(p) if p is not None else self.loc

    value_loc = loc_of

    def tag_of(self, index: int) -> str | None:
        return self._tags.get(index) if self._tags else None

    def append_located(self, value: Any, loc: Loc | None) -> None:
        self.append(value)
        while len(self._ipos) < len(self) - 1:
            self._ipos.append(None)
        self._ipos.append(None if loc is None else (loc.file, loc.line, loc.column))

    def extend_from(self, other: "YList | list") -> None:
        """Append the items of `other`, keeping their locations when it is a YList."""
        while len(self._ipos) < len(self):
            self._ipos.append(None)
        self.extend(other)
        if isinstance(other, YList):
            ip = other._ipos
            self._ipos.extend(ip[i] if i < len(ip) else None for i in range(len(other)))
        else:
            self._ipos.extend([None] * len(other))

    def shallow(self) -> "YList":
        out = YList(self)
        out._pos = self._pos
        out._ipos = list(self._ipos)
        out._tags = dict(self._tags) if self._tags else None
        return out

    copy = shallow

    def __repr__(self) -> str:
        return f"YList({list.__repr__(self)})"

    def __reduce__(self):
        return (_rebuild_ylist, (list(self), self._pos, self._ipos, self._tags))


def _rebuild_ylist(items, pos, ipos, tags):
    out = YList(items)
    out._pos, out._ipos, out._tags = pos, ipos, tags
    return out


# --------------------------------------------------------------------------- scalars
# YAML 1.2 core schema, with Go yaml.v3's leniencies (see module docstring).
_NULL = {"", "~", "null", "Null", "NULL"}
_TRUE = {"true", "True", "TRUE"}
_FALSE = {"false", "False", "FALSE"}
_INT_RE = re.compile(r"[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)\Z")
_FLOAT_RE = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z")
_INF_RE = re.compile(r"[-+]?\.(?:inf|Inf|INF)\Z")
_NAN_RE = re.compile(r"\.(?:nan|NaN|NAN)\Z")
# Characters a plain scalar must start with to be anything but a string.
_NONSTR_START = set("0123456789-+.~ntfNTF")

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_BINARY_TAG = "tag:yaml.org,2002:binary"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


def _plain_scalar(text: str) -> Any:
    """Resolve an untagged plain scalar."""
    if not text:
        return None
    if text[0] not in _NONSTR_START:
        return text
    if text in _NULL:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if _INT_RE.match(text):
        return _to_int(text)
    if _FLOAT_RE.match(text):
        return float(text)
    if _INF_RE.match(text):
        return float("-inf") if text[0] == "-" else float("inf")
    if _NAN_RE.match(text):
        return float("nan")
    return text


def _to_int(text: str) -> int:
    t = text.replace("_", "")
    sign = -1 if t[:1] == "-" else 1
    t = t.lstrip("+-")
    if len(t) > 1 and t[0] == "0" and t[1].isdigit():
        if all(c in "01234567" for c in t):
            return sign * int(t, 8)
        return sign * int(t, 10)
    return sign * int(t, 0)


class _Loader(_Parser):
    """Only the parser/composer part of PyYAML; tags are resolved by _Builder."""

    def __init__(self, stream):
        _Parser.__init__(self, stream)

    # The composer asks the resolver for the tag of every node. We resolve scalars
    # ourselves, so answer cheaply: None means "implicit" and _Builder decides.
    def resolve(self, kind, value, implicit):  # noqa: D401 - PyYAML protocol
        if kind is ScalarNode:
            if implicit[0]:
                return None
            return _STR_TAG
        if kind is SequenceNode:
            return _SEQ_TAG
        return _MAP_TAG

    def descend_resolver(self, current_node, current_index):
        pass

    def ascend_resolver(self):
        pass


class _Refused(Exception):
    """A document over a limit: stops the build; each frame it leaves adds its key."""

    def __init__(self, message: str, fix: str, mark):
        super().__init__(message)
        self.message, self.fix, self.mark = message, fix, mark
        self.path: list = []  # innermost first
        self.from_alias = False  # raised inside a value an alias repeats

    def leave(self, key, mark) -> None:
        """Called by the mapping or list holding `key` (written at `mark`)."""
        if self.from_alias:  # report the alias where it is written, not the copy's insides
            self.path, self.mark, self.from_alias = [key], mark, False
        else:
            self.path.append(key)

    def key(self) -> str | None:
        parts = self.path[::-1]
        text = ""
        for part in parts[:12]:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
        return (text + ("..." if len(parts) > 12 else "")) or None


# A scalar this long is remembered, so an alias repeating it is charged (shorter ones
# cannot amplify a file more than a few times: `*a` takes 3 bytes to write).
_LONG_SCALAR = 64


class _Builder:
    """Turns composed PyYAML nodes into YMap / YList / scalars, collecting problems.

    Aliases make the composed document a graph whose nodes are shared; building turns
    it into a tree, copying a shared node each time it is reached again. Those copies
    are charged against the alias budget, and nesting against the depth limit.
    """

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self._active: set[int] = set()
        self._built: set[int] = set()  # containers and long scalars built once already
        self._depth = 0
        self._copying = 0  # > 0 while building a repeated (aliased) value
        self._alias_nodes = 0
        self._alias_chars = 0

    def pos(self, node) -> _Pos:
        m = node.start_mark
        return (self.file, m.line + 1, m.column + 1)

    def problem(self, node, message: str, fix: str | None = None) -> None:
        m = node.start_mark
        self.problems.append(
            Problem(message, file=self.file, line=m.line + 1, column=m.column + 1, fix=fix)
        )

    def tag(self, node) -> tuple[str | None, str | None]:
        """Return (standard tag or None for implicit, compose tag or None)."""
        tag = node.tag
        if tag is None or tag == "!":
            return None, None
        if tag == "!reset":
            return None, RESET
        if tag == "!override":
            return None, OVERRIDE
        return tag, None

    def build(self, node) -> tuple[Any, str | None]:
        std, ctag = self.tag(node)
        cls = type(node)
        if cls is ScalarNode:
            if len(node.value) > _LONG_SCALAR:
                self.long_scalar(node)
            return self.scalar(node, std), ctag
        key = id(node)
        if key in self._active:
            self.problem(node, "recursive YAML alias (an anchor that contains itself)",
                         "remove the alias that refers back to its own anchor")
            return None, ctag
        copy = key in self._built
        if copy:
            self._copying += 1
        else:
            self._built.add(key)
        if self._copying:
            self.charge(node)
        self._depth += 1
        if self._depth > YAML_MAX_DEPTH:
            raise _Refused(f"YAML nested deeper than {YAML_MAX_DEPTH} levels",
                           f"flatten the structure (the limit is {YAML_MAX_DEPTH} levels of mappings and lists)",
                           node.start_mark)
        self._active.add(key)
        try:
            if cls is MappingNode:
                if std not in (None, _MAP_TAG):
                    self.unknown_tag(node)
                return self.mapping(node), ctag
            if std not in (None, _SEQ_TAG):
                self.unknown_tag(node)
            return self.sequence(node), ctag
        except _Refused as err:
            err.from_alias = err.from_alias or copy
            raise
        finally:
            self._active.discard(key)
            self._depth -= 1
            if copy:
                self._copying -= 1

    def charge(self, node) -> None:
        """Charge a copied container (its items and their scalar text) to the alias budget."""
        self._alias_nodes += 1 + len(node.value)
        chars = 0
        for item in node.value:
            for sub in (item if type(item) is tuple else (item,)):
                if type(sub) is ScalarNode:
                    chars += len(sub.value)
        self._alias_chars += chars
        self.check_budget(node)

    def long_scalar(self, node) -> None:
        key = id(node)
        if key in self._built:
            self._alias_chars += len(node.value)
            self.check_budget(node)
        else:
            self._built.add(key)

    def check_budget(self, node) -> None:
        if self._alias_nodes > YAML_MAX_ALIAS_NODES or self._alias_chars > YAML_MAX_ALIAS_CHARS:
            raise _Refused(
                f"YAML aliases expand to more than {YAML_MAX_ALIAS_NODES:,} values or "
                f"{YAML_MAX_ALIAS_CHARS:,} characters (nested aliases, a \"billion laughs\")",
                "write the values out or use fewer, smaller aliases (*name) and merge keys (<<:)",
                node.start_mark)

    def unknown_tag(self, node) -> None:
        self.problem(
            node,
            f"unsupported YAML tag {node.tag!r}",
            "remove the tag; Compose files only use the tags !reset and !override",
        )

    def scalar(self, node, std: str | None) -> Any:
        value = node.value
        if std is None:
            if not node.style:  # plain (quoted scalars were tagged str by _Loader)
                return _plain_scalar(value)
            return value
        if std == _STR_TAG:
            return value
        if std == _INT_TAG:
            if _INT_RE.match(value):
                return _to_int(value)
        elif std == _FLOAT_TAG:
            if _FLOAT_RE.match(value) or _INT_RE.match(value):
                return float(value.replace("_", ""))
            if _INF_RE.match(value):
                return float("-inf") if value[0] == "-" else float("inf")
            if _NAN_RE.match(value):
                return float("nan")
        elif std == _BOOL_TAG:
            if value in _TRUE:
                return True
            if value in _FALSE:
                return False
        elif std == _NULL_TAG:
            if value in _NULL:
                return None
        elif std in (_TIMESTAMP_TAG, _BINARY_TAG):
            return value
        else:
            self.unknown_tag(node)
            return value
        self.problem(node, f"{value!r} is not a valid {std.rsplit(':', 1)[-1]}",
                     "fix the value or remove the explicit tag")
        return value

    def key_text(self, node) -> str | None:
        if type(node) is not ScalarNode:
            self.problem(node, "a mapping key must be a plain value, not a list or mapping",
                         "use a string key")
            return None
        return node.value

    def mapping(self, node) -> YMap:
        out = YMap()
        m = node.start_mark
        out._pos = (self.file, m.line + 1, m.column + 1)
        meta = out._meta
        file = self.file
        merges = []
        knode = None
        try:  # costs nothing until a limit is hit; then names the key being built
            for knode, vnode in node.value:
                if type(knode) is not ScalarNode:
                    self.key_text(knode)  # reports the problem
                    continue
                key = knode.value
                ktag = knode.tag
                if ktag == _MERGE_TAG or (key == "<<" and ktag is None):
                    merges.append(vnode)
                    continue
                km = knode.start_mark
                if key in out:
                    first = meta[key]
                    self.problems.append(Problem(
                        f"duplicate key {key!r} (already defined at line {first[1]})",
                        file=file, line=km.line + 1, column=km.column + 1,
                        fix=f"keep only one {key!r} in this mapping",
                    ))
                    continue
                ctag = None
                if type(vnode) is ScalarNode:
                    vtag = vnode.tag
                    text = vnode.value
                    if len(text) > _LONG_SCALAR:
                        self.long_scalar(vnode)
                    if vtag is None:  # plain (quoted scalars are tagged str by _Loader)
                        value = _plain_scalar(text) if (not text or text[0] in _NONSTR_START) else text
                    elif vtag == _STR_TAG:
                        value = text
                    else:
                        value, ctag = self.build(vnode)
                else:
                    value, ctag = self.build(vnode)
                vm = vnode.start_mark
                out[key] = value
                meta[key] = (file, km.line + 1, km.column + 1, vm.line + 1, vm.column + 1)
                if ctag:
                    out.set_tag(key, ctag)
            if merges:
                knode = None
                self.merge_into(out, merges)
        except _Refused as err:
            if knode is None:
                err.leave("<<", merges[0].start_mark)
            else:
                err.leave(knode.value, knode.start_mark)
            raise
        return out

    def merge_into(self, out: YMap, merges: list) -> None:
        sources = []
        for vnode in merges:
            if type(vnode) is MappingNode:
                sources.append(vnode)
            elif type(vnode) is SequenceNode and all(type(n) is MappingNode for n in vnode.value):
                sources.extend(vnode.value)
            else:
                self.problem(vnode, "the merge key << expects a mapping or a list of mappings",
                             "point << at an anchored mapping, e.g. <<: *defaults")
        for src in sources:
            merged, _ = self.build(src)
            if not isinstance(merged, YMap):
                continue
            for k, v in merged.items():
                if k not in out:  # explicit keys, then earlier merges, win
                    out[k] = v
                    out.copy_meta(k, merged, with_tag=True)

    def sequence(self, node) -> YList:
        out = YList()
        m = node.start_mark
        out._pos = (self.file, m.line + 1, m.column + 1)
        ipos = out._ipos
        file = self.file
        for i, item in enumerate(node.value):
            try:
                value, ctag = self.build(item)
            except _Refused as err:
                err.leave(i, item.start_mark)
                raise
            im = item.start_mark
            out.append(value)
            ipos.append((file, im.line + 1, im.column + 1))
            if ctag:
                if out._tags is None:
                    out._tags = {}
                out._tags[i] = ctag
        return out


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
        loader = _Loader(text)
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
    builder = _Builder(file)
    try:
        value, _ = builder.build(node)
    except _Refused as err:
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


# --------------------------------------------------------------------------- helpers
def map_strings(node: Any, fn: Callable[[str, Loc], str], loc: Loc | None = None) -> Any:
    """Copy `node`, replacing every string scalar value (not keys) by fn(value, loc).

    `loc` is where the value is written (for a top-level scalar pass it yourself).
    Locations and tags are kept. Non-string scalars are returned as they are.
    """
    if isinstance(node, YMap):
        out = YMap()
        out._pos = node._pos
        out._meta = dict(node._meta)
        out._tags = dict(node._tags) if node._tags else None
        meta = node._meta
        for k, v in node.items():
            if isinstance(v, (str, YMap, YList, dict, list)):
                m = meta.get(k)
                vloc = Loc(m[0], m[3], m[4]) if m is not None else node.loc
                v = map_strings(v, fn, vloc)
            out[k] = v
        return out
    if isinstance(node, YList):
        out = YList()
        out._pos = node._pos
        out._ipos = list(node._ipos)
        out._tags = dict(node._tags) if node._tags else None
        for i, v in enumerate(node):
            if isinstance(v, (str, YMap, YList, dict, list)):
                v = map_strings(v, fn, node.loc_of(i))
            out.append(v)
        return out
    if isinstance(node, str):
        return fn(node, loc)  # type: ignore[arg-type]
    if isinstance(node, dict):
        return {k: map_strings(v, fn, loc) for k, v in node.items()}
    if isinstance(node, list):
        return [map_strings(v, fn, loc) for v in node]
    return node


_PATH_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def split_path(path: str) -> list:
    """'services.web.ports[1]' -> ['services', 'web', 'ports', 1]."""
    out: list = []
    for name, index in _PATH_RE.findall(path):
        out.append(int(index) if index else name)
    return out


def locate(root: Any, path: "str | list", *, value: bool = False) -> Loc | None:
    """Best location for a key path in a located tree: the deepest part that exists.

    Returns where the last found key (or item) is written (`value=True`: where its
    value starts); None when nothing along the path carries a location.
    """
    parts = split_path(path) if isinstance(path, str) else list(path)
    node = root
    best = getattr(root, "loc", None)
    for part in parts:
        if isinstance(node, YMap):
            if part not in node:
                return best
            best = node.value_loc(part) if value else node.loc_of(part)
            node = node[part]
        elif isinstance(node, YList) and isinstance(part, int):
            if not 0 <= part < len(node):
                return best
            best = node.loc_of(part)
            node = node[part]
        else:
            return best
    return best


def to_plain(node: Any) -> Any:
    """Deep copy into plain dicts and lists (no locations)."""
    if isinstance(node, dict):
        return {k: to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    return node


def iter_located(node: Any, path: str = "") -> Iterator[tuple[str, Any, Loc | None]]:
    """Yield (key path, value, location) for every value in the tree, depth first."""
    if isinstance(node, YMap):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            yield p, v, node.value_loc(k)
            yield from iter_located(v, p)
    elif isinstance(node, YList):
        for i, v in enumerate(node):
            p = f"{path}[{i}]"
            yield p, v, node.loc_of(i)
            yield from iter_located(v, p)
