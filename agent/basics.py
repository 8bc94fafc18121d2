"""The operations every session uses first, kept light: hello, info, state. The agent
imports only these (and the lock's and the ledger's) until a request needs more
(agent.registry), so a no-op `orch up` does not pay for the rollout, ingress, mesh and
certificate modules' imports on every node."""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any, Dict, Optional

from agent.about import agent_version, bundle_name, runs_from
from agent.context import Context
from agent.wire import labels as L
from agent.wire.messages import ContainerState, StateRequest, StateResult
from agent.wire.protocol import PROTOCOL, PROTOCOL_VERSION, AgentError, check_keys


# ----------------------------------------------------------------------------- hello, info


def op_hello(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, ("protocol",), "hello")
    if args.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise AgentError(
            PROTOCOL,
            "protocol version mismatch: controller %r, agent %d" % (args.get("protocol"), PROTOCOL_VERSION),
            {"agent_protocol": PROTOCOL_VERSION},
        )
    return {
        "protocol": PROTOCOL_VERSION,
        "agent_version": agent_version(),
        "bundle": bundle_name(),
        "python": platform.python_version(),
        "executable": sys.executable,  # the node's nodes[].python, resolved
        "runs_from": runs_from(),
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
    }


def _disk(path: str) -> Optional[Dict[str, int]]:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return {"free": st.f_bavail * st.f_frsize, "total": st.f_blocks * st.f_frsize}


def op_info(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, (), "info")
    out = op_hello(ctx, {})
    out.update({"platform": platform.platform(), "state_dir": ctx.state_dir, "engine": None, "engine_error": ""})
    try:
        import docker

        out["docker_sdk"] = docker.__version__
    except Exception as exc:  # pragma: no cover - the bundle always carries it
        out["docker_sdk"] = ""
        out["engine_error"] = "docker SDK not importable: %s" % exc
        return out
    disk = {"state_dir": _disk(ctx.state_dir if os.path.isdir(ctx.state_dir) else "/")}
    try:
        engine = ctx.engine.info()
        out["engine"] = engine
        if engine.get("root_dir"):
            disk["docker_root"] = _disk(engine["root_dir"])
    except AgentError as err:
        out["engine_error"] = err.message
    out["disk"] = disk
    return out


# ----------------------------------------------------------------------------- state


def op_state(ctx: Context, args: Dict[str, Any]) -> Dict[str, Any]:
    req = StateRequest.from_dict(args)
    project = req.project
    containers = ctx.reads.containers(L.filters(project, req.service, req.env))
    out: Dict[str, Any] = {"containers": tuple(ContainerState(**c.summary()) for c in containers)}
    if project:
        from agent.owner import owners, ports_elsewhere
        from agent.ingress import ingress_state

        out["ingress"] = ingress_state(ctx, project)  # the project's frontends on this node
        # Which environments have objects of the project here: the controller refuses to
        # deploy one environment over another's (agent.owner).
        out["owners"] = owners(ctx, project, reads=True)
        out["ports_elsewhere"] = ports_elsewhere(ctx, project, reads=True)
    if req.mesh:
        from agent.mesh.ops import state_section

        out["mesh"] = state_section(ctx, req.mesh)
    return StateResult(**out).to_dict()
