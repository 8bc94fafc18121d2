"""Errors that the CLI turns into one readable paragraph and an exit code.

Exit codes (stable, documented in docs/reference/exit-codes.md):
0 ok, 1 deploy failed, 2 bad input, 3 gate refused, 4 lock held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_REFUSED = 3
EXIT_LOCK_HELD = 4


class OrchError(Exception):
    """Base of every error orch expects; anything else is a bug."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, *, fix: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.details = details or {}

    def render(self) -> str:
        text = self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text

    def to_json(self) -> dict:
        out = {"kind": type(self).__name__, "message": self.render(), "exit_code": self.exit_code}
        if self.fix:
            out["fix"] = self.fix  # also at the end of message; here on its own for CI to show
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:  # pragma: no cover - convenience for logs
        return self.render()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, located as precisely as we can."""

    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based
    key: str | None = None  # e.g. services.web.ports[1]
    fix: str | None = None

    def where(self) -> str:
        parts = []
        if self.file:
            loc = self.file
            if self.line:
                loc += f":{self.line}"
                if self.column:
                    loc += f":{self.column}"
            parts.append(loc)
        if self.key:
            parts.append(self.key)
        return ": ".join(parts)

    def render(self) -> str:
        where = self.where()
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f" Fix: {self.fix}"
        return text


class InputError(OrchError):
    """Bad input (files, options): exit 2, and nothing on any node was touched."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems: "Problem | list[Problem] | str", **kw):
        if isinstance(problems, str):
            problems = [Problem(problems, fix=kw.pop("fix", None))]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems: list[Problem] = list(problems)
        super().__init__("; ".join(p.render() for p in self.problems), **kw)

    def render(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0].render()
        lines = [f"{len(self.problems)} problems found:"]
        lines += [f"  - {p.render()}" for p in self.problems]
        return "\n".join(lines)

    def to_json(self) -> dict:
        out = super().to_json()
        out["problems"] = [
            {k: v for k, v in p.__dict__.items() if v is not None} for p in self.problems
        ]
        return out


class DeployError(OrchError):
    exit_code = EXIT_FAILED


class GateRefused(OrchError):
    exit_code = EXIT_GATE_REFUSED


class LockHeld(OrchError):
    exit_code = EXIT_LOCK_HELD


@dataclass
class Warnings:
    """Collects non-fatal notes (unset variables, obsolete keys) for the CLI to print."""

    items: list[Problem] = field(default_factory=list)

    def add(self, problem: Problem) -> None:
        if problem not in self.items:
            self.items.append(problem)
