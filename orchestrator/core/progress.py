"""The progress interface the use cases report to (orchestrator.app.deploy, .pipeline,
orchestrator.io.nodes): `Progress` records events and prints nothing (handy in tests);
orchestrator.cli.progress renders them (rich Live table for people, JSON lines for machines).
"""

from __future__ import annotations

import threading
import time
from typing import Any

JSON_VERSION = 1  # "version" of every JSON object orch prints (final objects and events)

# step states
PENDING, RUNNING, DONE, UNCHANGED, FAILED, SKIPPED = "pending", "running", "done", "unchanged", "failed", "skipped"


class Progress:
    """Records events; prints nothing. Subclasses render them."""

    json = False

    def __init__(self) -> None:
        self.events: list[dict] = []
        self._lock = threading.Lock()
        self.started = time.monotonic()

    # -- the interface used by orchestrator.app.deploy ------------------------------------

    def event(self, name: str, **data: Any) -> None:
        with self._lock:
            self.events.append(dict(data, event=name))

    def phase(self, name: str, text: str, **data: Any) -> None:
        self.event("phase", phase=name, text=text, **data)

    def show_plan(self, plan: Any) -> None:
        self.event("plan", **plan.to_json())

    def step(self, wave: int, service: str, node: str, status: str, detail: str = "",
             seconds: float | None = None, **data: Any) -> None:
        payload = dict(wave=wave, service=service, node=node, status=status, **data)
        if detail:
            payload["detail"] = detail
        if seconds is not None:
            payload["seconds"] = round(seconds, 3)
        self.event("step", **payload)

    def agent_event(self, wave: int, service: str, node: str, ev: dict) -> None:
        if ev.get("type") == "heartbeat":
            return
        extra = {k: v for k, v in ev.items() if k not in ("wave", "service", "node", "event")}
        self.event("agent", wave=wave, service=service, node=node, **extra)

    def warning(self, text: str) -> None:
        self.event("warning", message=text)

    def finish(self, final: dict, summary: str = "") -> None:
        """The final object (status ok/failed/planned) and, for people, a text summary."""
        self.event("final", **final)

    def close(self) -> None:
        pass


