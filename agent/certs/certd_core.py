"""What one node's certificate daemon does for an environment, apart from its servers and
its loop (agent.certs.daemon): the issuer's orders and archive, a follower's pull, the
challenge answers. The ACME client, the certificate store and the way to the issuer are
handed in, so the unit tests run it with fakes.

One order per name per renewal: orders run one at a time under `work` (the daemon's
schedule and certd_ensure share it), a name is ordered only when plan.due says so, and a
certificate obtained but not loaded (HAProxy down, say) is installed again from the
issuer's archive (issued/) without a new order.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.certs import certd_plan as plan
from agent.certs.acme_client import AcmeFailure
from agent.certs.certd_paths import CertdPaths
from agent.wire.tls import CERTD_PORT, MAX_PEM_BYTES, ROLE_ISSUER, TLS_AUTO, CertdConfig, host_name_problem

RELAY_TIMEOUT = 3.0  # a follower asking the issuer for a challenge's answer
PULL_TIMEOUT = 10.0


class Tokens:
    """Pending HTTP-01 challenges: token -> key authorization, in memory only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._map: Dict[str, str] = {}

    def publish(self, token: str, key_authorization: str) -> None:
        with self._lock:
            self._map[token] = key_authorization

    def withdraw(self, token: str) -> None:
        with self._lock:
            self._map.pop(token, None)

    def get(self, token: str) -> Optional[str]:
        with self._lock:
            return self._map.get(token)


class Archive:
    """The issuer's copy of what it obtained (the source of the followers' pulls)."""

    def __init__(self, paths: CertdPaths, leaf: Callable[[str], Any]) -> None:
        self.paths, self._leaf = paths, leaf

    def pair(self, host: str) -> Optional[Tuple[str, str]]:
        try:
            with open(self.paths.issued_cert(host)) as c, open(self.paths.issued_key(host)) as k:
                return c.read(MAX_PEM_BYTES + 1), k.read(MAX_PEM_BYTES + 1)
        except OSError:
            return None

    def leaf(self, host: str) -> Any:
        got = self.pair(host)
        if got is None:
            return None
        try:
            return self._leaf(got[0])
        except ValueError:
            return None

    def put(self, host: str, cert_pem: str, key_pem: str) -> None:
        from agent.ingress_files import write_atomic

        self.paths.ensure()
        write_atomic(self.paths.issued_key(host), key_pem.encode("ascii"), 0o600)
        write_atomic(self.paths.issued_cert(host), cert_pem.encode("ascii"), 0o644)

    def remove(self, host: str) -> None:
        for p in (self.paths.issued_cert(host), self.paths.issued_key(host)):
            try:
                os.unlink(p)
            except OSError:
                pass

    def hosts(self) -> List[str]:
        try:
            names = os.listdir(self.paths.issued)
        except OSError:
            return []
        return sorted(n[:-4] for n in names if n.endswith(".crt") and not host_name_problem(n[:-4]))

    def index(self) -> Dict[str, str]:
        out = {}
        for host in self.hosts():
            got = self.leaf(host)
            if got is not None:
                out[host] = got.fingerprint
        return out


class Remote:
    """A follower's way to the issuer: its server on the mesh address, with the secret."""

    def __init__(self, address: str, secret: str, port: int = CERTD_PORT) -> None:
        self.base = "http://%s:%d" % (address, port)
        self._secret = secret

    def _get(self, path: str, timeout: float, auth: bool = True) -> bytes:
        req = urllib.request.Request(self.base + path)
        if auth:
            req.add_header("Authorization", "Bearer " + self._secret)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read(4 * MAX_PEM_BYTES + 1)
        if len(raw) > 4 * MAX_PEM_BYTES:
            raise ValueError("the issuer's answer is too large")
        return raw

    def index(self) -> Dict[str, str]:
        doc = json.loads(self._get("/certs", PULL_TIMEOUT))
        return {h: f for h, f in doc.items() if isinstance(f, str) and not host_name_problem(h)}

    def pair(self, host: str) -> Tuple[str, str]:
        doc = json.loads(self._get("/certs/" + host, PULL_TIMEOUT))
        return doc["cert_pem"], doc["key_pem"]

    def challenge(self, token: str) -> Optional[str]:
        try:
            return self._get("/acme/" + token, RELAY_TIMEOUT, auth=False).decode("ascii")
        except (OSError, ValueError, urllib.error.HTTPError):
            return None


