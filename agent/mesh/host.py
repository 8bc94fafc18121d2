"""Everything the mesh changes on the node's host, behind one object (NodeHost): the
WireGuard link, the firewall, dnsmasq and the mesh daemon. The agent's operations call
it through Context.mesh_host, so the unit tests hand in agent.fake.FakeMeshHost and never
touch the machine they run on; NodeHost is the real one."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from agent.mesh import dns, firewall, link, procs
from agent.mesh.paths import MeshPaths
from agent.wire.mesh import MeshConfig


def unpulled(status: Dict[str, Any], need: Tuple[str, ...]) -> List[str]:
    """The needed peers a daemon's tick (its status.json) did not pull records from; a node
    the daemon has no peer for (not in this mesh) is not waited for."""
    peers = [p for p in status.get("peers") or [] if isinstance(p, dict)]
    pulled = {p.get("node") for p in peers if not p.get("error")}
    known = {p.get("node") for p in peers}
    return sorted(n for n in set(need) if n in known and n not in pulled)


class NodeHost:
    def problems(self) -> List[str]:
        out = link.problems()
        if not dns.binary():
            out.append("no dnsmasq: " + dns.FIX)
        if not procs.which("iptables-restore"):
            out.append("no iptables: apt-get install iptables")
        return out

    # -- keys and link
    def ensure_key(self, paths: MeshPaths) -> str:
        return link.ensure_key(paths)

    def public_key(self, paths: MeshPaths) -> Optional[str]:
        return link.public_key(paths)

    def ensure_link(self, cfg: MeshConfig, paths: MeshPaths) -> str:
        return link.ensure(cfg, paths)

    def link_up(self, iface: str) -> bool:
        return link.exists(iface)

    def link_peers(self, iface: str) -> List[Dict[str, Any]]:
        return link.show(iface)

    def remove_link(self, iface: str) -> None:
        link.remove(iface)

    # -- firewall
    def apply_firewall(self, iface: str, text: str) -> None:
        firewall.apply(iface, text)

    def remove_firewall(self, iface: str) -> None:
        firewall.remove(iface)

    # -- DNS
    def ensure_dns(self, paths: MeshPaths, address: str) -> str:
        return dns.ensure(paths, address)

    def dns_running(self, paths: MeshPaths) -> bool:
        return bool(dns.running(paths))

    def dns_current(self, paths: MeshPaths, address: str) -> bool:
        return dns.current(paths, address)

    def stop_dns(self, paths: MeshPaths) -> None:
        dns.stop(paths)

    # -- the mesh daemon
    def ensure_daemon(self, paths: MeshPaths, env: str, restart: bool = False) -> None:
        from agent.mesh.daemon_proc import ensure_daemon

        ensure_daemon(paths, env, restart)

    def daemon_running(self, paths: MeshPaths) -> bool:
        from agent.mesh.daemon_proc import daemon_pid

        return bool(daemon_pid(paths))

    def daemon_current(self, paths: MeshPaths) -> bool:
        from agent.mesh.daemon_proc import current

        return current(paths)

    def refresh_daemon(self, paths: MeshPaths, timeout: float = 5.0, need: Tuple[str, ...] = ()) -> List[str]:
        """A tick of the daemon now (SIGUSR1), waiting until it has written its status: the
        node's names then include every peer's current replicas. With `need` (peer nodes),
        until a tick pulled each of them: names and link both work, also right after the
        link was made (crossed WireGuard handshakes take a keepalive interval to settle).
        Returns what is still missing: [] when done, the needed peers that did not answer,
        or ["daemon"] when no tick came in time."""
        import json
        import os
        import signal
        import time

        from agent.mesh.daemon_proc import daemon_pid

        pid = daemon_pid(paths)
        if not pid:
            return ["daemon"]
        missing = ["daemon"]
        t0 = time.time()
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(paths.status) as fh:
                    status = json.load(fh)
            except (OSError, ValueError):
                status = {}
            # a tick that started after the signal (one under way may hold older data)
            if status.get("tick_started", 0) > t0:
                missing = unpulled(status, need)
                if not missing:
                    return []
                t0 = time.time()
                os.kill(pid, signal.SIGUSR1)  # another tick at once: the link may be settling
            time.sleep(0.05)
        return missing

    def stop_daemon(self, paths: MeshPaths) -> None:
        from agent.mesh.daemon_proc import daemon_pid

        pid = daemon_pid(paths)
        if pid:
            procs.stop([pid])
