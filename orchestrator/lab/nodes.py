"""One node's life: network, hostname, engine and sshd; checked, (re)started, torn down.
A light node has no engine of its own (light.py serves its socket).

A node whose engine is gone (killed session, reboot) is reset as a whole: whatever is
left in its netns and cgroups is stopped and its mounts released before it restarts,
so a stale node never needs a manual fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.lab import cgroups, dockerd, engine, mounts, netns, proc, sshd
from orchestrator.lab.model import LabSpec, NodeSpec
from orchestrator.lab.state import write_if_changed


@dataclass
class Pending:
    """Daemons spawned for a node, still to be waited on."""

    node: NodeSpec
    dockerd_pid: int | None = None
    sshd_pid: int | None = None
    actions: list[str] = field(default_factory=list)


def uts_ok(path: Path) -> bool:
    return netns.is_ns_file(path)


def uts_argv(path: Path, hostname: str) -> list[str]:
    # A persistent UTS namespace (bind-mounted on path) whose hostname is the node's.
    return ["unshare", f"--uts={path}", "hostname", hostname]


def ensure_uts(spec: LabSpec, node: NodeSpec) -> None:
    path = spec.paths.uts_ns(node.name)
    if uts_ok(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    proc.ok(["umount", "--lazy", str(path)])
    path.touch()
    proc.run(uts_argv(path, node.name))


def stop_everything(spec: LabSpec, node_name: str) -> None:
    """Stop every process of the node: engine (gracefully first), sshd, the rest."""
    procs = proc.process_table()
    dockerd.stop(procs, spec, node_name)
    procs = proc.process_table()
    sshd.stop(procs, spec, node_name)
    inode = netns.netns_inode(f"{spec.netns_prefix}{node_name}")
    if inode:
        me = os.getpid()
        rest = [p.pid for p in proc.process_table() if p.netns == inode and p.pid != me]
        proc.stop(rest, timeout=5)
    cgroups.remove(f"{spec.cgroup_parent}/{node_name}")


def release_mounts(spec: LabSpec, node_name: str) -> None:
    p = spec.paths
    mounts.unmount_under([p.data_root(node_name), p.exec_root(node_name)])


def ensure(spec: LabSpec, node: NodeSpec, host_links: dict, log) -> Pending:
    """Bring the node to its desired state; spawned daemons are returned to wait on."""
    p = spec.paths
    pending = Pending(node)
    procs = proc.process_table()
    net_problems = netns.node_net_ok(spec, node, host_links)
    engines = dockerd.find_dockerd(procs, spec, node.name)
    # A light node's engine is the lab's fake engine (light.ensure), not the node's own.
    engine_ok = node.light or (bool(engines) and engine.ping(p.docker_socket(node.name)))
    if engines and not engine_ok:
        # Maybe just starting (a run killed mid-way); give it a moment before a reset.
        engine_ok = proc.wait_until(lambda: engine.ping(p.docker_socket(node.name)), 10)

    if net_problems or not engine_ok:
        if net_problems and netns.netns_exists(spec.netns(node)):
            log(f"{node.name}: resetting ({'; '.join(net_problems)})")
        elif not net_problems:
            log(f"{node.name}: engine not running; resetting the node")
        stop_everything(spec, node.name)
        release_mounts(spec, node.name)
        if net_problems:
            netns.remove_node_net(spec, node.name, spec.veth(node))
            netns.create_node_net(spec, node)
            pending.actions.append("network")
        procs = proc.process_table()
    ensure_uts(spec, node)

    # Configuration: regenerated every run; a change restarts the daemon that reads it.
    p.node_dir(node.name).mkdir(parents=True, exist_ok=True)
    key_new = sshd.ensure_host_key(spec, node)
    djson_changed = False if node.light else write_if_changed(
        p.daemon_json(node.name), dockerd.render_daemon_json(spec, node))
    sshd_changed = write_if_changed(p.sshd_config(node.name), sshd.render_config(spec, node))

    engines = dockerd.find_dockerd(procs, spec, node.name)
    if engines and (djson_changed or node.light):  # a node made light keeps no dockerd
        log(f"{node.name}: engine configuration changed; restarting it")
        dockerd.stop(procs, spec, node.name)
        engines = []
    if node.light:
        p.daemon_json(node.name).unlink(missing_ok=True)
        p.node_run(node.name).mkdir(parents=True, exist_ok=True)
    elif not engines:
        pending.dockerd_pid = dockerd.start(spec, node)
        pending.actions.append("engine")

    listeners = sshd.find_sshd(procs, spec, node.name)
    if listeners and (sshd_changed or key_new or not sshd.answers(node.address)):
        sshd.stop(procs, spec, node.name)
        listeners = []
    if not listeners:
        pending.sshd_pid = sshd.start(spec, node)
        pending.actions.append("sshd")
    return pending


def wait(spec: LabSpec, pending: Pending) -> None:
    if pending.dockerd_pid:
        dockerd.wait(spec, pending.node, pending.dockerd_pid)
    if pending.sshd_pid:
        sshd.wait(spec, pending.node, pending.sshd_pid)


def teardown(spec: LabSpec, node_name: str, *, keep_data: bool = False) -> None:
    """Remove the node: processes, cgroups, mounts, hostname namespace, netns, veth, files."""
    p = spec.paths
    stop_everything(spec, node_name)
    release_mounts(spec, node_name)
    uts = p.uts_ns(node_name)
    proc.ok(["umount", "--lazy", str(uts)])
    uts.unlink(missing_ok=True)
    octet = None
    try:
        octet = spec.veth(spec.node(node_name))
    except KeyError:
        pass
    netns.remove_node_net(spec, node_name, octet)
    mounts.remove_tree(p.node_run(node_name))
    if not keep_data:
        mounts.remove_tree(p.node_dir(node_name))
        for what in ("dockerd", "sshd"):
            p.log(f"{what}-{node_name}").unlink(missing_ok=True)
