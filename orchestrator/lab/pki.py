"""The lab's keys: a CA and the registry's TLS certificate (openssl), SSH keys (ssh-keygen).

Generated once and kept in the state directory, so a second `lab up` reuses them and
nothing that trusted them before has to be told again.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.lab import proc

CA_DAYS = 3650
CERT_DAYS = 825


def ca_argv(key: Path, cert: Path, lab_name: str) -> list[str]:
    return [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", str(CA_DAYS),
        "-subj", f"/O=orch lab/CN={lab_name} CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    ]  # fmt: skip


def csr_argv(key: Path, csr: Path, address: str) -> list[str]:
    return [
        "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/O=orch lab/CN={address}",
    ]  # fmt: skip


def server_ext(address: str) -> str:
    """openssl x509 -extfile contents: the registry is reached by IP, so an IP SAN."""
    return (
        f"subjectAltName=IP:{address}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )


def sign_argv(csr: Path, ca_cert: Path, ca_key: Path, cert: Path, ext: Path) -> list[str]:
    return [
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAserial", str(ca_key.with_name("ca.srl")), "-CAcreateserial",
        "-out", str(cert), "-days", str(CERT_DAYS), "-extfile", str(ext),
    ]  # fmt: skip


def verify_argv(ca_cert: Path, cert: Path) -> list[str]:
    return ["openssl", "verify", "-CAfile", str(ca_cert), str(cert)]


def cert_has_ip_argv(cert: Path, address: str) -> list[str]:
    return ["openssl", "x509", "-in", str(cert), "-noout", "-checkip", address]


def cert_valid_for_argv(cert: Path, seconds: int = 30 * 86400) -> list[str]:
    """Exit 0 when the certificate is still valid `seconds` from now."""
    return ["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(seconds)]


def ssh_keygen_argv(path: Path, comment: str) -> list[str]:
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]


def known_hosts_line(address: str, port: int, pubkey_line: str) -> str:
    """One known_hosts entry; non-default ports are written [host]:port as OpenSSH does."""
    host = address if port == 22 else f"[{address}]:{port}"
    keytype, key = pubkey_line.split()[:2]
    return f"{host} {keytype} {key}"


# ---- effects --------------------------------------------------------------------


def ensure_ca(ca_dir: Path, key: Path, cert: Path, lab_name: str) -> bool:
    if key.exists() and cert.exists():
        return False
    ca_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(ca_dir, 0o700)  # the CA key; the certificate itself is public
    proc.run(ca_argv(key, cert, lab_name))
    os.chmod(key, 0o600)
    return True


def ensure_server_cert(
    key: Path, cert: Path, address: str, ca_cert: Path, ca_key: Path
) -> bool:
    """(Re)issue the registry certificate unless a valid one for address exists."""
    if key.exists() and cert.exists() and proc.ok(verify_argv(ca_cert, cert)) and proc.ok(cert_valid_for_argv(cert)):
        cp = proc.run(cert_has_ip_argv(cert, address), check=False)
        if cp.returncode == 0 and "does match" in cp.stdout and "NOT" not in cp.stdout:
            return False
    cert.parent.mkdir(parents=True, exist_ok=True)
    csr = cert.with_suffix(".csr")
    ext = cert.with_suffix(".ext")
    proc.run(csr_argv(key, csr, address))
    ext.write_text(server_ext(address))
    proc.run(sign_argv(csr, ca_cert, ca_key, cert, ext))
    os.chmod(key, 0o600)
    csr.unlink()
    ext.unlink()
    return True


def ensure_ssh_key(path: Path, comment: str) -> bool:
    if path.exists() and path.with_name(path.name + ".pub").exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    for p in (path, path.with_name(path.name + ".pub")):
        if p.exists():
            p.unlink()
    proc.run(ssh_keygen_argv(path, comment))
    os.chmod(path, 0o600)
    return True


def public_key(path: Path) -> str:
    return path.with_name(path.name + ".pub").read_text().strip()
