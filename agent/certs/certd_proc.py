"""Starting, finding, stopping and asking the certificate daemon (agent.certs.daemon), as a
detached process like the mesh daemon (agent.mesh.procs). Its argv names only its
directory; the secret stays in config.json (0600)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

from agent.certs import certd_http
from agent.certs.certd_paths import CertdPaths
from agent.mesh import procs

DAEMON_MODULE = "agent.certs.daemon"
START_SECONDS = 10.0  # a started daemon answers on its control socket within this


def _code() -> str:
    from agent.about import runs_from

    return runs_from()


class CertdProcs:
    """The real processes (the unit tests use a fake with the same methods)."""

    def problems(self) -> List[str]:
        from agent.certs.acme_client import missing

        gone = missing()
        return [gone] if gone else []

    def pid(self, paths: CertdPaths) -> Optional[int]:
        return procs.read_pid(paths.pid, DAEMON_MODULE)

    def running(self, paths: CertdPaths) -> bool:
        return bool(self.pid(paths))

    def status(self, paths: CertdPaths) -> Dict[str, Any]:
        try:
            with open(paths.status) as fh:
                doc = json.load(fh)
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def current(self, paths: CertdPaths) -> bool:
        """Runs this agent's code (a daemon of an older orch is restarted)."""
        return self.status(paths).get("code") in (None, _code())

    def start(self, paths: CertdPaths, restart: bool = False) -> None:
        pid = self.pid(paths)
        if pid and (restart or not self.current(paths)):
            procs.stop([pid])
            pid = None
        if pid:
            return
        env = dict(os.environ, PYTHONPATH=_code(), ORCH_CERTD_CODE=_code())
        pid = procs.spawn([sys.executable, "-m", DAEMON_MODULE, "--dir", paths.root], paths.log, env=env)
        from agent.mesh.paths import write_atomic

        write_atomic(paths.pid, "%d\n" % pid, 0o644)

    def stop(self, paths: CertdPaths) -> None:
        pid = self.pid(paths)
        if pid:
            procs.stop([pid])

    def wake(self, paths: CertdPaths) -> bool:
        pid = self.pid(paths)
        if pid:
            os.kill(pid, signal.SIGUSR1)
        return bool(pid)

    def ask(self, paths: CertdPaths, what: str, body: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        """POST /<what> on the control socket; waits for a daemon just started."""
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                status, raw = certd_http.unix_request(paths.control, "POST", "/" + what, body, timeout)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline or not self.running(paths):
                    raise
                time.sleep(0.1)
        if status != 200:
            raise RuntimeError("the certificate daemon answered %d to %s" % (status, what))
        return json.loads(raw)
