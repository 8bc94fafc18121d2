"""Composed PyYAML nodes -> the located tree (yamltree.py): scalars resolved by the YAML 1.2
core schema as Compose (Go yaml.v3) does, `<<` merge keys, duplicate keys and unknown tags
refused, and the budget against hostile input (nesting depth, alias copies: a "billion
laughs" is refused as soon as it passes the limits of orchestrator.limits). The rules are
described in yamlsrc.py, the module to load YAML with."""

from __future__ import annotations

import re
from typing import Any

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from orchestrator.errors import Problem
from orchestrator.limits import YAML_MAX_ALIAS_CHARS, YAML_MAX_ALIAS_NODES, YAML_MAX_DEPTH
from orchestrator.core.yamltree import OVERRIDE, RESET, YList, YMap

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

_Pos = tuple  # (file, line, column)


# --------------------------------------------------------------------------- scalars
# YAML 1.2 core schema, with Go yaml.v3's leniencies (see yamlsrc.py's docstring).
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


class Loader(_Parser):
    """Only the parser/composer part of PyYAML; tags are resolved by Builder."""

    def __init__(self, stream):
        _Parser.__init__(self, stream)

    # The composer asks the resolver for the tag of every node. We resolve scalars
    # ourselves, so answer cheaply: None means "implicit" and Builder decides.
    def resolve(self, kind, value, implicit):  # noqa: D401 - PyYAML protocol
        if kind is ScalarNode:
            if implicit[0]:
                return None
            return _STR_TAG
        if kind is SequenceNode:
            return _SEQ_TAG
        return _MAP_TAG

    def descend_resolver(self, _node, _index):  # PyYAML protocol: no path-based resolvers
        pass

    def ascend_resolver(self):
        pass


class Refused(Exception):
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


class Builder:
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
            raise Refused(f"YAML nested deeper than {YAML_MAX_DEPTH} levels",
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
        except Refused as err:
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
            raise Refused(
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
            if not node.style:  # plain (quoted scalars were tagged str by Loader)
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
                    if vtag is None:  # plain (quoted scalars are tagged str by Loader)
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
        except Refused as err:
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
            except Refused as err:
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
