"""Lenient coercions of Compose values (YAML scalars and lists) to Python ones, as Compose
reads them: strings, integers, booleans (its true/false words), string lists, KEY=VALUE
mappings, de-duplication keeping the first."""

from __future__ import annotations

from typing import Any

from .schema import FALSE_WORDS, INT_RE, NUM_RE, TRUE_WORDS


# --------------------------------------------------------------------------- scalars
def as_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, (str, int)):
        return str(v)
    return None


def as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and INT_RE.match(v.strip()):
        return int(v.strip())
    return None


def as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and NUM_RE.match(v.strip()):
        return float(v.strip())
    return None


def as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.strip().lower()
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
    if isinstance(v, int):
        return bool(v)
    return None


def str_list(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (str, int, float)) and not isinstance(v, bool):
        return [as_str(v)]  # type: ignore[list-item]
    if isinstance(v, list):
        return [s for s in (as_str(x) for x in v) if s is not None]
    return []


def unique(items: list) -> list:
    seen = set()
    out = []
    for i in items:
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def kv(v: Any, *, none_as: str | None = None) -> dict[str, str | None]:
    """A map or a KEY=VALUE list as {key: string or None}; later keys win."""
    out: dict[str, str | None] = {}
    if isinstance(v, dict):
        for k, val in v.items():
            s = as_str(val)
            out[str(k)] = none_as if s is None else s
    elif isinstance(v, list):
        for item in v:
            if isinstance(item, str):
                k, sep, val = item.partition("=")
                out[k] = val if sep else none_as
    return out


def dedupe_by(items: list, key) -> list:
    """Keep the first position and the last value for each key (Compose's unicity)."""
    index: dict = {}
    out: list = []
    for item in items:
        k = key(item)
        if k in index:
            out[index[k]] = item
        else:
            index[k] = len(out)
            out.append(item)
    return out
