"""Where one environment's mesh keeps its files on a node: Context.data_dir()/mesh/<env>/
(per engine, since the lab's nodes share one filesystem)."""

from __future__ import annotations

import os
from dataclasses import dataclass


RUNTIME_DIR = "/run/orch-mesh"


@dataclass(frozen=True)
class MeshPaths:
    root: str

    @classmethod
    def of(cls, data_dir: str, env: str) -> "MeshPaths":
        return cls(os.path.join(data_dir, "mesh", env))

    def _p(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def private_key(self) -> str:  # 0600, never leaves the node
        return self._p("private.key")

    @property
    def wg_conf(self) -> str:  # `wg syncconf` input (holds the private key: 0600)
        return self._p("wg.conf")

    @property
    def config(self) -> str:  # the MeshConfig last applied (JSON)
        return self._p("config.json")

    @property
    def hosts_dir(self) -> str:
        """dnsmasq --hostsdir (re-read on change). dnsmasq reads it as `nobody`, so it is
        not under the agent's private state directory but in a world-readable runtime
        directory of its own (names and addresses, nothing secret), keyed by this mesh
        directory so nodes sharing a filesystem (the lab) do not collide."""
        import hashlib

        return os.path.join(RUNTIME_DIR, hashlib.sha256(self.root.encode()).hexdigest()[:16], "hosts")

    @property
    def hosts(self) -> str:
        return os.path.join(self.hosts_dir, "records")

    @property
    def status(self) -> str:  # written by the daemon: peers reachable, records
        return self._p("status.json")

    @property
    def daemon_pid(self) -> str:
        return self._p("meshd.pid")

    @property
    def dns_pid(self) -> str:
        return self._p("dnsmasq.pid")

    @property
    def log(self) -> str:
        return self._p("mesh.log")

    def ensure(self) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    def ensure_hosts_dir(self) -> None:
        """Made by the real host driver only (agent.mesh.dns), never by the fakes."""
        os.makedirs(self.hosts_dir, mode=0o755, exist_ok=True)
        for d in (os.path.dirname(os.path.dirname(self.hosts_dir)), os.path.dirname(self.hosts_dir), self.hosts_dir):
            os.chmod(d, 0o755)


def write_atomic(path: str, text: str, mode: int = 0o600) -> bool:
    """Write (agent.ingress_files.write_atomic) only if different; True when the file changed."""
    from agent.ingress_files import write_atomic as write_bytes

    try:
        with open(path) as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    write_bytes(path, text.encode("utf-8"), mode)
    return True
