"""Starting and finding the mesh daemon (agent.mesh.daemon) as a detached process."""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

from agent.mesh import procs
from agent.mesh.paths import MeshPaths, write_atomic

DAEMON_MODULE = "agent.mesh.daemon"


def daemon_argv(paths: MeshPaths, env: str) -> List[str]:
    return [sys.executable, "-m", DAEMON_MODULE, "--dir", paths.root, "--env", env]


def daemon_pid(paths: MeshPaths) -> Optional[int]:
    return procs.read_pid(paths.daemon_pid, DAEMON_MODULE)


def _code() -> str:
    """Where the running agent's code is: a daemon started from other code is restarted."""
    from agent.about import runs_from

    return runs_from()


def _status_code(paths: MeshPaths) -> Optional[str]:
    try:
        with open(paths.status) as fh:
            return json.load(fh).get("code")
    except (OSError, ValueError, AttributeError):
        return None


def current(paths: MeshPaths) -> bool:
    """Running, from this agent's code (a daemon of an older orch is not current)."""
    return bool(daemon_pid(paths)) and _status_code(paths) in (None, _code())


def ensure_daemon(paths: MeshPaths, env: str, restart: bool = False) -> None:
    pid = daemon_pid(paths)
    code = _status_code(paths)
    if pid and (restart or code not in (None, _code())):
        procs.stop([pid])
        pid = None
    if pid:
        return
    env_vars = dict(os.environ, PYTHONPATH=_code(), ORCH_MESHD_CODE=_code())
    pid = procs.spawn(daemon_argv(paths, env), paths.log, env=env_vars)
    write_atomic(paths.daemon_pid, "%d\n" % pid, 0o644)
