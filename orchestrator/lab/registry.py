"""The lab's registry: Debian's docker-registry (Docker Distribution), twice over one storage.

- HOST:5000, TLS + htpasswd: where orch (and you) push; nodes pull by digest with
  credentials.
- HOST:5001, TLS, anonymous, read-only: the nodes' `registry-mirrors` entry. The
  daemon sends no credentials to a mirror, and a mirror serves only docker.io names
  (busybox, debian:bookworm), so this view is what makes them resolve offline.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.lab import proc
from orchestrator.lab.model import MIRROR_PORT, REGISTRY_PORT, LabSpec

USER = "orch"
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str
    http_secret: str  # distribution's upload-state signing key


def config(spec: LabSpec, creds: Credentials, *, mirror: bool) -> dict:
    p = spec.paths
    port = MIRROR_PORT if mirror else REGISTRY_PORT
    storage: dict = {
        "filesystem": {"rootdirectory": str(p.registry_storage)},
        "delete": {"enabled": True},
    }
    if mirror:
        storage["maintenance"] = {
            "readonly": {"enabled": True},
            # Only the read-write instance may purge upload dirs of the shared storage.
            "uploadpurging": {"enabled": False},
        }
    cfg: dict = {
        "version": 0.1,
        "log": {"level": "info", "fields": {"service": "mirror" if mirror else "registry"}},
        "storage": storage,
        "http": {
            "addr": f"{spec.host_address}:{port}",
            "secret": creds.http_secret,
            "tls": {"certificate": str(p.registry_cert), "key": str(p.registry_key)},
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if not mirror:
        cfg["auth"] = {"htpasswd": {"realm": f"{spec.name} registry", "path": str(p.htpasswd)}}
    return cfg


def render(spec: LabSpec, creds: Credentials, *, mirror: bool) -> str:
    import yaml

    head = "# Written by `orch lab up`; regenerated on every run.\n"
    return head + yaml.safe_dump(config(spec, creds, mirror=mirror), sort_keys=False)


def registry_argv(config_path: Path) -> list[str]:
    return ["docker-registry", "serve", str(config_path)]


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    # Apache writes $2y$; the same algorithm as $2b$, and what Distribution documents.
    return f"{user}:$2y${hashed[4:]}\n"


def htpasswd_matches(path: Path, creds: Credentials) -> bool:
    import bcrypt

    try:
        user, _, hashed = path.read_text().strip().partition(":")
    except OSError:
        return False
    if user != creds.user or not hashed.startswith("$2"):
        return False
    return bcrypt.checkpw(creds.password.encode(), ("$2b$" + hashed[4:]).encode())


def env_file(spec: LabSpec, creds: Credentials) -> str:
    return (
        "# Lab registry credentials (written by `orch lab up`). Keep private.\n"
        f"ORCH_REGISTRY={spec.registry}\n"
        f"ORCH_REGISTRY_USER={creds.user}\n"
        f"ORCH_REGISTRY_PASSWORD={creds.password}\n"
    )


def parse_env_file(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, _, v = line.partition("=")
            out[k.strip()] = v.strip()
    return out


def cert_dirs(spec: LabSpec) -> list[Path]:
    """Where every engine on this machine (host and nodes) looks up the lab CA."""
    return [Path("/etc/docker/certs.d") / spec.registry, Path("/etc/docker/certs.d") / spec.mirror]


OWNER_FILE = "orch-lab.owner"  # ignored by dockerd (not .crt/.cert/.key)


# ---- effects --------------------------------------------------------------------


def load_credentials(spec: LabSpec) -> Credentials | None:
    p = spec.paths
    try:
        env = parse_env_file(p.registry_env.read_text())
        secret = (p.registry_dir / "http.secret").read_text().strip()
    except OSError:
        return None
    if env.get("ORCH_REGISTRY_USER") and env.get("ORCH_REGISTRY_PASSWORD") and secret:
        return Credentials(env["ORCH_REGISTRY_USER"], env["ORCH_REGISTRY_PASSWORD"], secret)
    return None


def load_or_create_credentials(spec: LabSpec) -> Credentials:
    p = spec.paths
    secret_file = p.registry_dir / "http.secret"
    found = load_credentials(spec)
    if found:
        return found
    creds = Credentials(USER, secrets.token_urlsafe(24), secrets.token_hex(32))
    p.registry_dir.mkdir(parents=True, exist_ok=True)
    write_private(secret_file, creds.http_secret + "\n")
    write_private(p.htpasswd, htpasswd_line(creds.user, creds.password))
    write_private(p.registry_env, env_file(spec, creds))
    return creds


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def install_ca(spec: LabSpec) -> None:
    ca = spec.paths.ca_cert.read_bytes()
    for d in cert_dirs(spec):
        d.mkdir(parents=True, exist_ok=True)
        if not (d / "ca.crt").exists() or (d / "ca.crt").read_bytes() != ca:
            (d / "ca.crt").write_bytes(ca)
        (d / OWNER_FILE).write_text(spec.name + "\n")


def ca_installed(spec: LabSpec) -> bool:
    try:
        ca = spec.paths.ca_cert.read_bytes()
        return all((d / "ca.crt").read_bytes() == ca for d in cert_dirs(spec))
    except OSError:
        return False


def owned_by(cert_dir: Path, lab_name: str) -> bool:
    try:
        return (cert_dir / OWNER_FILE).read_text().strip() == lab_name
    except OSError:
        return False


def remove_ca(spec: LabSpec) -> None:
    from orchestrator.lab.mounts import remove_tree

    for d in cert_dirs(spec):
        if owned_by(d, spec.name):
            remove_tree(d)


def find(procs: list[proc.Proc], spec: LabSpec, *, mirror: bool) -> list[proc.Proc]:
    path = spec.paths.mirror_config if mirror else spec.paths.registry_config
    return proc.find(procs, str(path), program="docker-registry")


def port_holder(address: str, port: int) -> str | None:
    """None if we could listen on address:port; else who holds it (best effort)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the servers themselves listen (Go and Python servers set it): connections of a
    # lab just taken down, in TIME_WAIT for a minute, do not hold the port.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((address, port))
        return None
    except OSError:
        pass
    finally:
        s.close()
    cp = proc.run(["ss", "-H", "-ltnp", f"sport = :{port}"], check=False)
    mine = [f"{address}:{port}", f"0.0.0.0:{port}", f"*:{port}", f"[::]:{port}"]
    lines = [" ".join(ln.split()) for ln in cp.stdout.splitlines() if any(m in ln for m in mine)]
    return "; ".join(lines) or f"something is listening on {address}:{port}"


