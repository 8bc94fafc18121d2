"""Each node's own Docker Engine: own data root, exec root, socket, pid file, bridge range.

Everything is in the node's daemon.json so the argv stays `dockerd --config-file X`,
which also makes the process recognisable as this lab's (the path is unique).
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.lab import engine, netns, proc
from orchestrator.lab.model import LabSpec, NodeSpec


def daemon_config(spec: LabSpec, node: NodeSpec) -> dict:
    p = spec.paths
    ns_tag = f"{spec.name}.{node.name}"
    return {
        "data-root": str(p.data_root(node.name)),
        "exec-root": str(p.exec_root(node.name)),
        "hosts": [f"unix://{p.docker_socket(node.name)}"],
        "pidfile": str(p.docker_pidfile(node.name)),
        "bip": node.bip,
        # The engine ID comes from this key; the default (/etc/docker/key.json) is
        # shared with the host engine, which would give every node the same ID.
        "deprecated-key-path": str(p.node_dir(node.name) / "key.json"),
        # Pulls of docker.io names (busybox, debian:bookworm) resolve through the lab's
        # anonymous read-only registry view; the daemon sends no credentials to mirrors.
        "registry-mirrors": [f"https://{spec.mirror}"],
        # If a system containerd is running, each node still gets its own namespace.
        "containerd-namespace": ns_tag,
        "containerd-plugins-namespace": f"{ns_tag}.plugins",
        # cgroupfs + a per-node parent: `lab down` can find and remove stragglers.
        "exec-opts": ["native.cgroupdriver=cgroupfs"],
        "cgroup-parent": f"{spec.cgroup_parent}/{node.name}",
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "3"},
    }


def render_daemon_json(spec: LabSpec, node: NodeSpec) -> str:
    return json.dumps(daemon_config(spec, node), indent=2, sort_keys=True) + "\n"


def dockerd_argv(spec: LabSpec, node: NodeSpec) -> list[str]:
    p = spec.paths
    return netns.in_netns(
        spec.netns(node),
        ["dockerd", "--config-file", str(p.daemon_json(node.name))],
        uts=p.uts_ns(node.name),
    )


def find_dockerd(procs: list[proc.Proc], spec: LabSpec, node_name: str) -> list[proc.Proc]:
    return proc.find(procs, str(spec.paths.daemon_json(node_name)), program="dockerd")


def start(spec: LabSpec, node: NodeSpec) -> int:
    p = spec.paths
    p.node_run(node.name).mkdir(parents=True, exist_ok=True)
    p.data_root(node.name).mkdir(parents=True, exist_ok=True)
    # No engine of this node runs (the caller checked): its pid file is stale and
    # would make the new one refuse to start. Its containerd's may name another process.
    p.docker_pidfile(node.name).unlink(missing_ok=True)
    engine.clear_stale_containerd_pidfile(p.exec_root(node.name))
    return proc.spawn(dockerd_argv(spec, node), p.log(f"dockerd-{node.name}"))


def wait(spec: LabSpec, node: NodeSpec, pid: int, timeout: float = 90) -> int:
    """Wait for the node's engine; one that died before answering is started again.

    Returns the pid of the engine that answered (see engine.START_ATTEMPTS for why).
    """
    p = spec.paths
    for attempt in range(1, engine.START_ATTEMPTS + 1):
        if engine.wait_ready(p.docker_socket(node.name), lambda: proc.alive(pid), timeout):
            return pid
        if proc.alive(pid) or attempt == engine.START_ATTEMPTS:
            break
        pid = start(spec, node)
    logfile = p.log(f"dockerd-{node.name}")
    raise OrchError(
        f"dockerd of node {node.name} did not start. Last lines of {logfile}:\n"
        f"{proc.log_excerpt(logfile)}",
        fix="fix what the log says, then run `orch lab up` again (it finishes the "
        "lab where this run stopped), or `orch lab down` to remove it",
    )


def stop(procs: list[proc.Proc], spec: LabSpec, node_name: str, timeout: float = 30) -> None:
    # SIGTERM lets dockerd stop its containers and unmount; then SIGKILL.
    proc.stop([pr.pid for pr in find_dockerd(procs, spec, node_name)], timeout=timeout)


def socket_of(spec: LabSpec, node_name: str) -> Path:
    return spec.paths.docker_socket(node_name)
