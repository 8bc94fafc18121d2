"""Each node's own sshd: own config, host key and pid file, the lab's client key authorised.

`SetEnv DOCKER_HOST=...` makes every session on the node (and so the agent and a
plain `ssh node docker ps`) talk to that node's own engine.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.lab import netns, pki, proc
from orchestrator.lab.model import SSH_PORT, LabSpec, NodeSpec

PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it


def render_config(spec: LabSpec, node: NodeSpec) -> str:
    p = spec.paths
    sock = p.docker_socket(node.name)
    lines = [
        "# Written by `orch lab up`; regenerated on every run.",
        f"ListenAddress {node.address}:{SSH_PORT}",
        f"HostKey {p.host_key(node.name)}",
        f"PidFile {p.sshd_pidfile(node.name)}",
        f"AuthorizedKeysFile {p.authorized_keys}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes yes",
        "X11Forwarding no",
        "PrintMotd no",
        "PermitUserEnvironment no",
        # The controller connects to every node in parallel, several channels each.
        "MaxSessions 64",
        "MaxStartups 64:30:128",
        "ClientAliveInterval 30",
        f"SetEnv DOCKER_HOST=unix://{sock} ORCH_LAB_NODE={node.name}",
        "Subsystem sftp internal-sftp",
    ]
    return "\n".join(lines) + "\n"


# A real server has its own /run; the lab's nodes share this machine's. WireGuard's tools
# keep their control sockets in /run/wireguard/<interface>.sock, and every prod node names
# its interface orch-prod: so each node's sshd (and the agents and programs it starts)
# runs in a mount namespace of its own where /run/wireguard is the node's directory.
PRIVATE_RUN_DIRS = ("/run/wireguard",)
# The nodes also share this machine's /root, and sshd runs every command through root's
# shell, which sources ~/.bashrc: a developer's (here `pyenv init`, 0.15 s per command) would
# slow every node as no fresh server is. Each node's root sees Debian's stock one instead,
# which returns at once for a non-interactive shell.
NODE_BASHRC = ("/etc/skel/.bashrc", "/root/.bashrc")
_BIND = ('set -e; mkdir -p "$1" "$2"; mount --bind "$1" "$2"; '
         'if [ -f "$3" ] && [ -f "$4" ]; then mount --bind "$3" "$4"; fi; shift 5; exec "$@"')


def sshd_argv(spec: LabSpec, node: NodeSpec) -> list[str]:
    p = spec.paths
    # -D: stay in the foreground so the pid we spawn is the daemon; -e: log to stderr
    # (our log file) instead of syslog, which may not exist here. unshare and sh exec
    # into sshd, so the pid spawned is sshd's.
    private = str(p.node_run(node.name) / "wireguard")
    return netns.in_netns(
        spec.netns(node),
        ["unshare", "--mount", "--propagation", "slave", "--", "/bin/sh", "-c", _BIND, "sh",
         private, PRIVATE_RUN_DIRS[0], *NODE_BASHRC, "--",
         "/usr/sbin/sshd", "-D", "-e", "-f", str(p.sshd_config(node.name))],
        uts=p.uts_ns(node.name),
    )


def find_sshd(procs: list[proc.Proc], spec: LabSpec, node_name: str) -> list[proc.Proc]:
    # Only the listener: its argv is exactly ours (sessions' children rename themselves).
    return proc.find(procs, str(spec.paths.sshd_config(node_name)), program="sshd")


def test_config_argv(spec: LabSpec, node: NodeSpec) -> list[str]:
    return ["/usr/sbin/sshd", "-t", "-f", str(spec.paths.sshd_config(node.name))]


def ensure_host_key(spec: LabSpec, node: NodeSpec) -> bool:
    return pki.ensure_ssh_key(spec.paths.host_key(node.name), f"{node.name}@{spec.name}")


def start(spec: LabSpec, node: NodeSpec) -> int:
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    spec.paths.node_run(node.name).mkdir(parents=True, exist_ok=True)
    proc.run(test_config_argv(spec, node), fix="the generated sshd_config is invalid; this is a bug in orch")
    return proc.spawn(sshd_argv(spec, node), spec.paths.log(f"sshd-{node.name}"))


def answers(address: str, port: int = SSH_PORT, timeout: float = 2.0) -> bool:
    """True when something at address:port speaks SSH (reads the banner)."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def wait(spec: LabSpec, node: NodeSpec, pid: int, timeout: float = 20) -> None:
    t0 = time.monotonic()
    proc.wait_until(lambda: answers(node.address, timeout=0.5) or not proc.alive(pid), timeout)
    if answers(node.address):
        return
    logfile = spec.paths.log(f"sshd-{node.name}")
    gone = "exited" if not proc.alive(pid) else "still running but not answering"
    raise OrchError(
        f"sshd of node {node.name} did not start on {node.address}:{SSH_PORT} "
        f"(pid {pid} {gone} after {time.monotonic() - t0:.1f} s). "
        f"Last lines of {logfile}:\n{proc.log_excerpt(logfile)}",
        fix="fix what the log says, then run `orch lab up` again",
    )


def stop(procs: list[proc.Proc], spec: LabSpec, node_name: str) -> None:
    proc.stop([pr.pid for pr in find_sshd(procs, spec, node_name)], timeout=5)
