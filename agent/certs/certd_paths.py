"""Where one environment's certificate daemon keeps its files on a node:
Context.data_dir()/certd/<env>/ (0700; per engine, since the lab's nodes share a filesystem).

    config.json    the CertdConfig (0600: it holds the environment's secret)
    account.key    the ACME account key, issuer only (0600, PEM)
    account.json   the account's URL at the CA it was registered with (0600)
    ca.pem         the CA that signs the ACME server's own HTTPS, when given (0644)
    issued/        the issuer's copy of every certificate it obtained: HOST.crt (0644,
                   leaf + chain) and HOST.key (0600); followers pull from here
    status.json    written by the daemon, no secrets (last error, next check, ...)
    certd.pid, certd.log

and, in a short 0700 folder of its own under /run (run_dir), control.sock: the agent's
operations ask the daemon there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agent.wire.tls import check_host_name


@dataclass(frozen=True)
class CertdPaths:
    root: str

    @classmethod
    def of(cls, data_dir: str, env: str) -> "CertdPaths":
        return cls(os.path.join(data_dir, "certd", env))

    def _p(self, name: str) -> str:
        return os.path.join(self.root, name)

    @property
    def data_dir(self) -> str:
        return os.path.dirname(os.path.dirname(self.root))

    @property
    def env(self) -> str:
        return os.path.basename(self.root)

    @property
    def config(self) -> str:
        return self._p("config.json")

    @property
    def account_key(self) -> str:
        return self._p("account.key")

    @property
    def account(self) -> str:
        return self._p("account.json")

    @property
    def ca(self) -> str:
        return self._p("ca.pem")

    @property
    def issued(self) -> str:
        return self._p("issued")

    def issued_cert(self, host: str) -> str:
        return os.path.join(self.issued, check_host_name(host, "host") + ".crt")

    def issued_key(self, host: str) -> str:
        return os.path.join(self.issued, check_host_name(host, "host") + ".key")

    @property
    def status(self) -> str:
        return self._p("status.json")

    @property
    def run_dir(self) -> str:
        """A short folder for the control socket (a unix socket path has at most 107 bytes;
        the data dir's is long), keyed by this directory (the lab's nodes share /run)."""
        import hashlib

        base = "/run" if os.access("/run", os.W_OK) else "/tmp"
        return os.path.join(base, "orch-certd-" + hashlib.sha256(self.root.encode("utf-8")).hexdigest()[:16])

    @property
    def control(self) -> str:
        return os.path.join(self.run_dir, "control.sock")

    @property
    def pid(self) -> str:
        return self._p("certd.pid")

    @property
    def log(self) -> str:
        return self._p("certd.log")

    def ensure(self) -> None:
        for d in (self.root, self.issued):
            os.makedirs(d, mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)

    def ensure_run_dir(self) -> None:
        """Made 0700 and ours (refused if someone else made it first)."""
        import stat

        try:
            os.mkdir(self.run_dir, 0o700)
        except FileExistsError:
            pass
        st = os.lstat(self.run_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError("%s is not a directory of this user" % self.run_dir)
        os.chmod(self.run_dir, 0o700)
