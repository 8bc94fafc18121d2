"""The node's ingress: one HAProxy per node in front of the published HTTP ports of
ingress-marked services, so replicas can be swapped without a refused connection.

Why: a published host port belongs to one container, so a new container cannot take
traffic before the old one has left. With an ingress the port belongs to HAProxy;
containers of such a service publish nothing, and HAProxy forwards to them by address.

Addresses. A container of an ingress service is created WITHOUT the service's host port
(the controller leaves `published` out of its ContainerSpec; the ingress owns that port
on the node). HAProxy runs in the node's network namespace, where the container's IP on
its Docker network (by default the project network, `<project>_default`) is reachable
through the network's bridge; `container_address()` looks that IP up by container name.
A backend may give `address` instead (e.g. 127.0.0.1 for a host-network container).

Process. One HAProxy per node (Debian's `haproxy` package, >= 2.4 for dynamic servers;
Debian 12 ships 2.6), master-worker mode, started detached (its own session, daemon mode,
stdio on a log file), so it outlives the agent process that started it and the SSH
channel; a later agent finds it again by its pid file (the master's pid, checked against
/proc/PID/cmdline) and its sockets. Files under Context.data_dir()/ingress/ (per engine:
lab nodes share one filesystem): haproxy.cfg (rendered from agent/templates/haproxy.cfg.j2
with Jinja2), state.json (what the agent wants: services and servers, the source of the
config), haproxy.pid, server-state (HAProxy's server states across reloads), haproxy.log
(startup messages), lock. The master CLI socket and the runtime API socket (admin level,
`expose-fd listeners`) live in a short directory, /run/orch-ingress-<hash of data dir>/
(or /tmp/...), because a data dir path plus a socket name can pass the 97 bytes HAProxy
allows a Unix socket path (it binds <path>.<pid>.tmp first).

Hitless changes.
  - Servers (a service's containers) change through the runtime API only (HAProxy
    dynamic servers): `add server` (comes up in maintenance), `enable health`, `set server
    state drain` + `set server health down` (health checks run, no traffic), and once the
    server passed `rise` HTTP checks on the health path, `set server state ready`. So a
    new container takes traffic only after HAProxy has seen it healthy. Removing one:
    `set server state drain` (no new requests), wait until its current sessions (and any
    old worker still finishing requests after a reload) reach 0 or a timeout, `set server
    state maint`, then `del server`.
  - Frontends and backends (a new service, another port or health check) need a reload:
    the config is checked (`haproxy -c`), the servers' states are saved (`show servers
    state` to the server-state file, loaded back with load-server-state-from-file), and
    the master is told `reload`; the new worker takes the listening sockets over from the
    old one (expose-fd listeners), so no connection is refused, and the old worker ends
    its requests gracefully (hard-stop-after bounds it). The agent waits for the new
    worker to answer.
  - The config file always mirrors the runtime, so a reload or a restart (node reboot,
    then `ingress_start` or any `ingress_sync`) gives the same backends back.
  With HAProxy older than 2.4 (no dynamic servers) every change is a seamless reload.

Operations (registered in agent.operations.OPERATIONS):
  ingress_sync    {project, env?, service, port: {published, target, protocol: http,
                  host_ip?}, health: {path, interval?, timeout?, rise?, fall?, host?},
                  backends: [{name, container, address?}], network?, timeout?,
                  drain_timeout?} -> converge the service's frontend/backend to exactly
                  these servers and wait until every one is UP in HAProxy's health checks
                  (error kind "unhealthy" after `timeout` seconds).
  ingress_drain   {project, env?, service, server, timeout?} -> drain, then maintenance:
                  {sessions, remaining, drained, seconds, state: "maint"}; the caller may
                  then stop the container.
  ingress_remove  {project, env?, service} -> the service's frontend and backend are gone (the
                  port is free again); HAProxy stops when no service is left.
  sync, drain and remove refuse (conflict) a frontend made for another environment than
  `env` ("" when absent), see agent.owner.
  ingress_status  {} -> {installed, version, running, pid, worker_pid, frontends: [...],
                  problems, ok} for `orch ps` and `orch nodes check`.
  ingress_start   {} -> start HAProxy from the saved state if it is not running (after
                  a node reboot); the status.
Error kinds: bad_request, not_found (no haproxy binary, no such service/server or
container), conflict (port taken), unhealthy, exited (container not running), cancelled,
and "ingress" (HAProxy refused a config, did not start or reload, or its socket failed).

Python 3.9 compatible; stdlib, the docker SDK (through agent.engine) and Jinja2 (bundled,
pure Python). Never runs a shell: HAProxy is started with a fixed argv, and every value in
the config or a runtime command was validated first (names, ports, IPv4 addresses, paths).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from agent.wire import labels as L
from agent.wire.ingress import (
    Health,
    Server,
    ServiceIngress,
    SyncRequest,
    parse_drain,
    parse_remove,
    parse_sync,
    service_key,
)
from agent.wire.protocol import (
    CANCELLED,
    CONFLICT,
    ENGINE,
    EXITED,
    NOT_FOUND,
    UNHEALTHY,
    AgentError,
    check_keys,
    check_name,
)

INGRESS = "ingress"  # error kind: HAProxy itself failed (config refused, start/reload, socket)
FAST_CHECK_MS = 200  # health checks of a server that is DOWN or changing state (server_options)
MIN_DYNAMIC = (2, 4)  # `add server` / `del server` on the runtime API
STATE_VERSION = 1
PROCESS_TIMEOUT = 20.0  # start, reload, stop
LOCK_TIMEOUT = 300.0
POLL = 0.1
NOTE_EVERY = 2.0
OK_CHECKS = ("L7OK", "L6OK", "L4OK")
LOG_MAX = 256 * 1024
BINARY_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/sbin")

# Admin-state bits of `show servers state` (srv_admin_state).
ADMF_MAINT = 0x01 | 0x02 | 0x04 | 0x20 | 0x40  # forced, inherited, config, resolution, hostname
ADMF_DRAIN = 0x08 | 0x10  # forced, inherited

# Global/defaults settings of the rendered config (seconds unless _ms).
SETTINGS = {
    "hard_stop_after_s": 30,
    "retries": 3,
    "timeout_connect_ms": 2000,
    "timeout_client_s": 60,
    "timeout_server_s": 60,
    "timeout_http_request_s": 10,
    "timeout_keep_alive_s": 10,
    "timeout_queue_s": 10,
}

# Runtime API arguments are names and addresses; ';' would chain commands, '\n' end one.
_CMD_FORBIDDEN = re.compile(r"[;\n\r\x00]")


def _ms(seconds: float) -> int:
    return max(1, int(round(seconds * 1000)))


def server_options(health: Health) -> str:
    """The health-check part of a server line, the same in the config and `add server`.

    `interval` paces the checks of a server that is UP. One that is DOWN (a new
    container waiting for its `rise` passes) or changing state is checked every
    FAST_CHECK_MS at most: a new container takes traffic ~2 intervals sooner
    (about 1.6 s of every batch of a rolling update with the defaults), and a failing
    one is taken out sooner after its first failed check."""
    inter = _ms(health.interval)
    fast = min(inter, FAST_CHECK_MS)
    return "check inter %dms fastinter %dms downinter %dms rise %d fall %d" % (
        inter, fast, fast, health.rise, health.fall)


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Paths:
    dir: str  # Context.data_dir()/ingress
    run_dir: str  # short directory for the Unix sockets

    @property
    def config(self) -> str:
        return os.path.join(self.dir, "haproxy.cfg")

    @property
    def state(self) -> str:
        return os.path.join(self.dir, "state.json")

    @property
    def pid(self) -> str:
        return os.path.join(self.dir, "haproxy.pid")

    @property
    def server_state(self) -> str:
        return os.path.join(self.dir, "server-state")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "haproxy.log")

    @property
    def lock(self) -> str:
        return os.path.join(self.dir, "lock")

    @property
    def master_socket(self) -> str:
        return os.path.join(self.run_dir, "master.sock")

    @property
    def admin_socket(self) -> str:
        return os.path.join(self.run_dir, "admin.sock")

    def to_dict(self) -> Dict[str, str]:
        return {"dir": self.dir, "config": self.config, "pid": self.pid, "master_socket": self.master_socket,
                "admin_socket": self.admin_socket, "state": self.state, "log": self.log}


def paths_for(data_dir: str, run_base: Optional[str] = None) -> Paths:
    if run_base is None:
        run_base = "/run" if os.access("/run", os.W_OK) else "/tmp"
    digest = hashlib.sha256(os.path.abspath(data_dir).encode("utf-8")).hexdigest()[:16]
    return Paths(dir=os.path.join(data_dir, "ingress"), run_dir=os.path.join(run_base, "orch-ingress-" + digest))


def ensure_dirs(paths: Paths) -> None:
    os.makedirs(paths.dir, mode=0o700, exist_ok=True)
    try:
        os.mkdir(paths.run_dir, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(paths.run_dir)
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise AgentError(INGRESS, "%s is not a directory owned by this user; refusing to put the ingress "
                                  "sockets there" % paths.run_dir, {"fix": "remove it"})


def _write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = "%s.tmp-%d" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def load_state(paths: Paths) -> Dict[str, ServiceIngress]:
    try:
        with open(paths.state, "rb") as fh:
            raw = json.loads(fh.read().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AgentError(INGRESS, "cannot read %s: %s" % (paths.state, exc),
                         {"fix": "remove it and sync every ingress service again"})
    services = {}
    for d in (raw.get("services") or {}).values():
        svc = ServiceIngress.from_dict(d)
        services[svc.key] = svc
    return services


def save_state(paths: Paths, services: Dict[str, ServiceIngress]) -> None:
    body = {"version": STATE_VERSION, "services": {k: services[k].to_dict() for k in sorted(services)}}
    _write_atomic(paths.state, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8"))


@contextmanager
def ingress_lock(paths: Paths, cancelled: Any = None, timeout: float = LOCK_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
                 ) -> Iterator[None]:
    """One ingress change at a time on this node (agents of several controllers may run)."""
    ensure_dirs(paths)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = clock() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if cancelled is not None and cancelled.is_set():
                raise AgentError(CANCELLED, "cancelled by the controller")
            if clock() > deadline:
                raise AgentError(INGRESS, "another ingress change on this node did not finish within %.0fs"
                                 % timeout)
            sleep(POLL)
        yield
    finally:
        os.close(fd)  # drops the flock


# ----------------------------------------------------------------------------- rendering


def template_text() -> str:
    import pkgutil

    data = pkgutil.get_data("agent", "templates/haproxy.cfg.j2")  # works inside the zipapp too
    if data is None:  # pragma: no cover - the bundle always carries it
        raise AgentError(INGRESS, "the HAProxy template is missing from the agent")
    return data.decode("utf-8")


def render_context(paths: Paths, services: Dict[str, ServiceIngress]) -> Dict[str, Any]:
    out = []
    for key in sorted(services):
        svc = services[key]
        out.append({
            "project": svc.project, "service": svc.service, "env": svc.env,
            "frontend": svc.frontend, "backend": svc.backend,
            "bind": svc.host_ip, "published": svc.published, "target": svc.target,
            "health": {"path": svc.health.path, "host": svc.health.host, "timeout_ms": _ms(svc.health.timeout)},
            "server_options": server_options(svc.health),
            # Only servers known good take traffic on a fresh start; the others come back
            # from the server-state file on a reload, or are warmed up again by a sync.
            "servers": [{"name": s.name, "address": s.address, "disabled": s.state != "ready"}
                        for s in svc.servers if s.address],
        })
    return {"paths": {"pid": paths.pid, "admin_socket": paths.admin_socket, "server_state": paths.server_state,
                      "state": paths.state},
            "settings": dict(SETTINGS), "services": out}


def render_config(paths: Paths, services: Dict[str, ServiceIngress]) -> str:
    """The whole haproxy.cfg for these services (Jinja2, strict: a missing value is a bug)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(template_text()).render(**render_context(paths, services))


