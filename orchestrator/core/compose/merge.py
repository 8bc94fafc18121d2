"""Merging Compose trees (several -f files, extends, overlays) by Compose's rules.

- mappings merge recursively; scalars are replaced; sequences are appended;
- services.*.command, entrypoint and healthcheck.test are replaced, not appended;
- environment, labels, annotations, sysctls, build.args, build.labels,
  build.additional_contexts, deploy.labels, and networks.*/volumes.* labels merge as
  maps (a list form `KEY=VALUE` is read as a map first);
- depends_on and a service's networks merge as maps (a list form is read as a map);
- build merges as a mapping (the string form is read as {context: ...});
- logging merges only when both sides use the same driver, else it is replaced;
- ulimits entries are replaced;
- x-* keys are replaced, except a service's `x-orch` (orch's own): its mappings merge
  recursively and its other values (host name lists too) are replaced, so an
  environment's overlay can change `x-orch.ingress.hosts` and keep `tls` and `target`;
- a value tagged `!reset` removes the key; a value tagged `!override` replaces it;
- a null override of a mapping or a list leaves the base value in place.

Sequences with a uniqueness rule (ports, volumes, secrets, configs, expose, env_file,
profiles, cap_add...) are appended here and de-duplicated in normalize.py, keeping the
first position and the last value, which is what Compose's merge-then-unicity does.

The base tree is modified in place (it belongs to the loader); the override's nodes
are moved into it, not copied. Use deep_copy() when a base must be reused (extends).
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.yamlsrc import OVERRIDE, RESET, YList, YMap

# Keys under services.<name> (and deeper) with special merge rules.
_REPLACE = {"command", "entrypoint"}
_AS_MAP = {"environment", "labels", "annotations", "sysctls"}
_BUILD_AS_MAP = {"args", "labels", "additional_contexts"}
_LIST_TO_KEYS = {"depends_on", "networks"}


def merge(base: Any, over: Any, path: tuple = (), tagged: bool = True) -> Any:
    """Merge `over` into `base` and return the result (base, modified, when possible)."""
    if isinstance(base, YMap) and isinstance(over, YMap):
        return _merge_maps(base, over, path, tagged)
    if isinstance(base, YList) and isinstance(over, list):
        base.extend_from(clean(over, tagged))
        return base
    return clean(over, tagged)


def _rule(path: tuple) -> str | None:
    n = len(path)
    if n < 3 or path[0] != "services":
        if n == 3 and path[0] in ("networks", "volumes") and path[2] == "labels":
            return "map"
        return None
    key = path[2]
    if n == 3:
        if key in _REPLACE:
            return "replace"
        if key in _AS_MAP:
            return "map"
        if key in _LIST_TO_KEYS:
            return "keys"
        if key == "build":
            return "build"
        if key == "logging":
            return "logging"
        return None
    if n == 4:
        if key == "healthcheck" and path[3] == "test":
            return "replace"
        if key == "build" and path[3] in _BUILD_AS_MAP:
            return "map"
        if key == "deploy" and path[3] == "labels":
            return "map"
        if key == "ulimits":
            return "replace"
    return None


def _merge_value(b: Any, o: Any, path: tuple, tagged: bool) -> Any:
    rule = _rule(path)
    if rule is None:
        return merge(b, o, path, tagged)
    if rule == "replace":
        return clean(o, tagged)
    if rule == "map":
        bm, om = as_kv_map(b), as_kv_map(o)
        if bm is None or om is None:
            return clean(o, tagged)
        return _merge_maps(bm, om, path, tagged)
    if rule == "keys":
        bm, om = as_key_map(b), as_key_map(o)
        if bm is None or om is None:
            return clean(o, tagged)
        return _merge_maps(bm, om, path, tagged)
    if rule == "build":
        bm, om = as_build_map(b), as_build_map(o)
        if bm is None or om is None:
            return clean(o, tagged)
        return _merge_maps(bm, om, path, tagged)
    if rule == "logging":
        if isinstance(b, YMap) and isinstance(o, YMap):
            bd, od = b.get("driver"), o.get("driver")
            if bd is not None and od is not None and bd != od:
                return clean(o, tagged)
            return _merge_maps(b, o, path, tagged)
        return clean(o, tagged)
    return merge(b, o, path, tagged)  # pragma: no cover


def _merge_maps(base: YMap, over: YMap, path: tuple, tagged: bool) -> YMap:
    for k, v in over.items():
        tag = over.tag_of(k) if tagged else None
        if tag == RESET:
            if k in base:
                del base[k]
            continue
        if k == "x-orch" and tag != OVERRIDE and len(path) == 2 and path[0] == "services" \
                and isinstance(base.get(k), YMap) and isinstance(v, YMap):
            _merge_replacing(base[k], v, tagged)
            continue
        if tag == OVERRIDE or k not in base or (isinstance(k, str) and k.startswith("x-")):
            base[k] = clean(v, tagged)
            base.copy_meta(k, over)
            base.set_tag(k, None)
            continue
        old = base[k]
        if v is None and isinstance(old, (YMap, YList)):
            continue  # a null override leaves a mapping or list in place (as Compose)
        new = _merge_value(old, v, path + (k,), tagged)
        base[k] = new
        if not (isinstance(new, (YMap, YList)) and new is old):
            base.copy_meta(k, over)  # replaced: it now comes from the override
    return base


def _merge_replacing(base: YMap, over: YMap, tagged: bool) -> YMap:
    """Mappings merge recursively; anything else (lists included) is replaced."""
    for k, v in over.items():
        tag = over.tag_of(k) if tagged else None
        if tag == RESET:
            if k in base:
                del base[k]
            continue
        old = base.get(k)
        if tag != OVERRIDE and isinstance(old, YMap) and isinstance(v, YMap):
            _merge_replacing(old, v, tagged)
            continue
        if v is None and isinstance(old, (YMap, YList)):
            continue
        base[k] = clean(v, tagged)
        base.copy_meta(k, over)
        base.set_tag(k, None)
    return base


def clean(node: Any, tagged: bool = True) -> Any:
    """Apply !reset / !override inside a value that is not merged with anything:
    keys tagged !reset are removed, !override tags are dropped. In place."""
    if not tagged:
        return node
    if isinstance(node, YMap):
        tags = node._tags
        if tags:
            for k, t in list(tags.items()):
                if t == RESET and k in node:
                    del node[k]
            node._tags = None
        for v in node.values():
            if isinstance(v, (YMap, YList)):
                clean(v, tagged)
    elif isinstance(node, YList):
        if node._tags:
            resets = sorted((i for i, t in node._tags.items() if t == RESET), reverse=True)
            node._tags = None
            for i in resets:
                del node[i]
                del node._ipos[i:i + 1]
        for v in node:
            if isinstance(v, (YMap, YList)):
                clean(v, tagged)
    return node


def as_kv_map(node: Any) -> YMap | None:
    """environment-style value as a map: a map stays; ["K=V", "K"] -> {K: V, K: None}."""
    if isinstance(node, YMap):
        return node
    if node is None:
        return YMap()
    if isinstance(node, YList):
        out = YMap()
        out._pos = node._pos
        for i, item in enumerate(node):
            if not isinstance(item, str):
                return None
            k, sep, v = item.partition("=")
            out.set_located(k, v if sep else None, node.loc_of(i))
        return out
    return None


def as_key_map(node: Any) -> YMap | None:
    """depends_on / networks as a map: ["a", "b"] -> {a: None, b: None}."""
    if isinstance(node, YMap):
        return node
    if node is None:
        return YMap()
    if isinstance(node, YList):
        out = YMap()
        out._pos = node._pos
        for i, item in enumerate(node):
            if not isinstance(item, str):
                return None
            out.set_located(item, None, node.loc_of(i))
        return out
    return None


def as_build_map(node: Any) -> YMap | None:
    if isinstance(node, YMap):
        return node
    if isinstance(node, str):
        out = YMap()
        out["context"] = node
        return out
    return None


def deep_copy(node: Any) -> Any:
    """Copy a located tree (containers only; scalars are immutable)."""
    if isinstance(node, YMap):
        out = YMap()
        for k, v in node.items():
            out[k] = deep_copy(v) if isinstance(v, (YMap, YList, dict, list)) else v
        out._pos = node._pos
        out._meta = dict(node._meta)
        out._tags = dict(node._tags) if node._tags else None
        return out
    if isinstance(node, YList):
        out = YList(deep_copy(v) if isinstance(v, (YMap, YList, dict, list)) else v for v in node)
        out._pos = node._pos
        out._ipos = list(node._ipos)
        out._tags = dict(node._tags) if node._tags else None
        return out
    if isinstance(node, dict):
        return {k: deep_copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [deep_copy(v) for v in node]
    return node
