"""The light nodes' fake engine: one process per lab (fake_engine.py) serving every light
node's docker socket. Its config names the sockets; a changed config restarts it (the
fake engines' in-memory state goes with it). Found by its argv, which names the config.
"""

from __future__ import annotations

import json
import shutil
import sys
import uuid
from pathlib import Path

from agent.wire.protocol import DEFAULT_STATE_DIR
from orchestrator.errors import OrchError
from orchestrator.lab import engine, proc
from orchestrator.lab.fake_engine import engine_id
from orchestrator.lab.model import LabSpec
from orchestrator.lab.state import write_if_changed

SERVER = Path(__file__).with_name("fake_engine.py")
LOG = "fake-engine"
AGENT_ENGINES = Path(DEFAULT_STATE_DIR) / "engines"  # where the agent keys its data by engine ID


def render_config(spec: LabSpec, salt: str) -> str:
    p = spec.paths
    nodes = [{"name": n.name, "socket": str(p.docker_socket(n.name)), "root_dir": str(p.node_dir(n.name))}
             for n in spec.light_nodes]
    return json.dumps({"lab": spec.name, "salt": salt, "nodes": nodes}, indent=2, sort_keys=True) + "\n"


def saved_salt(spec: LabSpec) -> str | None:
    try:
        return json.loads(spec.paths.fake_engine_config.read_text()).get("salt") or None
    except (OSError, ValueError, AttributeError):
        return None


def agent_data_dirs(spec: LabSpec, node_names: list[str]) -> list[Path]:
    """The agent's per-engine data of these light nodes (agent.context.Context.data_dir):
    the machine's /var/lib/orch-agent, shared by all nodes, keyed by engine ID."""
    salt = saved_salt(spec)
    if not salt:
        return []
    return [AGENT_ENGINES / engine_id(salt, n).replace(":", "-") for n in node_names]


def remove_agent_data(spec: LabSpec, node_names: list[str]) -> None:
    for d in agent_data_dirs(spec, node_names):
        shutil.rmtree(d, ignore_errors=True)


def argv(spec: LabSpec) -> list[str]:
    # The interpreter orch runs on: the server is stdlib only, run as a file (no imports).
    return [sys.executable, str(SERVER), str(spec.paths.fake_engine_config)]


def find(procs: list[proc.Proc], spec: LabSpec) -> list[proc.Proc]:
    return proc.find(procs, str(spec.paths.fake_engine_config))


def ensure(spec: LabSpec, log) -> None:
    """The fake engine serves exactly the spec's light nodes (none: it is stopped)."""
    p = spec.paths
    procs = proc.process_table()
    running = find(procs, spec)
    if not spec.light_nodes:
        proc.stop([r.pid for r in running], timeout=5)
        p.fake_engine_config.unlink(missing_ok=True)
        return
    changed = write_if_changed(p.fake_engine_config, render_config(spec, saved_salt(spec) or uuid.uuid4().hex))
    socks = [p.docker_socket(n.name) for n in spec.light_nodes]
    if running and (changed or not all(engine.ping(s, timeout=1) for s in socks)):
        log(f"fake engine: {'nodes changed' if changed else 'not answering'}; restarting it")
        proc.stop([r.pid for r in running], timeout=5)
        running = []
    if running:
        return
    for n in spec.light_nodes:
        p.node_run(n.name).mkdir(parents=True, exist_ok=True)
    pid = proc.spawn(argv(spec), p.log(LOG))
    if not proc.wait_until(lambda: all(engine.ping(s, timeout=1) for s in socks) or not proc.alive(pid), 20) \
            or not proc.alive(pid):
        logfile = p.log(LOG)
        raise OrchError(f"the fake engine of the light nodes did not start. Last lines of {logfile}:\n"
                        f"{proc.log_excerpt(logfile)}",
                        fix="fix what the log says, then run `orch lab up` again")
    log(f"fake engine: serving {len(socks)} light node(s)")


def stop(spec: LabSpec, procs: list[proc.Proc]) -> None:
    proc.stop([r.pid for r in find(procs, spec)], timeout=5)
