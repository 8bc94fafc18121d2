"""The ACME client of the certificate daemon, on Debian's python3-acme (imported lazily:
`orch nodes check` reports it missing; nothing here speaks the protocol itself).

The daemon needs one thing from it, AcmeClient.order(host, board): a new key, a CSR, a new
order, the HTTP-01 challenge published on `board` (token -> key authorization, which the
daemon serves to the CA) and answered, polled, finalized; the chain and the key back. The
account key (ECDSA P-256) is made once and kept in the certd directory (0600); the account
is registered at the first order of a process (an existing one is found again by its key),
and again if the CA forgot it (pebble forgets everything when it restarts).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Protocol, Tuple

from agent.certs.certd_paths import CertdPaths
from agent.wire.tls import AcmeSettings

FIX = "apt-get install python3-acme"
ORDER_SECONDS = 90  # polling an order's validation and finalization
NETWORK_TIMEOUT = 30
_ACCOUNT_GONE = "urn:ietf:params:acme:error:accountDoesNotExist"


class AcmeFailure(Exception):
    """An order failed; the message is the CA's problem detail (no secret in it)."""


class Board(Protocol):
    def publish(self, token: str, key_authorization: str) -> None: ...

    def withdraw(self, token: str) -> None: ...


@dataclass(frozen=True)
class Issued:
    cert_pem: str  # leaf first, then the chain
    key_pem: str  # PKCS#8 PEM


@dataclass(frozen=True)
class Leaf:
    """A certificate's facts the daemon decides on."""

    fingerprint: str  # SHA-256 of the leaf (DER), hex
    not_before: float  # epoch seconds
    not_after: float
    names: Tuple[str, ...]


def missing() -> Optional[str]:
    """What the node lacks for ACME (None: nothing)."""
    try:
        import acme.client  # noqa: F401
        import cryptography  # noqa: F401
        import josepy  # noqa: F401
    except ImportError:
        return "no python3-acme for %s: %s" % (os.path.realpath(sys.executable), FIX)
    return None


def new_key_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode("ascii")


def leaf(cert_pem: str) -> Leaf:
    """The first certificate of a PEM chain (ValueError if there is none)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    der = cert.public_bytes(_der())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(sans.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return Leaf(fingerprint=hashlib.sha256(der).hexdigest(), not_before=_epoch(cert, "not_valid_before"),
                not_after=_epoch(cert, "not_valid_after"), names=names)


def fingerprint(cert_pem: str) -> str:
    return leaf(cert_pem).fingerprint


def _der() -> Any:
    from cryptography.hazmat.primitives.serialization import Encoding

    return Encoding.DER


def _epoch(cert: Any, attr: str) -> float:
    # cryptography >= 42 has the *_utc variants (aware); Debian 12's 38 only the naive UTC ones
    aware = getattr(cert, attr + "_utc", None)
    if aware is None:
        aware = getattr(cert, attr).replace(tzinfo=datetime.timezone.utc)
    return aware.timestamp()


def _write_private(path: str, text: str) -> None:
    from agent.ingress_files import write_atomic

    write_atomic(path, text.encode("utf-8"), 0o600)


def problem(exc: BaseException) -> str:
    """The CA's words for a failure, in one line."""
    from acme import errors, messages

    if isinstance(exc, errors.ValidationError):
        details = []
        for authzr in exc.failed_authzrs:
            for ch in authzr.body.challenges:
                if ch.error is not None:
                    details.append(ch.error.detail or str(ch.error.typ))
        return "validation failed: " + ("; ".join(details) or "no detail from the CA")
    if isinstance(exc, messages.Error):
        return "%s (%s)" % (exc.detail or "error", (exc.typ or "").rsplit(":", 1)[-1])
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish the order within %d s" % ORDER_SECONDS
    if isinstance(exc, errors.IssuanceError):
        return "issuance failed: %s" % (exc.error.detail or exc.error.typ)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return "%s: %s" % (type(exc).__name__, text[:300])


class AcmeClient:
    """One account at one ACME server (AcmeSettings), for the life of a daemon."""

    def __init__(self, settings: AcmeSettings, paths: CertdPaths, user_agent: str = "orch-certd") -> None:
        self.settings, self.paths, self.user_agent = settings, paths, user_agent
        self._client: Any = None
        self._key: Any = None

    # -- the account
    def _account_key(self) -> Any:
        import josepy as jose
        from cryptography.hazmat.primitives import serialization

        if not os.path.exists(self.paths.account_key):
            _write_private(self.paths.account_key, new_key_pem())
        with open(self.paths.account_key, "rb") as fh:
            key = serialization.load_pem_private_key(fh.read(), password=None)
        return jose.JWKEC(key=key)

    def _verify(self) -> Any:
        if not self.settings.ca_pem:
            return True
        from agent.ingress_files import write_atomic

        write_atomic(self.paths.ca, self.settings.ca_pem.encode("utf-8"), 0o644)
        return self.paths.ca

    def _connect(self) -> Any:
        import josepy as jose
        from acme import client, errors, messages

        self._key = self._account_key()
        net = client.ClientNetwork(self._key, alg=jose.ES256, verify_ssl=self._verify(), user_agent=self.user_agent,
                                   timeout=NETWORK_TIMEOUT)
        acme = client.ClientV2(client.ClientV2.get_directory(self.settings.directory, net), net)
        contact = {"email": self.settings.email} if self.settings.email else {}
        try:
            regr = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True, **contact))
        except errors.ConflictError as exists:  # this key has an account there already
            regr = messages.RegistrationResource(uri=exists.location, body=messages.Registration())
            net.account = regr
        _write_private(self.paths.account, json.dumps({"directory": self.settings.directory, "url": regr.uri}))
        return acme

    # -- orders
    def order(self, host: str, board: Board) -> Issued:
        """A certificate for `host` (one order); AcmeFailure with the CA's words."""
        try:
            return self._order(host, board)
        except AcmeFailure:
            raise
        except Exception as exc:
            from acme import messages

            if isinstance(exc, messages.Error) and exc.typ == _ACCOUNT_GONE:
                self._client = None  # the CA forgot the account: register again, once
                try:
                    return self._order(host, board)
                except Exception as again:
                    raise AcmeFailure(problem(again)) from None
            raise AcmeFailure(problem(exc)) from None

    def _order(self, host: str, board: Board) -> Issued:
        from acme import challenges, crypto_util

        if self._client is None:
            self._client = self._connect()
        acme = self._client
        key_pem = new_key_pem()
        order = acme.new_order(crypto_util.make_csr(key_pem.encode("ascii"), [host]))
        published: List[str] = []
        try:
            for authz in order.authorizations:
                if authz.body.status == _valid():
                    continue  # the CA reused an earlier validation
                chall = next((c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01)), None)
                if chall is None:
                    raise AcmeFailure("the CA offers no HTTP-01 challenge for %s" % host)
                response, validation = chall.response_and_validation(self._key)
                token = chall.chall.encode("token")
                board.publish(token, validation)
                published.append(token)
                acme.answer_challenge(chall, response)
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_SECONDS)
            done = acme.poll_and_finalize(order, deadline=deadline)
        finally:
            for token in published:
                board.withdraw(token)
        return Issued(cert_pem=done.fullchain_pem, key_pem=key_pem)


def _valid() -> Any:
    from acme import messages

    return messages.STATUS_VALID