def start(spec: LabSpec, *, mirror: bool) -> int:
    p = spec.paths
    port = MIRROR_PORT if mirror else REGISTRY_PORT
    holder = port_holder(spec.host_address, port)
    if holder:
        raise OrchError(
            f"port {port} on {spec.host_address} is already in use, so the lab's "
            f"{'mirror' if mirror else 'registry'} cannot listen there: {holder}",
            fix=f"stop what holds port {port} (Debian's own registry service: "
            "`systemctl disable --now docker-registry`), then run `orch lab up` again",
        )
    p.registry_storage.mkdir(parents=True, exist_ok=True)
    cfg = p.mirror_config if mirror else p.registry_config
    return proc.spawn(registry_argv(cfg), p.log("mirror" if mirror else "registry"))


def wait(spec: LabSpec, pid: int, *, mirror: bool, timeout: float = 20) -> None:
    port = MIRROR_PORT if mirror else REGISTRY_PORT
    url = f"https://{spec.host_address}:{port}/v2/"
    if proc.wait_until(lambda: answers(spec, url) or not proc.alive(pid), timeout) and answers(spec, url):
        return
    logfile = spec.paths.log("mirror" if mirror else "registry")
    raise OrchError(
        f"the lab {'mirror' if mirror else 'registry'} did not start at {url}. "
        f"Last lines of {logfile}:\n{proc.log_excerpt(logfile)}",
        fix="fix what the log says, then run `orch lab up` again",
    )


def _ctx(spec: LabSpec) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(spec.paths.ca_cert))


