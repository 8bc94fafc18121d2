"""The lab's ACME server: Debian's pebble (the test CA made by Let's Encrypt's authors)
on the bridge address, so tests and `make demo` get real ACME-issued certificates
without reaching a public CA.

- Directory https://HOST:14000/dir, served with a certificate from the lab CA
  (ca.crt): clients trust it with the same file as the registry.
- Management API https://HOST:15000: /roots/0 is the root pebble signs with. Pebble
  makes a new root (and forgets every account and order) each time it starts, so
  `lab up` fetches it after every start into acme-ca.crt.
- Challenges are really validated (no PEBBLE_VA_ALWAYS_VALID): pebble resolves names
  through the lab resolver (dns.py) and fetches HTTP-01 tokens from port 80 of the
  address a name resolves to (TLS-ALPN-01: port 443).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

from orchestrator.errors import OrchError
from orchestrator.lab import dns, pki, proc, state
from orchestrator.lab.model import ACME_MANAGEMENT_PORT, ACME_PORT, LabSpec

HTTP01_PORT = 80
TLSALPN01_PORT = 443

# Deterministic and test-friendly; challenges still validated for real.
PEBBLE_ENV = {
    "PEBBLE_VA_NOSLEEP": "1",  # no random 0-15 s wait before each validation
    "PEBBLE_WFE_NONCEREJECT": "0",  # no random badNonce rejections (default 5 %)
    "PEBBLE_AUTHZREUSE": "0",  # every order validates its names (no reused authorizations)
}


def config(spec: LabSpec) -> dict:
    p = spec.paths
    return {
        "pebble": {
            "listenAddress": f"{spec.host_address}:{ACME_PORT}",
            "managementListenAddress": f"{spec.host_address}:{ACME_MANAGEMENT_PORT}",
            "certificate": str(p.acme_cert),
            "privateKey": str(p.acme_key),
            "httpPort": HTTP01_PORT,
            "tlsPort": TLSALPN01_PORT,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }


def render(spec: LabSpec) -> str:
    return json.dumps(config(spec), indent=2) + "\n"


def pebble_argv(spec: LabSpec) -> list[str]:
    return ["pebble", "-config", str(spec.paths.acme_config), "-dnsserver", spec.dns_server]


def root_url(spec: LabSpec) -> str:
    return f"{spec.acme_management}/roots/0"


def is_pem_cert(text: str) -> bool:
    return text.lstrip().startswith("-----BEGIN CERTIFICATE-----") and "-----END CERTIFICATE-----" in text


# ---- effects --------------------------------------------------------------------


def _get(spec: LabSpec, url: str, timeout: float = 3) -> tuple[int, bytes]:
    ctx = ssl.create_default_context(cafile=str(spec.paths.ca_cert))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def answers(spec: LabSpec) -> bool:
    """The directory answers over TLS the lab CA vouches for, as an ACME directory."""
    try:
        status, body = _get(spec, spec.acme_directory, timeout=2)
        return status == 200 and "newAccount" in json.loads(body)
    except (OSError, ssl.SSLError, ValueError):
        return False


def fetch_root(spec: LabSpec) -> str | None:
    """The PEM of the root pebble issues under now, None if it does not answer."""
    try:
        status, body = _get(spec, root_url(spec))
    except (OSError, ssl.SSLError):
        return None
    text = body.decode(errors="replace")
    return text if status == 200 and is_pem_cert(text) else None


def root_current(spec: LabSpec) -> bool:
    """acme-ca.crt holds the root of the pebble that runs now."""
    root = fetch_root(spec)
    try:
        return root is not None and spec.paths.acme_ca.read_text() == root
    except OSError:
        return False


def find(procs: list[proc.Proc], spec: LabSpec) -> list[proc.Proc]:
    return proc.find(procs, str(spec.paths.acme_config), program="pebble")


def ensure(spec: LabSpec, log) -> None:
    """The resolver, then pebble with the current config and certificate, then its root
    in acme-ca.crt (fetched on every run: cheap, and right after any restart)."""
    p = spec.paths
    dns.ensure(spec, log)
    p.acme_dir.mkdir(parents=True, exist_ok=True)
    restart = pki.ensure_server_cert(p.acme_key, p.acme_cert, spec.host_address, p.ca_cert, p.ca_key)
    restart |= state.write_if_changed(p.acme_config, render(spec), 0o644)
    want = tuple(pebble_argv(spec))
    running = find(proc.process_table(), spec)
    if running and (restart or any(r.argv != want for r in running) or not answers(spec)):
        proc.stop([r.pid for r in running], timeout=10)
        running = []
    if not running:
        _start(spec)
        log(f"ACME server {spec.acme_directory} started (pebble; new root in {p.acme_ca})")
    root = fetch_root(spec)
    if root is None:
        raise OrchError(
            f"the lab ACME server does not hand out its root at {root_url(spec)}. "
            f"Last lines of {p.log('pebble')}:\n{proc.log_excerpt(p.log('pebble'))}",
            fix="fix what the log says, then run `orch lab up` again",
        )
    state.write_if_changed(p.acme_ca, root, 0o644)


def _start(spec: LabSpec, timeout: float = 20) -> None:
    from orchestrator.lab.registry import port_holder

    p = spec.paths
    for port in (ACME_PORT, ACME_MANAGEMENT_PORT):
        holder = port_holder(spec.host_address, port)
        if holder:
            raise OrchError(
                f"port {port} on {spec.host_address} is already in use, so the lab's ACME "
                f"server cannot listen there: {holder}",
                fix=f"stop what holds port {port}, then run `orch lab up` again",
            )
    pid = proc.spawn(pebble_argv(spec), p.log("pebble"), env=PEBBLE_ENV)
    if proc.wait_until(lambda: answers(spec) or not proc.alive(pid), timeout) and answers(spec):
        return
    raise OrchError(
        f"the lab ACME server did not start at {spec.acme_directory}. "
        f"Last lines of {p.log('pebble')}:\n{proc.log_excerpt(p.log('pebble'))}",
        fix="fix what the log says, then run `orch lab up` again",
    )


def stop(spec: LabSpec, procs: list[proc.Proc]) -> None:
    proc.stop([r.pid for r in find(procs, spec)], timeout=10)