def fail_text(exc: BaseException) -> str:
    """One line about a failure, never a value (keys, secret) that went into it."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return ("%s: %s" % (type(exc).__name__, text))[:400]


class Certd:
    def __init__(self, paths: CertdPaths, cfg: CertdConfig, store: Any, acme: Any = None, remote: Any = None,
                 leaf: Optional[Callable[[str], Any]] = None, clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] = lambda line: None) -> None:
        if leaf is None:
            from agent.certs.acme_client import leaf
        self.paths, self.cfg, self.store, self.acme, self.clock, self.log = paths, cfg, store, acme, clock, log
        if remote is None and cfg.role != ROLE_ISSUER:
            remote = Remote(cfg.issuer_address, cfg.secret)
        self.remote = remote
        self.leaf = leaf
        self.archive = Archive(paths, leaf)
        self.tokens = Tokens()
        self.work = threading.Lock()  # one order (or pull) at a time
        self.failures: Dict[str, int] = {}
        self.failed_at: Dict[str, float] = {}
        self.errors: Dict[str, str] = {}
        self.ordered_total = 0

    @property
    def issuer(self) -> bool:
        return self.cfg.role == ROLE_ISSUER

    def _local(self) -> Dict[str, str]:
        """host -> fingerprint of the environment's automatic certificates in the store."""
        return {c.host: c.fingerprint for c in self.store.list_certs(self.paths.data_dir, self.cfg.env)
                if c.source == TLS_AUTO}

    def _install(self, host: str, cert_pem: str, key_pem: str) -> None:
        self.store.install(self.paths.data_dir, self.cfg.env, host, cert_pem, key_pem, TLS_AUTO)

    def _failed(self, host: str, why: str) -> None:
        self.errors[host] = why
        self.failures[host] = self.failures.get(host, 0) + 1
        self.failed_at[host] = self.clock()
        self.log("%s: %s" % (host, why))

    def _ok(self, host: str) -> None:
        for d in (self.errors, self.failures, self.failed_at):
            d.pop(host, None)

    @property
    def last_error(self) -> str:
        return "; ".join("%s: %s" % (h, e) for h, e in sorted(self.errors.items()))

    # -- the issuer
    def ensure(self, hosts: Tuple[str, ...] = (), force: bool = False, scheduled: bool = False) -> Dict[str, Any]:
        """Order what is due among `hosts` (all the config's when empty), one at a time; a
        failing name does not stop the others. {ordered, restored, due, errors}."""
        with self.work:
            now = self.clock()
            wanted = list(hosts or self.cfg.hosts)
            local = self._local()
            out: Dict[str, Any] = {"ordered": [], "restored": [], "due": [], "errors": {}}
            for host in wanted:
                held = self.archive.leaf(host)
                why = plan.due(host, held, now, self.cfg.acme.renew_before if self.cfg.acme else 0.0, force)
                retry_at = self.failed_at.get(host, 0.0) + plan.retry_delay(self.failures.get(host, 0))
                if why and scheduled and now < retry_at:
                    continue  # waiting after a failure (an explicit certd_ensure does not)
                try:
                    if why:
                        out["due"].append(host)
                        self.log("%s: ordering (%s)" % (host, why))
                        issued = self.acme.order(host, self.tokens)
                        self.archive.put(host, issued.cert_pem, issued.key_pem)
                        self.ordered_total += 1
                        out["ordered"].append(host)
                        try:
                            self._install(host, issued.cert_pem, issued.key_pem)
                        except Exception as exc:  # the next ensure loads it from the archive
                            raise AcmeFailure("obtained, but not loaded: %s" % fail_text(exc)) from None
                        self.log("%s: issued %s" % (host, self.leaf(issued.cert_pem).fingerprint))
                    elif local.get(host) != held.fingerprint:
                        pair = self.archive.pair(host)
                        self._install(host, pair[0], pair[1])
                        out["restored"].append(host)
                    self._ok(host)
                except Exception as exc:  # the CA's words (AcmeFailure), else the exception's type and text
                    self._failed(host, str(exc) if isinstance(exc, AcmeFailure) else fail_text(exc))
                    out["errors"][host] = self.errors[host]
            return out

    def next_check(self) -> float:
        now = self.clock()
        renewals = []
        for host in self.cfg.hosts:
            held = self.archive.leaf(host)
            if held is not None:
                renewals.append(plan.renew_at(held.not_before, held.not_after,
                                              self.cfg.acme.renew_before if self.cfg.acme else 0.0))
        retries = [self.failed_at[h] + plan.retry_delay(n) for h, n in self.failures.items()]
        return plan.next_check(now, renewals, retries)

    # -- a follower
    def pull(self) -> Dict[str, Any]:
        """Fetch the served names whose certificate changed at the issuer, and load them.
        {fetched, errors}; an unreachable issuer is an error for every name."""
        with self.work:
            out: Dict[str, Any] = {"fetched": [], "errors": {}}
            try:
                index = self.remote.index()
            except Exception as exc:
                why = "the issuer %s did not answer: %s" % (self.cfg.issuer_address, fail_text(exc))
                self.errors = {"*": why}
                out["errors"]["*"] = why
                return out
            self.errors.pop("*", None)
            for host in plan.to_fetch(list(self.cfg.hosts), index, self._local()):
                try:
                    cert_pem, key_pem = self.remote.pair(host)
                    got = self.leaf(cert_pem)
                    if host not in got.names:
                        raise ValueError("the issuer's certificate does not name %s" % host)
                    self._install(host, cert_pem, key_pem)
                    out["fetched"].append(host)
                    self.log("%s: pulled %s" % (host, got.fingerprint))
                    self._ok(host)
                except Exception as exc:
                    self._failed(host, fail_text(exc))
                    out["errors"][host] = self.errors[host]
            local = self._local()
            for host in self.cfg.hosts:
                if host in out["errors"]:
                    continue
                if host not in index:
                    self.errors[host] = "the issuer has no certificate for it yet"
                elif local.get(host) == index[host]:
                    self._ok(host)
            return out

    # -- challenges
    def answer(self, token: str) -> Optional[str]:
        if self.issuer:
            return self.tokens.get(token)
        return self.remote.challenge(token)
