"""Collecting located problems while loading, and formatting key paths."""

from __future__ import annotations

import difflib
from dataclasses import replace
from typing import Any, Iterable

from agent.wire.redact import MASK, mask_text

from orchestrator.errors import InputError, Problem, Warnings
from orchestrator.core.yamlsrc import Loc, YList, YMap

Path = tuple  # key path parts: ("services", "web", "ports", 1)


def fmt_path(path: Iterable[Any]) -> str:
    """('services', 'web', 'ports', 1) -> 'services.web.ports[1]'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest known word to `word`, if it is close enough to be a typo."""
    if not isinstance(word, str):
        return None
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not matches:
        low = word.lower()
        for c in choices:
            if c.lower() == low:
                return c
        return None
    return matches[0]


def describe(value: Any) -> str:
    """How a value reads in an error message: its type and (short) value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {value:g}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return f"the string {shown!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class Collector:
    """Accumulates problems (errors) and warnings, each located where possible."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self._warnings = Warnings()
        self._warned: set = set()
        # key paths a misspelt key probably meant, e.g. ("services", "web", "image"):
        # later checks stay quiet about those keys being missing.
        self.near_misses: set = set()
        self._secrets: list[str] = []

    def hide(self, values: Iterable[str]) -> None:
        """Secret values (variables with secret names) that no message may quote: a
        loading error comes before the output filter knows the project."""
        known = set(self._secrets) | {v for v in values if isinstance(v, str) and len(v) >= 4}
        self._secrets = sorted(known, key=len, reverse=True)

    def _masked(self, problems: list[Problem]) -> list[Problem]:
        return [replace(p, message=mask_text(p.message, MASK, self._secrets),
                        fix=mask_text(p.fix, MASK, self._secrets) if p.fix else p.fix) for p in problems]

    def error(self, message: str, *, loc: Loc | None = None, path: Path | str | None = None,
              fix: str | None = None, file: str | None = None) -> None:
        self.problems.append(_problem(message, loc, path, fix, file))

    def warn(self, message: str, *, loc: Loc | None = None, path: Path | str | None = None,
             fix: str | None = None, file: str | None = None, once: Any = None) -> None:
        if once is not None:
            if once in self._warned:
                return
            self._warned.add(once)
        self._warnings.add(_problem(message, loc, path, fix, file))

    @property
    def warnings(self) -> list[Problem]:
        return self._masked(self._warnings.items)

    def add(self, problem: Problem) -> None:
        self.problems.append(problem)

    def extend(self, problems: Iterable[Problem]) -> None:
        self.problems.extend(problems)

    def raise_if_any(self) -> None:
        if self.problems:
            raise InputError(self._masked(sort_problems(_dedupe(self.problems))))

    def __bool__(self) -> bool:  # "are there errors?"
        return bool(self.problems)


def _problem(message, loc, path, fix, file) -> Problem:
    key = fmt_path(path) if isinstance(path, tuple) else path
    if loc is not None:
        return Problem(message, file=loc.file, line=loc.line, column=loc.column, key=key, fix=fix)
    return Problem(message, file=file, key=key, fix=fix)


def sort_problems(problems: list[Problem]) -> list[Problem]:
    """By file (in order of first appearance), then line and column; unlocated first."""
    order: dict = {}
    for p in problems:
        order.setdefault(p.file, len(order))
    return sorted(problems, key=lambda p: (order[p.file], p.line or 0, p.column or 0))


def _dedupe(problems: list[Problem]) -> list[Problem]:
    """Drop repeats, and later problems about a key path that already has one (a value
    that failed interpolation would otherwise also fail its own syntax check)."""
    seen = set()
    keys = set()
    out = []
    for p in problems:
        if p in seen:
            continue
        seen.add(p)
        if p.key is not None:
            k = (p.file, p.key)
            if k in keys:
                continue
            keys.add(k)
        out.append(p)
    return out


def key_loc(node: Any, key: Any, default: Loc | None = None) -> Loc | None:
    """Where `key` of a located container is written (None-safe)."""
    if isinstance(node, (YMap, YList)):
        return node.loc_of(key) or default
    return default


def value_loc(node: Any, key: Any, default: Loc | None = None) -> Loc | None:
    if isinstance(node, (YMap, YList)):
        return node.value_loc(key) or default
    return default
