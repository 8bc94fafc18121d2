"""The `openssl` command line, for what the stdlib cannot do: read a certificate's facts,
compare a key with a certificate, make the node's self-signed fallback certificate.

PEM text goes in on stdin, never on argv (a key in a process list is a leak); a file
path goes on argv only for the fallback key, which openssl writes into a 0700 folder.
"""

from __future__ import annotations

import calendar
import os
import re
import shutil
import subprocess
import time
from typing import Any, Dict, List

from agent.wire.protocol import BAD_REQUEST, NOT_FOUND, AgentError

TIMEOUT = 30.0
_DIRS = ("/usr/bin", "/usr/local/bin", "/bin")


def binary() -> str:
    found = shutil.which("openssl") or next(
        (os.path.join(d, "openssl") for d in _DIRS if os.access(os.path.join(d, "openssl"), os.X_OK)), None)
    if not found:
        raise AgentError(NOT_FOUND, "the openssl command is not installed on this node",
                         {"fix": "install it: apt-get install -y openssl"})
    return found


def run(args: List[str], stdin: bytes = b"", what: str = "openssl") -> str:
    """openssl ARGS with stdin; its stdout, or BAD_REQUEST naming `what` when it refuses."""
    out = subprocess.run([binary()] + args, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=TIMEOUT, env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AgentError(BAD_REQUEST, "%s cannot be read by openssl: %s" % (what, (err or ["?"])[0][:300]))
    return out.stdout.decode("utf-8", "replace")


def iso_utc(openssl_date: str) -> str:
    """'Dec  6 17:00:00 2026 GMT' -> '2026-12-06T17:00:00Z'."""
    parsed = time.strptime(" ".join(openssl_date.replace("GMT", "").split()), "%b %d %H:%M:%S %Y")
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(calendar.timegm(parsed)))


def _field(text: str, name: str) -> str:
    m = re.search(r"^%s=(.*)$" % re.escape(name), text, re.M | re.I)
    return m.group(1).strip() if m else ""


def parse_facts(text: str) -> Dict[str, Any]:
    """The output of `x509 -noout -fingerprint -sha256 -issuer -startdate -enddate -ext
    subjectAltName -nameopt RFC2253` -> {fingerprint, issuer, not_before, not_after, names}."""
    issuer = _field(text, "issuer")
    cn = re.search(r"(?:^|,)CN=((?:\\.|[^,])*)", issuer)
    names = re.findall(r"DNS:([^,\s]+)", text)
    return {"fingerprint": _field(text, "sha256 Fingerprint").replace(":", "").lower(),
            "issuer": cn.group(1).replace("\\", "") if cn else issuer,
            "not_before": iso_utc(_field(text, "notBefore")) if _field(text, "notBefore") else "",
            "not_after": iso_utc(_field(text, "notAfter")) if _field(text, "notAfter") else "",
            "names": [n.lower() for n in names]}


def cert_facts(cert_pem: str) -> Dict[str, Any]:
    """The leaf's (the first certificate's) public facts."""
    text = run(["x509", "-noout", "-fingerprint", "-sha256", "-issuer", "-startdate", "-enddate",
                "-ext", "subjectAltName", "-nameopt", "RFC2253"], cert_pem.encode("utf-8"), "the certificate")
    facts = parse_facts(text)
    if not facts["fingerprint"] or not facts["not_after"]:
        raise AgentError(BAD_REQUEST, "the certificate cannot be read by openssl (no fingerprint or expiry)")
    return facts


def public_key_of_cert(cert_pem: str) -> str:
    return run(["x509", "-noout", "-pubkey"], cert_pem.encode("utf-8"), "the certificate").strip()


def public_key_of_key(key_pem: str) -> str:
    # -passin pass: makes an encrypted key fail instead of prompting on a terminal
    return run(["pkey", "-pubout", "-passin", "pass:"], key_pem.encode("utf-8"), "the key").strip()


def key_matches(cert_pem: str, key_pem: str) -> bool:
    return public_key_of_cert(cert_pem) == public_key_of_key(key_pem)


def self_signed(folder: str, name: str = "orch-default", days: int = 3650) -> str:
    """A new self-signed certificate and key (EC P-256) as one PEM text (certificate
    first, as HAProxy wants), made in `folder` (0700) and not left there."""
    key = os.path.join(folder, ".default-key.tmp-%d" % os.getpid())
    crt = os.path.join(folder, ".default-crt.tmp-%d" % os.getpid())
    old = os.umask(0o077)
    try:
        run(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", crt, "-days", str(days), "-subj", "/CN=" + name], b"", "a new certificate")
        with open(crt) as fh_c, open(key) as fh_k:
            return fh_c.read().strip() + "\n" + fh_k.read().strip() + "\n"
    finally:
        os.umask(old)
        for path in (key, crt):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
