"""Fakes of what the certificate daemon uses, for unit tests (of this agent and of the
controller): a CA that issues self-signed certificates at once, a certificate store in
memory, the daemon's processes, the way to an issuer. Nothing here touches the host."""

from __future__ import annotations

import datetime
from typing import Any, Dict, List, Optional, Tuple

from agent.certs.acme_client import AcmeFailure, Issued, leaf, new_key_pem
from agent.wire.tls import CertInfo


def self_signed(host: str, days: float = 90.0, start: Optional[datetime.datetime] = None,
                key_pem: Optional[str] = None) -> Tuple[str, str]:
    """(cert_pem, key_pem) naming `host`, valid `days` from `start` (now)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    key_pem = key_pem or new_key_pem()
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    start = start or datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


class FakeAcme:
    """acme_client.AcmeClient: publishes a challenge token while it 'validates', then
    issues; names in `fail` fail with the CA's words."""

    def __init__(self, days: float = 90.0) -> None:
        self.days = days
        self.orders: List[str] = []
        self.fail: Dict[str, str] = {}
        self.seen_tokens: List[Tuple[str, Optional[str]]] = []  # (token, answer while pending)
        self.answer: Any = None  # set to Certd.answer to check the challenge is served

    def order(self, host: str, board: Any) -> Issued:
        self.orders.append(host)
        token = "tok-%d" % len(self.orders)
        board.publish(token, token + ".thumb")
        try:
            self.seen_tokens.append((token, self.answer(token) if self.answer else None))
        finally:
            board.withdraw(token)
        if host in self.fail:
            raise AcmeFailure(self.fail[host])
        cert, key = self_signed(host, self.days)
        return Issued(cert_pem=cert, key_pem=key)


class FakeCertStore:
    """agent.certs.store: (env, host) -> (CertInfo, cert_pem, key_pem), in memory."""

    def __init__(self) -> None:
        self.certs: Dict[Tuple[str, str], Tuple[CertInfo, str, str]] = {}
        self.installs: List[Tuple[str, str]] = []
        self.broken = False  # install fails (HAProxy down, say)

    def install(self, ctx_or_data_dir: Any, env: str, host: str, cert_pem: str, key_pem: str,
                source: str) -> CertInfo:
        if self.broken:
            raise RuntimeError("haproxy is not running")
        got = leaf(cert_pem)
        info = CertInfo(host=host, source=source, env=env, fingerprint=got.fingerprint, names=got.names, loaded=True)
        self.certs[(env, host)] = (info, cert_pem, key_pem)
        self.installs.append((env, host))
        return info

    def remove(self, ctx_or_data_dir: Any, env: str, host: str) -> bool:
        return self.certs.pop((env, host), None) is not None

    def list_certs(self, data_dir: str, env: Optional[str] = None) -> List[CertInfo]:
        return [info for (e, _), (info, _, _) in sorted(self.certs.items()) if env is None or e == env]

    def certd_socket(self, data_dir: str, env: str) -> str:
        return "%s/certd-%s.sock" % (data_dir, env)


class FakeRemote:
    """certd_core.Remote over another node's Certd (its archive and tokens), or down."""

    def __init__(self, issuer: Any = None) -> None:
        self.issuer = issuer
        self.down = False
        self.fetched: List[str] = []

    def index(self) -> Dict[str, str]:
        if self.down or self.issuer is None:
            raise ConnectionRefusedError("connection refused")
        return self.issuer.archive.index()

    def pair(self, host: str) -> Tuple[str, str]:
        self.fetched.append(host)
        got = self.issuer.archive.pair(host)
        if got is None:
            raise OSError("HTTP Error 404")
        return got

    def challenge(self, token: str) -> Optional[str]:
        return None if self.down or self.issuer is None else self.issuer.tokens.get(token)


class FakeCertdProcs:
    """certd_proc.CertdProcs: a 'daemon' that is a Certd in this process (ask() calls it)."""

    def __init__(self, make_core: Any = None) -> None:
        self.make_core = make_core  # (paths) -> Certd, called at each start
        self.cores: Dict[str, Any] = {}
        self.starts: List[str] = []
        self.missing: List[str] = []
        self.code_current = True

    def problems(self) -> List[str]:
        return list(self.missing)

    def running(self, paths: Any) -> bool:
        return paths.root in self.cores

    def status(self, paths: Any) -> Dict[str, Any]:
        core = self.cores.get(paths.root)
        return {"last_error": core.last_error} if core else {}

    def current(self, paths: Any) -> bool:
        return self.code_current

    def start(self, paths: Any, restart: bool = False) -> None:
        if paths.root in self.cores and not restart and self.code_current:
            return
        self.starts.append(paths.root)
        self.code_current = True
        self.cores[paths.root] = self.make_core(paths) if self.make_core else None

    def stop(self, paths: Any) -> None:
        self.cores.pop(paths.root, None)

    def wake(self, paths: Any) -> bool:
        return paths.root in self.cores

    def ask(self, paths: Any, what: str, body: Dict[str, Any], timeout: float) -> Dict[str, Any]:
        core = self.cores[paths.root]
        if what == "ensure":
            return core.ensure(tuple(body.get("hosts") or ()), bool(body.get("force")))
        return core.pull()