# ----------------------------------------------------------------------------- runtime API: commands as data


def _ref(backend: str, server: str) -> str:
    return "%s/%s" % (backend, server)


def cmd_add_server(backend: str, server: Server, port: int, health: Health) -> str:
    # A dynamic server starts in maintenance with its checks off.
    return "add server %s %s:%d %s" % (_ref(backend, server.name), server.address, port, server_options(health))


def cmds_warm(backend: str, server: str) -> List[str]:
    """Health checks on, no traffic, health forced down: UP only after `rise` passed checks."""
    ref = _ref(backend, server)
    return ["enable health %s" % ref, "set server %s state drain" % ref, "set server %s health down" % ref]


def cmd_state(backend: str, server: str, state: str) -> str:
    if state not in ("ready", "drain", "maint"):
        raise ValueError(state)
    return "set server %s state %s" % (_ref(backend, server), state)


def cmd_del_server(backend: str, server: str) -> str:
    return "del server %s" % _ref(backend, server)


@dataclass(frozen=True)
class RuntimeServer:
    name: str
    address: str
    port: int
    admin: int  # srv_admin_state bits

    @property
    def maint(self) -> bool:
        return bool(self.admin & ADMF_MAINT)

    @property
    def drain(self) -> bool:
        return bool(self.admin & ADMF_DRAIN) and not self.maint

    @property
    def ready(self) -> bool:
        return not (self.admin & (ADMF_MAINT | ADMF_DRAIN))


