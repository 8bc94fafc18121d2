"""The certificate daemon ("certd"), one per environment on each node that serves its
TLS_AUTO names, as the issuer or a follower (agent.wire.tls, CertdConfig).

- Issuer: looks at its certificates every plan.CHECK_SECONDS (sooner when a renewal or a
  retry is due; at once on SIGUSR1) and orders what is due (certd_core.Certd.ensure);
  serves its followers on listen_address:CERTD_PORT when it has some.
- Follower: asks the issuer every FOLLOW_SECONDS (at once on SIGUSR1) and loads what changed.
- Both answer HAProxy's forwarded HTTP-01 challenges on the challenge socket
  (store.certd_socket) and the agent's operations on the control socket; both write
  status.json (no secrets).
There is no controller in the loop: renewal needs only config.json.

Run as `python3 -m agent.certs.daemon --dir CERTDDIR` (agent.certs.certd_proc starts it;
the secret is in config.json, never in the arguments).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from agent.certs import certd_http as H
from agent.certs.certd_core import Certd, fail_text
from agent.certs.certd_paths import CertdPaths
from agent.wire.tls import CERTD_PORT, FOLLOW_SECONDS, CertdConfig

# The issuer's first look comes this long after its start: certd_configure is followed by
# the controller's certd_ensure, which then makes the first orders itself and reports their
# outcome to `orch up` (a daemon restarted on its own looks after the same delay).
ISSUER_FIRST_CHECK = 20.0
BIND_RETRY = 10.0  # the mesh address may come up after the daemon: try to listen again this often
CODE_ENV = "ORCH_CERTD_CODE"


def load_config(paths: CertdPaths) -> Optional[CertdConfig]:
    try:
        with open(paths.config) as fh:
            return CertdConfig.parse(json.load(fh))
    except (OSError, ValueError, Exception):
        return None


def iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def log_line(text: str) -> None:
    print("%s certd: %s" % (iso(time.time()), text), file=sys.stderr, flush=True)


class Daemon:
    def __init__(self, paths: CertdPaths, cfg: CertdConfig, core: Certd, challenge_socket: str) -> None:
        self.paths, self.cfg, self.core, self.challenge_socket = paths, cfg, core, challenge_socket
        self.stopping, self.wake = threading.Event(), threading.Event()
        self.servers: List[Any] = []  # the issuer's TCP server, once it listens
        self.unix: Dict[str, Any] = {}  # socket path -> its server
        self.peer_server: Any = None
        self.next_at = time.time() + ISSUER_FIRST_CHECK if core.issuer else 0.0
        self.problems: List[str] = []
        self.status_lock = threading.Lock()  # the loop and a control request both write status.json

    # -- requests
    def issuer_get(self, h: Any) -> H.Reply:
        return H.issuer_reply(h.path, h.headers.get("Authorization"), H.client_ip(h), self.cfg.secret,
                              self.cfg.followers, self.core.tokens.get, self.core.archive.index,
                              self.core.archive.pair)

    def challenge_get(self, h: Any) -> H.Reply:
        return H.challenge_reply(h.path, self.core.answer)

    def control_post(self, path: str, doc: Dict[str, Any]) -> H.Reply:
        if path == "/ensure" and self.core.issuer:
            hosts = tuple(h for h in doc.get("hosts") or () if h in self.cfg.hosts)
            out = self.core.ensure(hosts, bool(doc.get("force")))
        elif path == "/pull" and not self.core.issuer:
            out = self.core.pull()
        else:
            return H.NOT_FOUND
        self.write_status()
        return H.json_reply(out)

    # -- servers
    def start(self) -> None:
        self.sockets()
        self.listen()

    def sockets(self) -> None:
        """The control and challenge sockets, made again when their file is gone (their
        folders are under /run, which someone may have cleaned)."""
        for path, mode, get, post in ((self.paths.control, 0o600, None, self.control_post),
                                      (self.challenge_socket, 0o660, self.challenge_get, None)):
            if path in self.unix and os.path.exists(path):
                continue
            old = self.unix.pop(path, None)
            if old is not None:
                old.shutdown()
                old.server_close()
            if path == self.paths.control:
                self.paths.ensure_run_dir()
            try:
                server = H.unix_server(path, mode, get=get, post=post)
            except OSError as exc:
                log_line("cannot listen on %s: %s" % (path, exc))
                continue
            self.unix[path] = server
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def listen(self) -> None:
        """The issuer's server for its followers, on its mesh address (retried: the link
        may not have its address yet)."""
        if self.peer_server is not None or not (self.core.issuer and self.cfg.listen_address and self.cfg.followers):
            return
        try:
            self.peer_server = H.tcp_server(self.cfg.listen_address, CERTD_PORT, self.issuer_get)
        except OSError as exc:
            self.problems = ["cannot listen on %s:%d: %s" % (self.cfg.listen_address, CERTD_PORT, exc)]
            return
        self.problems = []
        self.servers.append(self.peer_server)
        threading.Thread(target=self.peer_server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        for server in self.servers + list(self.unix.values()):
            server.shutdown()
            server.server_close()
        for path in (self.paths.control, self.challenge_socket):
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.rmdir(self.paths.run_dir)
        except OSError:
            pass

    # -- the loop
    def write_status(self) -> None:
        core = self.core
        last_error = "; ".join(self.problems + ([core.last_error] if core.last_error else []))
        with self.status_lock:
            self._write_status(core, last_error)

    def _write_status(self, core: Certd, last_error: str) -> None:
        from agent.mesh.paths import write_atomic

        write_atomic(self.paths.status, json.dumps({
            "pid": os.getpid(), "code": os.environ.get(CODE_ENV), "time": time.time(), "role": self.cfg.role,
            "hosts": list(self.cfg.hosts), "last_error": last_error, "errors": dict(core.errors),
            "next_check": iso(self.next_at) if self.next_at else "", "ordered_total": core.ordered_total},
            sort_keys=True), 0o644)

    def tick(self) -> None:
        self.sockets()
        self.listen()
        now = time.time()
        if now >= self.next_at:
            try:
                if self.core.issuer:
                    self.core.ensure(scheduled=True)
                    self.next_at = self.core.next_check()
                else:
                    self.core.pull()
                    self.next_at = time.time() + FOLLOW_SECONDS
            except Exception as exc:  # never die of one bad tick
                log_line("tick failed: %s" % fail_text(exc))
                self.next_at = time.time() + FOLLOW_SECONDS
        self.write_status()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *a: (self.stopping.set(), self.wake.set()))
        # SIGUSR1: look now (the issuer at expiries, a follower at the issuer)
        signal.signal(signal.SIGUSR1, lambda *a: (setattr(self, "next_at", 0.0), self.wake.set()))
        self.start()
        log_line("%s for %s (%d names) started" % (self.cfg.role, self.cfg.env, len(self.cfg.hosts)))
        while not self.stopping.is_set():
            self.wake.clear()
            self.tick()
            self.wake.wait(max(0.5, min(self.next_at - time.time(), BIND_RETRY)))
        self.stop()
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="certd")
    ap.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    paths = CertdPaths(os.path.abspath(args.dir))
    cfg = load_config(paths)
    if cfg is None:
        log_line("no usable %s" % paths.config)
        return 1
    from agent.certs import store

    acme = None
    if cfg.acme is not None:
        from agent.certs.acme_client import AcmeClient

        acme = AcmeClient(cfg.acme, paths)
    core = Certd(paths, cfg, store, acme=acme, log=log_line)
    return Daemon(paths, cfg, core, store.certd_socket(paths.data_dir, cfg.env)).run()


if __name__ == "__main__":
    sys.exit(main())
