"""What this agent is and where it runs from: its version, its bundle, its directory.

Node-side (it looks at the running process), so not part of agent.wire.
"""

from __future__ import annotations

import os
import sys


def agent_version() -> str:
    from agent import __version__

    return __version__


def runs_from() -> str:
    """The bundle the agent runs from, or its unpacked copy (orch-agent-<hash>.d) once
    its stub made one (orchestrator.io.agent_bundle.MAIN_TEMPLATE)."""
    import agent

    return os.path.dirname(os.path.dirname(os.path.abspath(agent.__file__)))


def bundle_name() -> str:
    """The file this agent runs from (orch-agent-<hash>.pyz), or '' when run from source."""
    path = sys.argv[0] if sys.argv else ""
    return os.path.basename(path) if path.endswith(".pyz") else ""
