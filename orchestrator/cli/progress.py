"""How `orch up` and `orch down` show what they do.

- People (a TTY): a rich Live table, one line per wave / service / node that updates in
  place (state, what the agent is doing, duration), then a summary.
- Machines (`--json`, or stdout not a TTY): one JSON object per line,
  `{"event": ..., ...}`, then one final object
  `{"version": 1, "status": "ok"|"failed", "environment", "project", "changed", ...}`.
  No colours. Warnings also go to stderr as `orch: warning: ...`.
- NO_COLOR (any value) turns colours off on a TTY too.

The deploy code calls the same methods whatever the output; `Progress` itself prints
nothing and records the events (handy in tests).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from orchestrator.core.progress import DONE, FAILED, PENDING, RUNNING, SKIPPED, UNCHANGED, Progress


class JSONProgress(Progress):
    """JSON lines on stdout; warnings also on stderr."""

    json = True

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        super().__init__()
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    def _write(self, obj: dict) -> None:
        line = json.dumps(obj, default=str, separators=(",", ":"))
        with self._lock:
            self.out.write(line + "\n")
            self.out.flush()

    def event(self, name: str, **data: Any) -> None:
        super().event(name, **data)
        if name != "final":
            self._write(dict({"event": name, "t": round(time.monotonic() - self.started, 3)}, **data))

    def warning(self, text: str) -> None:
        super().warning(text)
        print(f"orch: warning: {text}", file=self.err, flush=True)

    def finish(self, final: dict, summary: str = "") -> None:
        super().finish(final, summary)
        self._write(final)


_AGENT_TEXT = {
    "apply.start": lambda e: "applying",
    "network.create": lambda e: f"network {e.get('network', '')}",
    "volume.create": lambda e: f"volume {e.get('volume', '')}",
    "image.pull": lambda e: f"pulling {e.get('image', '')} {e.get('status', '')}".strip(),
    "container.remove": lambda e: f"removing {e.get('container', '')} ({e.get('reason', '')})",
    "container.create": lambda e: f"created {e.get('container', '')}",
    "container.start": lambda e: f"started {e.get('container', '')}",
    "container.healthy": lambda e: f"{e.get('container', '')} healthy",
    "container.running": lambda e: f"{e.get('container', '')} running",
    "container.completed": lambda e: f"{e.get('container', '')} completed",
    "waiting": lambda e: f"waiting for {', '.join(e.get('containers') or [])} ({e.get('seconds', 0)}s)",
}


def agent_text(ev: dict) -> str:
    fn = _AGENT_TEXT.get(ev.get("type", ""))
    return fn(ev) if fn else str(ev.get("type", ""))


class LiveProgress(Progress):
    """A rich Live table on a TTY."""

    def __init__(self, console: Any = None) -> None:
        super().__init__()
        from rich.console import Console

        no_color = bool(os.environ.get("NO_COLOR"))
        self.console = console or Console(no_color=no_color, highlight=False)
        self.rows: dict[tuple[int, str, str], dict] = {}
        self.header = ""
        self.phase_started = time.monotonic()
        self.live = None

    def _start(self) -> None:
        if self.live is None:
            from rich.live import Live

            self.live = Live(self, console=self.console, refresh_per_second=8, transient=False)
            self.live.start()

    def __rich__(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            rows = list(self.rows.items())
        cells = []
        last_wave = None
        for (wave, service, node), r in rows:
            start, end = r.get("start"), r.get("end")
            took = "" if start is None else f"{(end or now) - start:.1f}s"
            cells.append((str(wave) if wave != last_wave else "", service, node, r["status"], took,
                          r.get("detail", "")))
            last_wave = wave
        table = Table(box=None, show_header=bool(rows), pad_edge=False, padding=(0, 2, 0, 0))
        headers = ("WAVE", "SERVICE", "NODE", "STATE", "TIME")
        for i, col in enumerate(headers):
            width = max([len(col)] + [len(_status_label(c[i]) if i == 3 else c[i]) for c in cells])
            table.add_column(col, no_wrap=True, min_width=width)
        table.add_column("", no_wrap=True, overflow="ellipsis", ratio=1)
        for c in cells:
            table.add_row(c[0], c[1], c[2], _status_text(c[3]), c[4], Text(c[5], style="dim"))
        from rich.console import Group

        head = Text(f"{self.header}  {now - self.started:.1f}s", style="bold") if self.header else Text("")
        return Group(head, table) if rows else head

    def phase(self, name: str, text: str, **data: Any) -> None:
        super().phase(name, text, **data)
        self.header = text
        self._start()

    def show_plan(self, plan: Any) -> None:
        super().show_plan(plan)
        with self._lock:
            for s in plan.steps:
                status = PENDING if s.needs_apply else UNCHANGED
                detail = ", ".join(sorted({_short(a) for a in s.actions if a.kind != "unchanged"}))
                self.rows[(s.wave, s.service, s.node)] = {"status": status, "detail": detail}
            for r in plan.removals:
                self.rows[(len(plan.waves) + 1, r.service, r.node)] = {
                    "status": PENDING, "detail": "remove" + (" (orphan)" if r.orphan else "")}
        self._start()

    def step(self, wave: int, service: str, node: str, status: str, detail: str = "",
             seconds: float | None = None, **data: Any) -> None:
        super().step(wave, service, node, status, detail, seconds, **data)
        with self._lock:
            row = self.rows.setdefault((wave, service, node), {"status": PENDING})
            if status in (RUNNING, "removing") and row.get("start") is None:
                row["start"] = time.monotonic()
            if status in (DONE, FAILED, UNCHANGED, SKIPPED, "removed") and row.get("start") is not None:
                row["end"] = time.monotonic()
            row["status"] = status
            if detail:
                row["detail"] = detail
        self._start()

    def agent_event(self, wave: int, service: str, node: str, ev: dict) -> None:
        super().agent_event(wave, service, node, ev)
        if ev.get("type") == "heartbeat":
            return
        with self._lock:
            row = self.rows.get((wave, service, node))
            if row is not None:
                row["detail"] = agent_text(ev)

    def warning(self, text: str) -> None:
        super().warning(text)
        self.console.print(f"[yellow]warning:[/yellow] {text}" if not self.console.no_color else f"warning: {text}",
                           markup=not self.console.no_color, highlight=False)

    def finish(self, final: dict, summary: str = "") -> None:
        super().finish(final, summary)
        self.header = {"ok": "done", "planned": "planned"}.get(final.get("status", ""), final.get("status", ""))
        self.close()
        if summary:
            self.console.print(summary, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None


def _short(action: Any) -> str:
    return action.kind


_STYLES = {PENDING: ("pending", "dim"), RUNNING: ("running", "yellow"), DONE: ("done", "green"),
           UNCHANGED: ("unchanged", "dim"), FAILED: ("FAILED", "bold red"), SKIPPED: ("not started", "dim"),
           "removing": ("removing", "yellow"), "removed": ("removed", "green")}


def _status_label(status: str) -> str:
    return _STYLES.get(status, (status, ""))[0]


def _status_text(status: str) -> Any:
    from rich.text import Text

    text, style = _STYLES.get(status, (status, ""))
    return Text(text, style=style)