def request(
    spec: LabSpec,
    url: str,
    *,
    creds: Credentials | None = None,
    method: str = "GET",
    headers: dict | None = None,
    timeout: float = 5,
):
    """(status, headers, body) of an HTTPS request to the lab registry."""
    req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if creds:
        token = base64.b64encode(f"{creds.user}:{creds.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, context=_ctx(spec), timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def answers(spec: LabSpec, url: str) -> bool:
    """The registry speaks the v2 API there (200, or 401 asking for credentials)."""
    try:
        status, headers, _ = request(spec, url, timeout=2)
    except (OSError, ssl.SSLError):
        return False
    return status in (200, 401) and "registry/2.0" in headers.get("Docker-Distribution-API-Version", "")


def manifest_digest(spec: LabSpec, creds: Credentials, repo: str, tag: str) -> str | None:
    try:
        status, headers, _ = request(
            spec,
            f"https://{spec.registry}/v2/{repo}/manifests/{tag}",
            creds=creds,
            method="HEAD",
            headers={"Accept": MANIFEST_TYPES},
        )
    except (OSError, ssl.SSLError):
        return None
    return headers.get("Docker-Content-Digest") if status == 200 else None


def catalog(spec: LabSpec, creds: Credentials) -> list[str] | None:
    """Every repository: the registry answers in pages (100 by default), linked by the
    Link header's next URL."""
    import re

    out: list[str] = []
    url: str | None = f"https://{spec.registry}/v2/_catalog?n=1000"
    while url:
        try:
            status, headers, body = request(spec, url, creds=creds)
        except (OSError, ssl.SSLError):
            return None
        if status != 200:
            return None
        out += list(json.loads(body).get("repositories") or [])
        link = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', (headers.get("Link") or "") if headers else "")
        url = f"https://{spec.registry}{link.group(1)}" if link and link.group(1).startswith("/") else (
            link.group(1) if link else None)
    return out


# ----------------------------------------------------------------------------- garbage collection (orch prune)


def gc_argv(config_path: Path) -> list[str]:
    """Distribution's garbage collection: the blobs no manifest references any more are
    deleted. It must not run while pushes happen (the registry is stopped around it)."""
    return ["docker-registry", "garbage-collect", str(config_path)]


def for_address(address: str, root: Path = Path("/")) -> LabSpec | None:
    """The lab on this machine whose registry is `address` (host:port), if any."""
    from orchestrator.lab.model import LabPaths
    from orchestrator.lab.state import load_spec

    base = root / "var/lib"
    try:
        names = sorted(d.name for d in base.iterdir() if d.name.startswith("orch-lab"))
    except OSError:
        return None
    for name in names:
        paths = LabPaths.for_name(name, root)
        spec = load_spec(paths)
        if spec is not None and spec.registry == address and paths.registry_config.exists():
            return spec
    return None


def storage_bytes(spec: LabSpec) -> int:
    total = 0
    for folder, _, names in os.walk(spec.paths.registry_storage):
        for n in names:
            try:
                total += os.lstat(os.path.join(folder, n)).st_size
            except OSError:
                pass
    return total


def garbage_collect(spec: LabSpec, log=lambda text: None) -> tuple[int, int]:
    """Stop the lab's read-write registry (no push can happen), run the garbage
    collection over its storage, start it again; (bytes before, bytes after). The
    read-only mirror keeps serving: it never writes, and what is collected is unreferenced."""
    from orchestrator.lab import state

    with state.locked(spec.paths, log):  # `orch lab up` waits instead of restarting it meanwhile
        before = storage_bytes(spec)
        running = find(proc.process_table(), spec, mirror=False)
        if running:
            proc.stop([r.pid for r in running], timeout=10)
        try:
            proc.run(gc_argv(spec.paths.registry_config), timeout=600,
                     fix="look at the registry's storage, then run `orch lab up` to start it again")
        finally:
            # Not start(): its free-port check fails while the old listener's connections
            # linger in TIME_WAIT (the registry itself listens with SO_REUSEADDR).
            pid = proc.spawn(registry_argv(spec.paths.registry_config), spec.paths.log("registry"))
            wait(spec, pid, mirror=False)
            log(f"registry https://{spec.registry} started again")
        return before, storage_bytes(spec)
