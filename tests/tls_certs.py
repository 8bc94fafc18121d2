"""Certificates for the HTTPS edge tests (unit and e2e): a test CA and leaves it signs,
made with the `cryptography` package (in the venv; never on nodes)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pair:
    cert_pem: str
    key_pem: str
    fingerprint: str  # sha256 of the certificate (DER), hex lower case

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())


def _key_pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _pair(cert: x509.Certificate, key) -> Pair:
    return Pair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key),
                cert.fingerprint(hashes.SHA256()).hex())


def make_ca(name: str = "orch edge test CA") -> Pair:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return _pair(cert, key)


def make_leaf(ca: Pair, names: Sequence[str], days: float = 10, key_of: Optional[Pair] = None) -> Pair:
    """A leaf for `names` signed by ca (valid from an hour ago for `days`; negative: expired).
    key_of: certify another pair's key instead of a new one (a renewal keeping its key)."""
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), None)
    key = serialization.load_pem_private_key(key_of.key_pem.encode(), None) if key_of else \
        ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(hours=1) if days > 0 else now - dt.timedelta(days=2)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _pair(cert, key)
