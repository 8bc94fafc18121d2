"""Reading a running orch's JSON lines in end-to-end tests."""

from __future__ import annotations

import json
import select
import subprocess
import time


def wait_for_event(proc: subprocess.Popen, match, timeout: float = 120) -> list[dict]:
    """Read proc's JSON lines until match(event) is true; returns the events read."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            assert proc.poll() is None, f"orch exited {proc.returncode}: {proc.stderr.read()}"
            continue
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"orch ended before the event: {proc.wait()} {proc.stderr.read()} {seen[-5:]}")
        if line.startswith("{"):
            seen.append(json.loads(line))
            if match(seen[-1]):
                return seen
    raise AssertionError(f"no such event within {timeout}s: {seen[-5:]}")
