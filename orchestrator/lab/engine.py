"""A few Docker Engine API calls over a unix socket (stdlib only: fast, no SDK import).

Also starts the host's engine when it is not running: the controller builds and
pushes with it, and it must be up before the lab can publish its base images.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.lab import proc

HOST_SOCKET = Path("/var/run/docker.sock")
HOST_PIDFILE = Path("/var/run/docker.pid")  # dockerd's defaults
HOST_EXEC_ROOT = Path("/var/run/docker")
HOST_LOG = Path("/var/log/docker.log")  # where Debian's sysvinit script logs it too


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api(sock: Path, path: str, timeout: float = 5.0, method: str = "GET"):
    """GET path; returns (status, parsed JSON or text). Raises OSError when down."""
    conn = _UnixConnection(str(sock), timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
    except (http.client.HTTPException, socket.timeout) as err:
        raise OSError(str(err)) from err
    finally:
        conn.close()
    ctype = resp.getheader("Content-Type", "")
    data = json.loads(body) if "json" in ctype and body else body.decode(errors="replace")
    return resp.status, data


def ping(sock: Path, timeout: float = 2.0) -> bool:
    try:
        status, _ = api(sock, "/_ping", timeout)
        return status == 200
    except OSError:
        return False


def version(sock: Path) -> dict | None:
    try:
        status, data = api(sock, "/version")
    except OSError:
        return None
    return data if status == 200 and isinstance(data, dict) else None


def info(sock: Path) -> dict | None:
    try:
        status, data = api(sock, "/info")
    except OSError:
        return None
    return data if status == 200 and isinstance(data, dict) else None


def image(sock: Path, ref: str) -> dict | None:
    from urllib.parse import quote

    try:
        status, data = api(sock, f"/images/{quote(ref, safe='')}/json")
    except OSError:
        return None
    return data if status == 200 and isinstance(data, dict) else None


def start_host_engine_argv() -> list[str]:
    """How to start the host's engine: systemd if it runs the machine, else dockerd ourselves."""
    if Path("/run/systemd/system").is_dir():
        return ["systemctl", "start", "docker"]
    return []


# dockerd gives the containerd it spawns 15 s to answer, then exits; on a cold or
# loaded machine (a fresh CI runner, four node engines starting at once) that
# happens. A dockerd that died before answering is started again: it adopts the
# containerd still coming up (its pid file) or starts a warmer one.
START_ATTEMPTS = 4


def ensure_host_engine(log) -> None:
    if ping(HOST_SOCKET):
        return
    if proc.which("dockerd") is None:
        raise OrchError(
            "Docker Engine is not installed on this machine.",
            fix="run `make lab`, or apt-get install docker.io",
        )
    log("starting the host's Docker Engine")
    argv = start_host_engine_argv()
    if argv:
        proc.run(argv, check=False, timeout=90)
        if proc.wait_until(lambda: ping(HOST_SOCKET), 10):
            return
    for attempt in range(1, START_ATTEMPTS + 1):
        if attempt > 1:
            log(f"the host's Docker Engine exited before answering; starting it again "
                f"(attempt {attempt} of {START_ATTEMPTS})")
        clear_stale_pidfiles(HOST_PIDFILE, HOST_EXEC_ROOT)
        pid = proc.spawn(["dockerd"], HOST_LOG)
        if wait_ready(HOST_SOCKET, lambda: proc.alive(pid), 90):
            return
        if proc.alive(pid):
            break  # alive but not answering in 90 s: another start would not help
    raise OrchError(
        f"the host's Docker Engine did not start. Last lines of {HOST_LOG}:\n"
        f"{proc.log_excerpt(HOST_LOG)}",
        fix="fix what the log says, then start it (systemctl start docker, or "
        "dockerd &) and run `orch lab up` again",
    )


def clear_stale_pidfiles(docker_pidfile: Path, exec_root: Path) -> list[Path]:
    """Remove the host engine's pid files that do not name its own live processes.

    dockerd refuses to start over a live pid in its pid file. After a restart that
    may be any process that got the pid again (/run is not a tmpfs everywhere).
    """
    removed = []
    if proc.clear_stale_pidfile(docker_pidfile, lambda argv: bool(argv) and os.path.basename(argv[0]) == "dockerd"):
        removed.append(docker_pidfile)
    return removed + clear_stale_containerd_pidfile(exec_root)


def clear_stale_containerd_pidfile(exec_root: Path) -> list[Path]:
    """dockerd adopts the pid in <exec-root>/containerd/containerd.pid as "containerd
    is still running" whenever that pid is alive; an unrelated process never answers
    and dockerd exits with "timeout waiting for containerd to start". Keep the file
    only while it names the containerd started with this exec root's config."""
    pidfile = exec_root / "containerd" / "containerd.pid"
    toml = os.path.realpath(exec_root / "containerd" / "containerd.toml")

    def owner(argv: tuple[str, ...]) -> bool:
        return any(os.path.realpath(a) == toml for a in argv if a.endswith(".toml"))

    return [pidfile] if proc.clear_stale_pidfile(pidfile, owner) else []


def wait_ready(sock: Path, pid_alive, timeout: float = 60.0) -> bool:
    """Wait for an engine's socket to answer, giving up early if its process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(sock, 1.0):
            return True
        if not pid_alive():
            return False
        time.sleep(0.2)
    return False


def socket_path_ok(sock: Path) -> bool:
    # AF_UNIX paths are limited to 107 bytes
    return len(os.fsencode(str(sock))) < 108
