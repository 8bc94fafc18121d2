"""The node's DNS server for mesh names: Debian's dnsmasq, one per environment, listening
on the node's mesh address only. It answers the environment's names from the hosts file
the mesh daemon keeps (--addn-hosts, re-read on SIGHUP: the daemon sends one whenever the
file changes; --hostsdir would add new entries but keep removed ones until a SIGHUP) with a
2-second TTL, and forwards every other name to the node's own resolvers. Bare names are never
forwarded (--domain-needed); names under the mesh domain never leave the node (--local).

Containers reach it through Docker's embedded DNS: each replica gets `dns: [mesh
address]` and its networks' search domains, so "cache" is first looked up on the node's
own replicas (Docker), then as cache.n<k>.orch.internal here.
"""

from __future__ import annotations

import os
from typing import List, Optional

from agent.mesh import procs
from agent.mesh.paths import MeshPaths, write_atomic
from agent.wire.mesh import DOMAIN

FIX = "install dnsmasq: Debian: apt-get install dnsmasq-base"


def binary() -> Optional[str]:
    return procs.which("dnsmasq")


def argv(dnsmasq: str, paths: MeshPaths, address: str) -> List[str]:
    return [dnsmasq, "--conf-file=/dev/null", "--pid-file=" + paths.dns_pid, "--listen-address=" + address,
            "--bind-interfaces", "--no-hosts", "--addn-hosts=" + paths.hosts, "--local-ttl=2",
            "--domain-needed", "--local=/%s/" % DOMAIN, "--log-facility=" + paths.log + ".dns"]


def running(paths: MeshPaths) -> Optional[int]:
    return procs.read_pid(paths.dns_pid, paths.dns_pid)


def current(paths: MeshPaths, address: str) -> bool:
    """Running with exactly the arguments this orch wants (not an older one's)."""
    exe = binary()
    pid = running(paths)
    return bool(exe and pid and procs.cmdline(pid)[1:] == argv(exe, paths, address)[1:])


def ensure(paths: MeshPaths, address: str) -> str:
    """Start dnsmasq if it is not running with exactly the arguments wanted (another
    address, an older orch's): '' or what failed."""
    exe = binary()
    if not exe:
        return "no dnsmasq: " + FIX
    paths.ensure_hosts_dir()
    if not os.path.exists(paths.hosts):  # --addn-hosts must name a file that exists
        write_atomic(paths.hosts, "", 0o644)
    if current(paths, address):
        return ""
    want = argv(exe, paths, address)
    pid = running(paths)
    if pid:
        procs.stop([pid])
    cp = procs.run(want)
    if cp.returncode != 0:
        return "dnsmasq did not start: %s" % cp.stdout.strip()[:300]
    return ""


def reload(paths: MeshPaths) -> bool:
    """The hosts file changed: SIGHUP makes dnsmasq drop its cache and read it again."""
    import os
    import signal

    pid = running(paths)
    if not pid:
        return False
    os.kill(pid, signal.SIGHUP)
    return True


def stop(paths: MeshPaths) -> None:
    pid = running(paths)
    if pid:
        procs.stop([pid])
