"""How long this `orch` process has run, for the duration_s every command reports: from
the process's start (the kernel's record of it), so the interpreter's start, the imports
and loading the files count too, not only what a use case timed. Set by the entry point
(cli.main) only: a command run inside another process (tests) keeps the use case's own
figure."""

from __future__ import annotations

import os
import time

_started: float | None = None  # time.monotonic() at the process's start, once marked


def process_started() -> float | None:
    """time.monotonic() when this process started, from /proc (Linux); None elsewhere."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read().decode()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime: clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.monotonic() - max(0.0, age)


def mark() -> None:
    global _started
    _started = process_started()


def reset() -> None:
    global _started
    _started = None


def whole(seconds: float) -> float:
    """A command's duration counted from the process's start, when marked (never less)."""
    if _started is None:
        return seconds
    return max(seconds, time.monotonic() - _started)
