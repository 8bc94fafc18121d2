"""What the lab's prod nodes' service mesh looks like, for a failed test's message."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def _sshd_pid(node: str) -> str | None:
    """The lab node's sshd listener: its network and its mount namespace (wireguard-go's
    control sockets are in the node's own /run/wireguard, orchestrator/lab/sshd.py)."""
    pids = subprocess.run(["pgrep", "-f", f"sshd -D -e -f /var/lib/orch-lab/nodes/{node}/sshd_config"],
                          capture_output=True, text=True).stdout.split()
    return pids[0] if pids else None


def in_node(node: str, argv: list[str]) -> list[str]:
    """argv run inside the lab node's network and mount namespaces."""
    pid = _sshd_pid(node)
    assert pid, f"{node}: no sshd"
    return ["nsenter", "-t", pid, "-m", "-n", *argv]


def mesh_state(nodes: tuple[str, ...] = ("prod-1", "prod-2", "prod-3")) -> str:
    """What each prod node's mesh looks like from inside its namespace (WireGuard's peers,
    handshakes and counters, routes, UDP sockets, the mesh chains, the daemons' status), for
    a failure's message: a broken mesh then says where it breaks."""
    import glob

    out = []
    for node in nodes:
        pid = _sshd_pid(node)
        if pid is None:
            continue
        for argv in (["wg", "show", "all", "dump"], ["ip", "-4", "-brief", "addr"], ["ip", "-4", "route"],
                     ["ss", "-uanp"], ["iptables", "-S"], ["iptables", "-t", "nat", "-S", "POSTROUTING"]):
            cp = subprocess.run(["nsenter", "-t", pid, "-m", "-n", *argv], capture_output=True, text=True)
            out.append(f"--- {node}: {' '.join(argv)} (exit {cp.returncode})\n{cp.stdout}{cp.stderr}")
    for status in sorted(glob.glob("/var/lib/orch-agent/engines/*/mesh/*/status.json")):
        try:
            if time.time() - os.path.getmtime(status) < 120:
                out.append(f"--- {status}\n{Path(status).read_text()[:3000]}")
        except OSError:
            pass
    return "\n".join(out)
