"""The located YAML tree: `YMap` (a dict) and `YList` (a list) that remember the file, line
and column of every key, item and value (`Loc`), with Compose's `!reset`/`!override` tags kept
beside the values; and the helpers that walk such a tree (map_strings, locate, to_plain,
iter_located). Built by yamlbuild.py, loaded through yamlsrc.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from orchestrator.errors import Problem

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
