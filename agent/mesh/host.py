"""Everything the mesh changes on the node's host, behind one object (NodeHost): the
WireGuard link, the firewall, dnsmasq and the mesh daemon. The agent's operations call
it through Context.mesh_host, so the unit tests hand in agent.fake.FakeMeshHost and never
touch the machine they run on; NodeHost is the real one."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from agent.mesh import dns, firewall, link, procs
from agent.mesh.paths import MeshPaths
from agent.wire.mesh import MeshConfig


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

    def refresh_daemon(self, paths: MeshPaths, timeout: float = 5.0) -> bool:
        """A tick of the daemon now (SIGUSR1), waiting until it has written its status:
        the node's names then include every peer's current replicas."""
        import json
        import os
        import signal
        import time

        from agent.mesh.daemon_proc import daemon_pid

        pid = daemon_pid(paths)
        if not pid:
            return False
        t0 = time.time()
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(paths.status) as fh:
                    # a tick that started after the signal (one under way may hold older data)
                    if json.load(fh).get("tick_started", 0) > t0:
                        return True
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        return False

    def stop_daemon(self, paths: MeshPaths) -> None:
        from agent.mesh.daemon_proc import daemon_pid

        pid = daemon_pid(paths)
        if pid:
            procs.stop([pid])
