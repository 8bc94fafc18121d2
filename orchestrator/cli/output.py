"""How the CLI prints: people get text on a TTY, CI gets JSON (--json or no TTY)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from orchestrator.errors import OrchError

JSON_SCHEMA_VERSION = 1


def json_requested() -> bool:
    return "--json" in sys.argv[1:]


def use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def report_error(err: OrchError) -> None:
    """One paragraph on stderr; with --json also a final JSON object on stdout."""
    print(f"orch: error: {err.render()}", file=sys.stderr)
    if json_requested():
        print_json({"version": JSON_SCHEMA_VERSION, "status": "error", "error": err.to_json()})


def warn(message: str) -> None:
    print(f"orch: warning: {message}", file=sys.stderr)
