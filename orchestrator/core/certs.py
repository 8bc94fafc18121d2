"""Certificates given by the user (`x-orch.ingress.tls: {cert, key}`), checked before any
node is touched (pure: the PEM texts come in, read by the caller through Sources). Uses the
`cryptography` package: PEM parsing, the key against the certificate, the validity dates,
and that the certificate's DNS names (wildcards allowed) cover every host name served.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from agent.wire.tls import MAX_PEM_BYTES

MAX_PEM_FILE = MAX_PEM_BYTES  # a certificate chain or a key file: what a node accepts


class CertProblem(ValueError):
    """What is wrong with a certificate or key (the caller adds file, key and fix)."""

    def __init__(self, message: str, fix: str, which: str = "cert"):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.which = which  # "cert" | "key": which of the two files is at fault


@dataclass(frozen=True)
class FileCert:
    """A validated certificate chain and its key (TLS_FILES). The key never leaves this
    object except in the `tls_cert_put` request (repr hides it)."""

    cert_pem: str
    key_pem: str = field(repr=False)
    fingerprint: str = ""  # SHA-256 of the leaf, hex, lower case (what a node reports)
    not_after: str = ""  # ISO 8601 UTC
    issuer: str = ""
    names: tuple[str, ...] = ()
    cert_from: str = ""  # where it was read (a path, or "secret NAME"), for messages
    key_from: str = ""


def _name_matches(pattern: str, host: str) -> bool:
    if pattern == host:
        return True
    if pattern.startswith("*."):  # one label only, as browsers do
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def covered(names: Sequence[str], host: str) -> bool:
    return any(_name_matches(n.lower().rstrip("."), host) for n in names)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_file_cert(cert_pem: bytes, key_pem: bytes, hosts: Sequence[str], *, cert_from: str, key_from: str,
                    now: datetime | None = None) -> FileCert:
    """The certificate and key, validated; CertProblem names what is wrong."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    now = now or datetime.now(timezone.utc)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as err:
        raise CertProblem(f"{cert_from} is not a PEM certificate ({err})",
                          "give the certificate chain in PEM form (-----BEGIN CERTIFICATE-----), leaf first")
    if not chain:
        raise CertProblem(f"{cert_from} holds no certificate", "give the certificate chain in PEM form, leaf first")
    leaf = chain[0]
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        reason = "it is encrypted" if "password" in str(err).lower() or isinstance(err, TypeError) else str(err)
        raise CertProblem(f"{key_from} is not an unencrypted PEM private key ({reason})",
                          "give the private key in PEM form without a passphrase "
                          "(openssl pkey -in KEY -out KEY.pem)", which="key")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem = serialization.Encoding.PEM
    if key.public_key().public_bytes(pem, spki) != leaf.public_key().public_bytes(pem, spki):
        raise CertProblem(f"the key {key_from} does not match the certificate {cert_from}",
                          "give the key the certificate was issued for (compare `openssl x509 -pubkey` with "
                          "`openssl pkey -pubout`), or the certificate issued for this key", which="key")
    not_before, not_after = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    if now >= not_after:
        raise CertProblem(f"the certificate {cert_from} expired on {_iso(not_after)}",
                          "renew it and give the new certificate (or use tls: auto)")
    if now < not_before:
        raise CertProblem(f"the certificate {cert_from} is not valid before {_iso(not_before)}",
                          "check the controller's clock, or wait until it is valid")
    try:
        names = tuple(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                      .value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    missing = [h for h in hosts if not covered(names, h)]
    if missing:
        raise CertProblem(f"the certificate {cert_from} does not cover {', '.join(missing)} (its DNS names: "
                          f"{', '.join(names) or 'none'})",
                          "give a certificate whose subject alternative names list every host name of the "
                          "service (a wildcard *.example.com covers one label), or serve those names elsewhere")
    issuer = leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    return FileCert(
        cert_pem="".join(c.public_bytes(pem).decode("ascii") for c in chain),
        key_pem=key_pem.decode("utf-8", "replace"),
        fingerprint=hashlib.sha256(leaf_der).hexdigest(),
        not_after=_iso(not_after),
        issuer=str(issuer[0].value) if issuer else leaf.issuer.rfc4514_string(),
        names=names, cert_from=cert_from, key_from=key_from)