@dataclass(frozen=True)
class ServerPlan:
    """How to turn a backend's servers at run time into the desired ones."""

    remove: Tuple[str, ...] = ()  # drained (if in rotation), maintenance, deleted
    add: Tuple[Server, ...] = ()  # added, warmed up
    rewarm: Tuple[str, ...] = ()  # there, not in rotation (drain/maint): warmed up again
    keep: Tuple[str, ...] = ()  # there and in rotation

    def to_dict(self) -> Dict[str, List[str]]:
        return {"remove": list(self.remove), "add": [s.name for s in self.add], "rewarm": list(self.rewarm),
                "keep": list(self.keep)}


def plan_servers(runtime: Dict[str, RuntimeServer], desired: List[Server], port: int) -> ServerPlan:
    remove, add, rewarm, keep = [], [], [], []
    wanted = {s.name: s for s in desired}
    for name in sorted(runtime):
        r = runtime[name]
        d = wanted.get(name)
        if d is None or (r.address, r.port) != (d.address, port):
            remove.append(name)  # gone, or its container has another address now
    for s in desired:
        r = runtime.get(s.name)
        if r is None or s.name in remove:
            add.append(s)
        elif r.ready:
            keep.append(s.name)
        else:
            rewarm.append(s.name)
    return ServerPlan(tuple(remove), tuple(add), tuple(rewarm), tuple(keep))


# ----------------------------------------------------------------------------- parsing HAProxy output


def parse_version(text: str) -> Tuple[str, Tuple[int, int, int]]:
    """`haproxy -v` -> ("2.6.12-1+deb12u4", (2, 6, 12))."""
    m = re.search(r"(?:HA-?Proxy) version (\S+)", text)
    if not m:
        raise AgentError(INGRESS, "cannot read the HAProxy version from %r" % text[:200])
    full = m.group(1)
    nums = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", full)
    if not nums:
        raise AgentError(INGRESS, "cannot read the HAProxy version from %r" % full)
    return full, (int(nums.group(1)), int(nums.group(2)), int(nums.group(3) or 0))


def parse_stat(text: str) -> List[Dict[str, str]]:
    """`show stat` CSV -> rows keyed by the header's field names."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("# "):
        raise AgentError(INGRESS, "unexpected answer to 'show stat': %r" % text[:200])
    header = lines[0][2:].split(",")
    return [dict(zip(header, ln.split(","))) for ln in lines[1:]]


def parse_servers_state(text: str) -> Optional[Dict[str, RuntimeServer]]:
    """`show servers state BACKEND` -> {server name: RuntimeServer}; None if no such backend."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if any("Can't find backend" in ln for ln in lines):
        return None
    header: List[str] = []
    out = {}
    for ln in lines:
        if ln.startswith("#"):
            header = ln[1:].split()
            continue
        fields = ln.split()
        if not header or len(fields) < len(header) - 1:  # the version line
            continue
        row = dict(zip(header, fields))
        try:
            out[row["srv_name"]] = RuntimeServer(row["srv_name"], row["srv_addr"], int(row["srv_port"]),
                                                 int(row["srv_admin_state"]))
        except (KeyError, ValueError):
            raise AgentError(INGRESS, "unexpected line in 'show servers state': %r" % ln)
    if not header:
        raise AgentError(INGRESS, "unexpected answer to 'show servers state': %r" % text[:200])
    return out


def parse_show_proc(text: str) -> Dict[str, Any]:
    """The master CLI's `show proc` -> {master, reloads, failed, workers: [pid], old_workers: [pid]}."""
    out: Dict[str, Any] = {"master": None, "reloads": 0, "failed": 0, "workers": [], "old_workers": []}
    section = "master"
    for ln in text.splitlines():
        s = ln.strip()
        if not s:
            continue
        if s.startswith("#"):
            low = s.lower()
            section = ("old_workers" if "old worker" in low else "workers" if "worker" in low
                       else "programs" if "program" in low else section)
            continue
        fields = s.split()
        if not fields[0].isdigit():
            continue
        pid = int(fields[0])
        if len(fields) > 1 and fields[1] == "master":
            out["master"] = pid
            if len(fields) > 2 and fields[2].isdigit():
                out["reloads"] = int(fields[2])
            m = re.search(r"failed:\s*(\d+)", s)
            if m:
                out["failed"] = int(m.group(1))
        elif section in ("workers", "old_workers") and len(fields) > 1 and fields[1] == "worker":
            out[section].append(pid)
    return out


def parse_info(text: str) -> Dict[str, str]:
    out = {}
    for ln in text.splitlines():
        k, sep, v = ln.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def check_passed(row: Dict[str, str]) -> bool:
    return (row.get("check_status") or "").rstrip() in OK_CHECKS


def serving(row: Dict[str, str]) -> bool:
    """UP and fully so (not 'UP 1/2': going down)."""
    return row.get("status") == "UP"


def warmed(row: Dict[str, str]) -> bool:
    """A server warmed up in drain state: its checks passed `rise` times (status exactly DRAIN)."""
    return row.get("status") == "DRAIN" and check_passed(row)


# ----------------------------------------------------------------------------- the process


def unix_command(path: str, command: str, timeout: float = 10.0) -> str:
    """Send one command to a HAProxy CLI socket (runtime API or master) and read the answer."""
    if _CMD_FORBIDDEN.search(command):
        raise ValueError("refusing a CLI command with ';' or a line break: %r" % command)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(command.encode("ascii") + b"\n")
        sock.shutdown(socket.SHUT_WR)  # non-interactive: answer, then close
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    return b"".join(chunks).decode("utf-8", "replace")


def find_binary() -> Optional[str]:
    found = shutil.which("haproxy")
    if found:
        return found
    for d in BINARY_DIRS:
        p = os.path.join(d, "haproxy")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


_versions: Dict[str, Tuple[str, Tuple[int, int, int]]] = {}


class HAProxy:
    """The node's HAProxy: found by its pid file, driven through its two sockets."""

    def __init__(self, paths: Paths, binary: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.paths = paths
        self._binary = binary
        self.clock = clock
        self.sleep = sleep

    # ------------------------------------------------------------ facts

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_binary()
        if not self._binary:
            raise AgentError(NOT_FOUND, "HAProxy is not installed on this node (no haproxy in PATH or /usr/sbin)",
                             {"fix": "install it: apt-get install -y haproxy (Debian/Ubuntu), dnf install haproxy"})
        return self._binary

    def installed(self) -> bool:
        try:
            return bool(self.binary)
        except AgentError:
            return False

    def version(self) -> Tuple[str, Tuple[int, int, int]]:
        binary = self.binary
        if binary not in _versions:
            out = subprocess.run([binary, "-v"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=30, env=_env())
            _versions[binary] = parse_version(out.stdout.decode("utf-8", "replace"))
        return _versions[binary]

    def dynamic(self) -> bool:
        return self.version()[1][:2] >= MIN_DYNAMIC

    def pid(self) -> Optional[int]:
        """The running master's pid, if the pid file names a live HAProxy on our config."""
        try:
            with open(self.paths.pid) as fh:
                pid = int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            return None
        if not argv or b"haproxy" not in os.path.basename(argv[0]) or self.paths.config.encode() not in argv:
            return None
        try:  # a zombie (exited, not reaped yet) is not running
            with open("/proc/%d/stat" % pid, "rb") as fh:
                if fh.read().rsplit(b")", 1)[-1].split()[0] in (b"Z", b"X"):
                    return None
        except (OSError, IndexError):
            return None
        return pid

    # ------------------------------------------------------------ sockets

    def runtime(self, command: str, timeout: float = 10.0) -> str:
        try:
            return unix_command(self.paths.admin_socket, command, timeout)
        except OSError as exc:
            raise AgentError(INGRESS, "HAProxy's runtime API (%s) did not answer %r: %s"
                             % (self.paths.admin_socket, command.split(" ")[0:2], exc))

    def master(self, command: str, timeout: float = 10.0) -> str:
        try:
            return unix_command(self.paths.master_socket, command, timeout)
        except OSError as exc:
            raise AgentError(INGRESS, "HAProxy's master socket (%s) did not answer %r: %s"
                             % (self.paths.master_socket, command, exc))

    def do(self, command: str, expect: str = "") -> str:
        """A runtime command that answers nothing (set/enable) or `expect` when it worked."""
        out = self.runtime(command).strip()
        if (expect and expect not in out) or (not expect and out):
            raise AgentError(INGRESS, "HAProxy refused %r: %s" % (command, out or "(no answer)"),
                             {"command": command, "answer": out})
        return out

    def stat(self) -> List[Dict[str, str]]:
        return parse_stat(self.runtime("show stat"))

    def servers_state(self, backend: str) -> Optional[Dict[str, RuntimeServer]]:
        return parse_servers_state(self.runtime("show servers state %s" % backend))

    def info(self) -> Dict[str, str]:
        return parse_info(self.runtime("show info"))

    def proc(self) -> Dict[str, Any]:
        return parse_show_proc(self.master("show proc"))

    # ------------------------------------------------------------ config

    def write_config(self, text: str) -> Optional[str]:
        """Check and install a new config; returns the previous text (to put back on failure)."""
        ensure_dirs(self.paths)
        new = self.paths.config + ".new"
        _write_atomic(new, text.encode("utf-8"))
        out = subprocess.run([self.binary, "-c", "-q", "-f", new], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, env=_env(),
                             cwd=self.paths.dir)
        if out.returncode != 0:
            os.unlink(new)
            raise AgentError(INGRESS, "HAProxy refused the rendered configuration: %s"
                             % out.stdout.decode("utf-8", "replace").strip()[-2000:])
        try:
            with open(self.paths.config, "r", encoding="utf-8") as fh:
                previous: Optional[str] = fh.read()
        except OSError:
            previous = None
        os.replace(new, self.paths.config)
        return previous

    def save_server_state(self) -> None:
        """Servers' admin and health states, read back by the next worker (reload)."""
        text = self.runtime("show servers state")
        if text.strip():
            _write_atomic(self.paths.server_state, text.encode("utf-8"))

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = PROCESS_TIMEOUT) -> int:
        """Start detached: own session, daemon mode, stdio on the log file; returns the master pid."""
        ensure_dirs(self.paths)
        for stale in (self.paths.server_state, self.paths.pid):
            try:
                os.unlink(stale)  # states of a previous run are not this config's
            except FileNotFoundError:
                pass
        try:
            if os.path.getsize(self.paths.log) > LOG_MAX:
                os.unlink(self.paths.log)
        except OSError:
            pass
        argv = [self.binary, "-W", "-D", "-S", self.paths.master_socket + ",mode,600",
                "-p", self.paths.pid, "-f", self.paths.config]
        log_fd = os.open(self.paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(log_fd, ("--- %s start: %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                   " ".join(argv))).encode())
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, close_fds=True,
                                    start_new_session=True, cwd=self.paths.dir, env=_env())
        finally:
            os.close(log_fd)
        try:
            code = proc.wait(timeout)  # daemon mode: returns once the master is running
        except subprocess.TimeoutExpired:
            proc.kill()
            code = -1
        if code != 0:
            raise AgentError(INGRESS, "HAProxy did not start (exit %s): %s" % (code, self.log_tail()),
                             {"log": self.paths.log})
        deadline = self.clock() + timeout
        while True:
            pid = self.pid()
            if pid:
                try:
                    if self.info().get("Pid"):
                        return pid
                except AgentError:
                    pass
            if self.clock() > deadline:
                raise AgentError(INGRESS, "HAProxy started but does not answer on %s: %s"
                                 % (self.paths.admin_socket, self.log_tail()))
            self.sleep(POLL)

    def reload(self, timeout: float = PROCESS_TIMEOUT) -> int:
        """Seamless reload through the master; returns the new worker's pid once it answers."""
        before = self.proc()
        old = set(before["workers"]) | set(before["old_workers"])
        self.master("reload")
        deadline = self.clock() + timeout
        while True:
            self.sleep(POLL)
            try:
                now = self.proc()
                fresh = [p for p in now["workers"] if p not in old]
                if now["failed"] > before["failed"]:
                    raise AgentError(INGRESS, "HAProxy could not load the new configuration (reload failed; "
                                              "the previous worker keeps serving)")
                if fresh and self.info().get("Pid") == str(fresh[0]):
                    return fresh[0]
            except AgentError as err:
                if "reload failed" in err.message:
                    raise
            if self.clock() > deadline:
                raise AgentError(INGRESS, "HAProxy's new worker did not come up within %.0fs after a reload"
                                 % timeout)

    def stop(self, timeout: float = PROCESS_TIMEOUT) -> bool:
        """Soft stop (workers finish their requests), then a hard one after `timeout`."""
        pid = self.pid()
        if pid is None:
            return False
        for sig, wait in ((signal.SIGUSR1, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = self.clock() + wait
            while self.pid() == pid and self.clock() < deadline:
                self.sleep(POLL)
            if self.pid() != pid:
                break
        for path in (self.paths.pid, self.paths.server_state, self.paths.master_socket, self.paths.admin_socket):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.paths.run_dir)
        except OSError:
            pass
        return True

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.paths.log, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - 8192))
                text = fh.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])


def _env() -> Dict[str, str]:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


# ----------------------------------------------------------------------------- containers


def inspect_container(engine: Any, ref: str) -> Optional[Dict[str, Any]]:
    """The Engine API's raw inspect of a container, or None if there is none by that name."""
    fn = getattr(engine, "inspect_container", None)  # a test double may provide it
    if fn is None:
        api = getattr(engine, "api", None)
        if api is None:
            raise AgentError(ENGINE, "this engine cannot inspect containers")
        fn = api.inspect_container
    try:
        return fn(ref)
    except Exception as exc:
        if type(exc).__name__ == "NotFound":
            return None
        if isinstance(exc, AgentError):
            raise
        raise AgentError(ENGINE, "inspect container %s: %s" % (ref, exc))


def container_address(engine: Any, container: str, network: str = "", project: str = "") -> Dict[str, Any]:
    """A container's IPv4 address on its Docker network, by container name.

    network: the engine's network name; by default the project's own network
    (`<project>_default` first, then any other `<project>_*`), else the only one it has.
    Returns {"address", "network", "published": [host ports it publishes], "labels"}.
    """
    attrs = inspect_container(engine, container)
    if attrs is None:
        raise AgentError(NOT_FOUND, "no container %s on this node" % container, {"container": container})
    state = (attrs.get("State") or {}).get("Status", "")
    if state != "running":
        raise AgentError(EXITED, "container %s is not running (state %s)" % (container, state or "unknown"),
                         {"container": container})
    settings = attrs.get("NetworkSettings") or {}
    nets = {k: (v or {}).get("IPAddress") or "" for k, v in (settings.get("Networks") or {}).items()}
    published = sorted(set(int(b["HostPort"]) for bs in (settings.get("Ports") or {}).values() for b in (bs or [])
                           if b.get("HostPort")))
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    if network:
        chosen = network
    else:
        own = sorted(n for n in nets if project and n.startswith(project + "_") and nets[n])
        preferred = L.network_name(project, "default") if project else ""
        with_ip = sorted(n for n in nets if nets[n])
        chosen = preferred if preferred in own else (own[0] if own else (with_ip[0] if len(with_ip) == 1 else ""))
        if not chosen:
            raise AgentError(NOT_FOUND, "container %s is on %s; say which network the ingress should use"
                             % (container, ", ".join(sorted(nets)) or "no network"),
                             {"container": container, "networks": sorted(nets),
                              "fix": "pass 'network', or 'address' (127.0.0.1 for host networking)"})
    if not nets.get(chosen):
        raise AgentError(NOT_FOUND, "container %s has no IPv4 address on network %s" % (container, chosen),
                         {"container": container, "networks": sorted(nets)})
    return {"address": nets[chosen], "network": chosen, "published": published, "labels": labels}


# ----------------------------------------------------------------------------- operations


def _paths(ctx: Any) -> Paths:
    return paths_for(ctx.data_dir())


def _hap(ctx: Any, paths: Paths) -> HAProxy:
    return HAProxy(paths, clock=getattr(ctx, "clock", time.monotonic), sleep=getattr(ctx, "sleep", time.sleep))


def _resolve(ctx: Any, req: SyncRequest) -> List[Server]:
    svc = req.service
    out = []
    for b in req.backends:
        if b.address:
            out.append(Server(b.name, b.container, b.address))
            continue
        found = container_address(ctx.engine, b.container, req.network, svc.project)
        owner = found["labels"].get(L.PROJECT)
        if owner != svc.project:
            raise AgentError(CONFLICT, "container %s is not a container orch manages for project %s"
                             % (b.container, svc.project), {"container": b.container})
        if svc.published in found["published"]:
            raise AgentError(
                CONFLICT, "container %s publishes host port %d itself, which the ingress must own"
                % (b.container, svc.published),
                {"container": b.container, "fix": "create the containers of an ingress service without "
                                                  "publishing that port (drop 'published' from their spec)"})
        out.append(Server(b.name, b.container, found["address"]))
    return out


def _port_free(host_ip: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host_ip, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def _check_port(services: Dict[str, ServiceIngress], svc: ServiceIngress, running: bool) -> None:
    for other in services.values():
        if other.key != svc.key and other.published == svc.published:
            raise AgentError(CONFLICT, "port %d on this node already belongs to the ingress of %s"
                             % (svc.published, other.key), {"port": svc.published, "service": other.key})
    old = services.get(svc.key)
    ours = running and old is not None and old.published == svc.published
    if not ours and not _port_free(svc.host_ip, svc.published):
        raise AgentError(CONFLICT, "port %d is in use on this node" % svc.published,
                         {"port": svc.published,
                          "fix": "stop what listens there (a container still publishing it?) or pick another port"})


def _apply_config(ctx: Any, hap: HAProxy, services: Dict[str, ServiceIngress]) -> str:
    """Render, check, install; then reload the running HAProxy or start one. 'reloaded'|'started'."""
    previous = hap.write_config(render_config(hap.paths, services))
    try:
        if hap.pid():
            hap.save_server_state()
            hap.reload()
            ctx.emit("ingress.reload", config=hap.paths.config)
            return "reloaded"
        hap.start()
        ctx.emit("ingress.start", config=hap.paths.config, pid=hap.pid())
        return "started"
    except AgentError:
        if previous is not None:  # leave the file as what runs
            _write_atomic(hap.paths.config, previous.encode("utf-8"))
        raise


def _mirror(hap: HAProxy, services: Dict[str, ServiceIngress]) -> None:
    """Make state.json and haproxy.cfg say what the runtime now has (no reload)."""
    save_state(hap.paths, services)
    hap.write_config(render_config(hap.paths, services))


def _server_row(rows: List[Dict[str, str]], backend: str, server: str) -> Dict[str, str]:
    for r in rows:
        if r.get("pxname") == backend and r.get("svname") == server:
            return r
    return {}


def _drain(ctx: Any, hap: HAProxy, backend: str, server: str, timeout: float) -> Dict[str, Any]:
    """drain -> sessions (and old workers) at 0, or timeout -> maint."""
    start = ctx.clock()
    hap.do(cmd_state(backend, server, "drain"))
    ctx.emit("ingress.server", backend=backend, server=server, action="drain")
    first: Optional[int] = None
    left = 0
    old_workers: List[int] = []
    drained = False
    zero_since: Optional[float] = None
    last_note = start
    while True:
        row = _server_row(hap.stat(), backend, server)
        left = int(row.get("scur") or 0) + int(row.get("qcur") or 0)
        if first is None:
            first = left
        now = ctx.clock()
        if left == 0:
            # An old worker (of a reload moments ago) may still send it requests.
            try:
                old_workers = hap.proc()["old_workers"]
            except AgentError:
                old_workers = []
            if not old_workers:
                if zero_since is None:
                    zero_since = now
                if now - zero_since >= 2 * POLL:  # twice in a row, so nothing was in flight to it
                    drained = True
                    break
            else:
                zero_since = None
        else:
            zero_since = None
        if now - start >= timeout:
            break
        if now - last_note >= NOTE_EVERY:
            last_note = now
            ctx.emit("ingress.draining", backend=backend, server=server, sessions=left,
                     seconds=round(now - start, 1))
        ctx.check_cancelled()
        ctx.sleep(POLL)
    hap.do(cmd_state(backend, server, "maint"))
    ctx.emit("ingress.server", backend=backend, server=server, action="maint", sessions=left)
    return {"sessions": first or 0, "remaining": left, "old_workers": len(old_workers), "drained": drained,
            "seconds": round(ctx.clock() - start, 2)}


def _delete(ctx: Any, hap: HAProxy, backend: str, server: str, timeout: float = 5.0) -> bool:
    deadline = ctx.clock() + timeout
    while True:
        out = hap.runtime(cmd_del_server(backend, server)).strip()
        if "deleted" in out.lower() or "no such server" in out.lower():
            ctx.emit("ingress.server", backend=backend, server=server, action="delete")
            return True
        if ctx.clock() > deadline:  # still has connections: stays in maintenance, retried next sync
            ctx.emit("ingress.server", backend=backend, server=server, action="delete-later", answer=out)
            return False
        ctx.sleep(0.25)


def _wait_up(ctx: Any, hap: HAProxy, svc: ServiceIngress, warming: List[str], keep: List[str],
             timeout: float) -> None:
    """Until each warming server passed its checks (then: ready) and each kept one is UP."""
    start = ctx.clock()
    last_note = start
    pending = list(warming)
    unsure = list(keep)
    while pending or unsure:
        rows = hap.stat()
        for name in list(pending):
            if warmed(_server_row(rows, svc.backend, name)):
                hap.do(cmd_state(svc.backend, name, "ready"))
                pending.remove(name)
                ctx.emit("ingress.server", backend=svc.backend, server=name, action="ready",
                         seconds=round(ctx.clock() - start, 1))
        for name in list(unsure):
            row = _server_row(rows, svc.backend, name)
            if serving(row) and (check_passed(row) or not row.get("check_status")):
                unsure.remove(name)
        if not pending and not unsure:
            return
        now = ctx.clock()
        if now - start > timeout:
            bad = []
            for name in pending + unsure:
                row = _server_row(rows, svc.backend, name)
                srv = svc.server(name)
                bad.append({"server": name, "container": srv.container if srv else "",
                            "address": srv.address if srv else "", "status": row.get("status", "?"),
                            "check": row.get("check_status", ""), "check_desc": row.get("check_desc", "")})
            raise AgentError(
                UNHEALTHY,
                "ingress of %s: %s not UP in HAProxy's health checks (GET %s on port %d) within %.0fs: %s"
                % (svc.key, ", ".join(b["server"] for b in bad), svc.health.path, svc.target, timeout,
                   "; ".join(("%s %s %s %s" % (b["server"], b["status"], b["check"], b["check_desc"])).strip()
                             for b in bad)),
                {"servers": bad, "fix": "make GET %s answer 2xx/3xx on the container's port %d, or fix the "
                                        "ingress health path" % (svc.health.path, svc.target)})
        if now - last_note >= NOTE_EVERY:
            last_note = now
            ctx.emit("ingress.waiting", service=svc.key, servers=sorted(pending + unsure),
                     seconds=round(now - start))
        ctx.check_cancelled()
        ctx.sleep(POLL)


def op_ingress_sync(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Converge one service's frontend and backend to exactly the given servers."""
    req = parse_sync(args)
    started_at = ctx.clock()
    desired = _resolve(ctx, req)
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        dynamic = hap.dynamic()
        services = load_state(paths)
        old = services.get(req.service.key)
        if old is not None and old.env and old.env != req.service.env:
            # the frontend of the same project and service for another environment (agent.owner)
            raise AgentError(CONFLICT, "the ingress of %s on port %d belongs to environment %s, not %s"
                             % (old.key, old.published, old.env, req.service.env or "(none)"),
                             {"fix": "remove %s's deployment of %s from this node first (orch down --env %s)"
                                     % (old.env, old.project, old.env)})
        svc = req.service.with_servers(desired)
        running = hap.pid() is not None
        runtime = hap.servers_state(svc.backend) if running and old is not None else None
        process = ""
        if not running or old is None or old.shape() != svc.shape() or runtime is None or not dynamic:
            _check_port(services, svc, running)
            if dynamic:
                # Keep the servers that stay as they are (their states come back from the
                # server-state file); the new ones are added and warmed up below. A new
                # target port makes every server a new one.
                same_port = old is not None and old.target == svc.target
                kept = [s for s in (old.servers if old and same_port else ()) if svc.server(s.name) is not None
                        and svc.server(s.name).address == s.address]  # type: ignore[union-attr]
                services[svc.key] = svc.with_servers(kept)
            else:
                services[svc.key] = svc
            process = _apply_config(ctx, hap, services)
            save_state(paths, services)
            runtime = hap.servers_state(svc.backend) or {}
        if dynamic:
            plan = plan_servers(runtime or {}, desired, svc.target)
            pending = []
            for name in plan.remove:
                r = (runtime or {})[name]
                if not r.maint:
                    _drain(ctx, hap, svc.backend, name, req.drain_timeout)
                else:
                    ctx.emit("ingress.server", backend=svc.backend, server=name, action="maint")
                _delete(ctx, hap, svc.backend, name)
            for s in plan.add:
                hap.do(cmd_add_server(svc.backend, s, svc.target, svc.health), expect="New server registered")
                ctx.emit("ingress.server", backend=svc.backend, server=s.name, action="add", address=s.address)
                pending.append(s.name)
            pending += list(plan.rewarm)
            for name in pending:
                for cmd in cmds_warm(svc.backend, name):
                    hap.do(cmd)
            services[svc.key] = svc.with_servers(
                [replace(s, state="warming" if s.name in pending else "ready") for s in desired])
            _mirror(hap, services)
            try:
                _wait_up(ctx, hap, svc, pending, list(plan.keep), req.timeout)
            finally:  # record which warming servers made it (all of them, unless it failed)
                try:
                    rows = hap.stat()
                except AgentError:
                    rows = []
                services[svc.key] = svc.with_servers(
                    [replace(s, state="ready" if s.name not in pending or serving(_server_row(rows, svc.backend, s.name))
                             else "warming") for s in desired])
                _mirror(hap, services)
            changes = plan.to_dict()
        else:
            _wait_up(ctx, hap, svc, [], [s.name for s in desired], req.timeout)
            changes = {"remove": sorted(set(s.name for s in (old.servers if old else ())) - set(
                s.name for s in desired)), "add": [s.name for s in desired], "rewarm": [], "keep": []}
        status = _service_status(services[svc.key], hap.stat())
    status.update({"process": process, "changes": changes, "seconds": round(ctx.clock() - started_at, 2)})
    return status


def op_ingress_drain(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Stop sending new requests to one server, wait for its requests to end, maintenance."""
    project, service, server, timeout = parse_drain(args)
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        services = load_state(paths)
        svc = services.get(service_key(project, service))
        if svc is None:
            raise AgentError(NOT_FOUND, "no ingress for %s on this node" % service_key(project, service))
        if svc.server(server) is None:
            raise AgentError(NOT_FOUND, "the ingress of %s has no server %s (it has: %s)"
                             % (svc.key, server, ", ".join(s.name for s in svc.servers) or "none"))
        if hap.pid() is None:
            raise AgentError(INGRESS, "HAProxy is not running on this node",
                             {"fix": "run ingress_start (or ingress_sync) to bring it back"})
        out = _drain(ctx, hap, svc.backend, server, timeout)
        services[svc.key] = svc.with_servers([replace(s, state="maint") if s.name == server else s
                                              for s in svc.servers])
        _mirror(hap, services)
    out.update({"project": project, "service": service, "server": server, "state": "maint"})
    return out


def op_ingress_remove(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    project, service = parse_remove(args)
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        services = load_state(paths)
        svc = services.pop(service_key(project, service), None)
        if svc is None:
            return {"removed": False, "process": "", "running": hap.pid() is not None}
        process = ""
        if not services:
            process = "stopped" if hap.stop() else ""
            save_state(paths, services)
            try:
                os.unlink(paths.config)
            except FileNotFoundError:
                pass
        else:
            if hap.pid() is not None:
                process = _apply_config(ctx, hap, services)
            else:
                hap.write_config(render_config(paths, services))
            save_state(paths, services)
        ctx.emit("ingress.remove", service=svc.key, port=svc.published)
        return {"removed": True, "port": svc.published, "process": process, "running": hap.pid() is not None}


def _service_status(svc: ServiceIngress, rows: Optional[List[Dict[str, str]]]) -> Dict[str, Any]:
    rows = rows or []
    front = _server_row(rows, svc.frontend, "FRONTEND")
    servers = []
    for s in svc.servers:
        row = _server_row(rows, svc.backend, s.name)
        servers.append({
            "name": s.name, "container": s.container, "address": s.address, "port": svc.target,
            "state": s.state, "status": row.get("status", "absent" if rows else "unknown"),
            "check": row.get("check_status", ""), "check_desc": row.get("check_desc", ""),
            "sessions": int(row.get("scur") or 0), "total": int(row.get("stot") or 0),
        })
    return {
        "project": svc.project, "service": svc.service, "env": svc.env,
        "frontend": svc.frontend, "backend": svc.backend,
        "port": {"published": svc.published, "target": svc.target, "protocol": svc.protocol,
                 "host_ip": svc.host_ip},
        "health": svc.health.to_dict(),
        "status": front.get("status", "absent" if rows else "unknown"),
        "sessions": int(front.get("scur") or 0),
        "servers": servers,
    }


def status(paths: Paths, hap: HAProxy) -> Dict[str, Any]:
    services = load_state(paths)
    out: Dict[str, Any] = {"installed": hap.installed(), "binary": "", "version": "", "dynamic_servers": False,
                           "running": False, "pid": None, "worker_pid": None, "uptime_s": None,
                           "paths": paths.to_dict(), "frontends": [], "problems": []}
    problems: List[str] = out["problems"]
    if out["installed"]:
        out["binary"] = hap.binary
        try:
            out["version"] = hap.version()[0]
            out["dynamic_servers"] = hap.dynamic()
        except (AgentError, OSError, subprocess.SubprocessError) as exc:
            problems.append("cannot run %s -v: %s" % (hap.binary, exc))
    elif services:
        problems.append("HAProxy is not installed, but %d ingress service(s) are configured" % len(services))
    pid = hap.pid()
    rows: Optional[List[Dict[str, str]]] = None
    if pid is not None:
        out["running"], out["pid"] = True, pid
        try:
            info = hap.info()
            out["worker_pid"] = int(info.get("Pid") or 0) or None
            out["uptime_s"] = int(info.get("Uptime_sec") or 0)
            rows = hap.stat()
        except AgentError as err:
            problems.append(err.message)
    elif services:
        problems.append("HAProxy is not running, but %d ingress service(s) are configured (run ingress_start)"
                        % len(services))
    for key in sorted(services):
        st = _service_status(services[key], rows)
        out["frontends"].append(st)
        if rows is None:
            continue
        if st["status"] != "OPEN":
            problems.append("%s: frontend on port %d is %s" % (key, services[key].published, st["status"]))
        for s in st["servers"]:
            if s["state"] == "ready" and s["status"] != "UP":
                problems.append("%s: server %s (%s) is %s %s" % (key, s["name"], s["container"], s["status"],
                                                                s["check_desc"] or s["check"]))
        if not [s for s in st["servers"] if s["status"] == "UP"]:
            problems.append("%s: no server is UP" % key)
    out["ok"] = not problems
    return out


def op_ingress_status(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    check_keys(args, (), "ingress_status")
    paths = _paths(ctx)
    return status(paths, _hap(ctx, paths))


def op_ingress_start(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
    """Start HAProxy from the saved state when it is not running (e.g. after a reboot)."""
    check_keys(args, (), "ingress_start")
    paths = _paths(ctx)
    with ingress_lock(paths, ctx.cancelled, clock=ctx.clock, sleep=ctx.sleep):
        hap = _hap(ctx, paths)
        services = load_state(paths)
        started = False
        if services and hap.pid() is None:
            hap.write_config(render_config(paths, services))
            hap.start()
            started = True
            ctx.emit("ingress.start", config=paths.config, pid=hap.pid())
    out = status(paths, hap)
    out["started"] = started
    return out


# ----------------------------------------------------------------------------- for agent.rollout, agent.owner


class IngressDriver:
    """The ingress operations of this module, called in-process by a rollout (unit tests put a fake
    in Context.ingress)."""

    def __init__(self, ctx: Any):
        self.ctx = ctx

    def frontend(self, project: str, service: str) -> Optional[Dict[str, Any]]:
        svc = load_state(_paths(self.ctx)).get(service_key(project, service))
        return None if svc is None else svc.to_dict()

    def sync(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return op_ingress_sync(self.ctx, args)

    def drain(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return op_ingress_drain(self.ctx, args)

    def remove(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return op_ingress_remove(self.ctx, args)


def driver(ctx: Any) -> Any:
    return ctx.ingress if ctx.ingress is not None else IngressDriver(ctx)


def ingress_state(ctx: Any, project: str) -> Dict[str, Any]:
    """The project's ingress frontends on this node, for `state` (the controller's plan
    checks them against the containers): {service: {port, health, servers}, ...}."""
    try:
        paths = _paths(ctx)
        services = [s for s in load_state(paths).values() if s.project == project]
        running = bool(services) and _hap(ctx, paths).pid() is not None
    except (OSError, ValueError, AgentError):
        return {}
    return {s.service: {"port": {"published": s.published, "target": s.target, "protocol": s.protocol,
                                 "host_ip": s.host_ip}, "env": s.env,
                        "health": s.health.to_dict(), "servers": sorted(x.name for x in s.servers),
                        "running": running}
            for s in services}


def _for_env(op: Callable[[Any, Dict[str, Any]], Dict[str, Any]]) -> Callable[[Any, Dict[str, Any]], Dict[str, Any]]:
    """ingress_drain / ingress_remove as the controller may call them: with the `env` they
    act for ("" when absent), and never on another environment's frontend (agent.owner).
    agent.rollout calls the ops themselves, after its own guard."""

    def guarded(ctx: Any, args: Dict[str, Any]) -> Dict[str, Any]:
        args = dict(args)
        env = args.pop("env", None)
        env = check_name(env, "env") if env else ""
        if isinstance(args.get("project"), str) and isinstance(args.get("service"), str):
            svc = load_state(_paths(ctx)).get(service_key(args["project"], args["service"]))
            if svc is not None and svc.env and svc.env != env:
                raise AgentError(CONFLICT, "the ingress of %s on port %d belongs to environment %s, not %s"
                                 % (svc.key, svc.published, svc.env, env or "(none)"),
                                 {"fix": "act for %s (orch ... --env %s)" % (svc.env, svc.env)})
        return op(ctx, args)

    return guarded


INGRESS_OPERATIONS = {
    "ingress_sync": op_ingress_sync,
    "ingress_drain": _for_env(op_ingress_drain),
    "ingress_remove": _for_env(op_ingress_remove),
    "ingress_status": op_ingress_status,
    "ingress_start": op_ingress_start,
}
