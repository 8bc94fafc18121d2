"""Durations and byte sizes as Compose writes them (Go syntax)."""

from __future__ import annotations

import re

_DUR_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DUR_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(value) -> float:
    """Go's time.ParseDuration, in seconds: '1m30s' -> 90.0, '500ms' -> 0.5.

    Raises ValueError with a short reason. Numbers are not accepted (Compose wants a
    unit), except 0.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration like 10s, got a boolean")
    if isinstance(value, (int, float)):
        if value == 0:
            return 0.0
        raise ValueError("missing unit")
    text = str(value).strip()
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if text[:1] in "+-" and text:
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if not text:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    while pos < len(text):
        m = _DUR_PART.match(text, pos)
        if not m:
            if re.fullmatch(r"\d+(\.\d*)?", text[pos:]):
                raise ValueError("missing unit")
            raise ValueError("not a duration")
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_duration(seconds: float | None) -> str | None:
    """Go's time.Duration.String(): 90 -> '1m30s', 0.5 -> '500ms', 3600 -> '1h0m0s'."""
    if seconds is None:
        return None
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    neg = ns < 0
    ns = abs(ns)
    if ns < 1_000_000_000:
        if ns < 1_000:
            out = f"{ns}ns"
        elif ns < 1_000_000:
            out = _frac(ns, 1_000) + "µs"
        else:
            out = _frac(ns, 1_000_000) + "ms"
    else:
        h, rem = divmod(ns, 3600 * 10**9)
        m, rem = divmod(rem, 60 * 10**9)
        s = _frac(rem, 10**9) + "s"
        if h:
            out = f"{h}h{m}m{s}"
        elif m:
            out = f"{m}m{s}"
        else:
            out = s
    return "-" + out if neg else out


def _frac(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"


_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)
_BYTE_MULT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_bytes(value) -> int:
    """docker/go-units RAMInBytes: '512m' -> 536870912, '1g' -> 1073741824, 1024 -> 1024."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512m, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("negative size")
        return value
    if isinstance(value, float):
        return int(value)
    m = _BYTES_RE.match(str(value))
    if not m:
        raise ValueError("not a size")
    return int(float(m.group(1)) * _BYTE_MULT[m.group(2).lower()])


def human_size(n: int | None) -> str:
    """For people: 512 B, 1.5 KiB, 3.2 GiB ("-" for None)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover
