"""HAProxy for the node's ingress (agent.ingress): its rendered config, its runtime API
(commands as data, parsers of its answers) and the process (its files and sockets:
agent.ingress_files.Paths).

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
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.certs.files import crt_list_path, socket_in, write_edge_files
from agent.edge import edge_context, routed
from agent.ingress_files import POLL, Paths, ensure_dirs, write_atomic
from agent.wire.ingress import INGRESS, Health, Server, ServiceIngress
from agent.wire.protocol import NOT_FOUND, AgentError

FAST_CHECK_MS = 200  # health checks of a server that is DOWN or changing state (server_options)
MIN_DYNAMIC = (2, 4)  # `add server` / `del server` on the runtime API
PROCESS_TIMEOUT = 20.0  # start, reload, stop
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


# ----------------------------------------------------------------------------- rendering


def template_text() -> str:
    import pkgutil

    data = pkgutil.get_data("agent", "templates/haproxy.cfg.j2")  # works inside the zipapp too
    if data is None:  # pragma: no cover - the bundle always carries it
        raise AgentError(INGRESS, "the HAProxy template is missing from the agent")
    return data.decode("utf-8")


def render_context(paths: Paths, services: Dict[str, ServiceIngress],
                   certs: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """The template's values. certs: {host: certificate file} of the store (the crt-list's)."""
    data_dir = os.path.dirname(paths.dir)
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
            "hsts": svc.route.hsts if svc.route.tls else 0,
        })
    edge = edge_context(services, certs or {}, crt_list_path(data_dir), lambda env: socket_in(paths.run_dir, env))
    return {"paths": {"pid": paths.pid, "admin_socket": paths.admin_socket, "server_state": paths.server_state,
                      "state": paths.state},
            "settings": dict(SETTINGS), "services": out, "edge": edge}


def render_config(paths: Paths, services: Dict[str, ServiceIngress]) -> str:
    """The whole haproxy.cfg for these services (Jinja2, strict: a missing value is a bug).
    With host-routed services it first writes what the config names: the crt-list and
    the node's fallback certificate (agent.certs.files)."""
    import jinja2

    certs: Dict[str, str] = {}
    if routed(services):
        certs = write_edge_files(os.path.dirname(paths.dir))
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True)
    return env.from_string(template_text()).render(**render_context(paths, services, certs))


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


def unix_command(path: str, command: str, timeout: float = 10.0, payload: Optional[str] = None) -> str:
    """Send one command to a HAProxy CLI socket (runtime API or master) and read the answer.

    payload: the lines after a command ending in `<<` (e.g. a PEM for `set ssl cert`);
    HAProxy reads it up to an empty line, so it may hold none."""
    if _CMD_FORBIDDEN.search(command):
        raise ValueError("refusing a CLI command with ';' or a line break: %r" % command)
    data = command.encode("ascii") + b"\n"
    if payload is not None:
        if not command.endswith("<<") or "\n\n" in payload.strip("\n") or "\x00" in payload:
            raise ValueError("a payload goes after a command ending in '<<' and holds no empty line")
        data += payload.strip("\n").encode("ascii") + b"\n\n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(data)
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

    def runtime(self, command: str, timeout: float = 10.0, payload: Optional[str] = None) -> str:
        try:
            return unix_command(self.paths.admin_socket, command, timeout, payload)
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
        write_atomic(new, text.encode("utf-8"))
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
            write_atomic(self.paths.server_state, text.encode("utf-8"))

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
