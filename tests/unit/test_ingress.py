"""The node ingress (agent.ingress) without Docker or a running HAProxy: argument
validation, the rendered HAProxy config, runtime-API commands and plans as plain data,
parsers of HAProxy's answers, and the operations against a simulated HAProxy."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import haproxy as H
from agent import ingress as I
from agent import ingress_files as F
from agent.wire import labels as L
from agent.fake import FakeEngine
from agent.context import Context
from agent.operations import OPERATIONS
from agent.wire import ingress as W
from agent.wire.protocol import AgentError, BadRequest
from tests.unit.fakes import FakeClock as Clock


def sync_args(**kw):
    args = {"project": "shop", "env": "prod", "service": "web",
            "port": {"published": 8080, "target": 80, "protocol": "http"},
            "health": {"path": "/healthz", "interval": 0.5},
            "backends": [{"name": "web-1", "container": "shop-web-1"}]}
    args.update(kw)
    return args


def svc(servers=(), **kw):
    base = dict(project="shop", service="web", published=8080, target=80, env="prod",
                health=W.Health("/healthz", 0.5))
    base.update(kw)
    return W.ServiceIngress(servers=tuple(servers), **base)


PATHS = F.paths_for("/var/lib/orch-agent/engines/ABCD", run_base="/run")


# --------------------------------------------------------------------------- validation


def test_sync_arguments_parse_into_the_model():
    req = W.parse_sync(sync_args(backends=[{"name": "web-1", "container": "shop-web-1"},
                                           {"name": "web-2", "container": "/shop-web-2", "address": "10.0.0.7"}]))
    s = req.service
    assert (s.project, s.service, s.env, s.published, s.target, s.protocol, s.host_ip) == (
        "shop", "web", "prod", 8080, 80, "http", "0.0.0.0")
    assert s.health == W.Health(path="/healthz", interval=0.5, timeout=2.0, rise=2, fall=2, host="localhost")
    assert [(b.name, b.container, b.address) for b in req.backends] == [
        ("web-1", "shop-web-1", ""), ("web-2", "shop-web-2", "10.0.0.7")]
    assert (req.timeout, req.drain_timeout, req.network) == (W.DEFAULT_SYNC_TIMEOUT, W.DEFAULT_REMOVE_DRAIN, "")
    assert (s.frontend, s.backend, s.key) == ("fe.shop.web", "be.shop.web", "shop/web")


def test_health_accepts_a_bare_path():
    assert W.parse_sync(sync_args(health="/ready")).service.health.path == "/ready"


@pytest.mark.parametrize("change, message", [
    ({"project": "Shop"}, "not a valid project name"),
    ({"service": "web;reload"}, "not a valid name"),
    ({"env": "prod env"}, "not a valid name"),
    ({"port": {"published": 0, "target": 80}}, "out of range"),
    ({"port": {"published": 8080, "target": 70000}}, "out of range"),
    ({"port": {"published": 8080, "target": 80, "protocol": "tcp"}}, "plain TCP services keep"),
    ({"port": {"published": 8080, "target": 80, "host_ip": "0.0.0.0 "}}, "not an IPv4 address"),
    ({"port": {"published": "8080", "target": 80}}, "must be an integer"),
    ({"port": {"published": 8080}}, "needs 'target'"),
    ({"health": {"path": "healthz"}}, "must start with '/'"),
    ({"health": {"path": "/a b"}}, "no spaces"),
    ({"health": {"path": "/x'y"}}, "quotes"),
    ({"health": {"path": "/x#y"}}, "'#'"),
    ({"health": {"path": "/x\ny"}}, "no spaces"),
    ({"health": {"path": "/x\n"}}, "no spaces"),  # a trailing newline too (it would end the config line)
    ({"health": {"path": "/", "host": "web\n"}}, "not a host name"),
    ({"health": {"path": "/", "interval": float("nan")}}, "finite"),
    ({"service": "web\n"}, "not a valid name"),
    ({"health": {"path": "/", "interval": 0}}, ">= 0.1"),
    ({"health": {"path": "/", "interval": 301}}, "at most 300"),
    ({"health": {"path": "/", "rise": 0}}, "out of range"),
    ({"health": {"path": "/", "host": "a b"}}, "not a host name"),
    ({"health": {"path": "/", "method": "POST"}}, "unknown keys: method"),
    ({"backends": {"name": "x"}}, "must be a list"),
    ({"backends": [{"name": "web 1", "container": "c"}]}, "not a valid name"),
    ({"backends": [{"name": "w", "container": "c;rm"}]}, "not a valid container name"),
    ({"backends": [{"name": "w"}]}, "needs 'container'"),
    ({"backends": [{"name": "w", "container": "c", "address": "10.0.0.01"}]}, "not an IPv4 address"),
    ({"backends": [{"name": "w", "container": "c", "address": "0.0.0.0"}]}, "cannot be a server address"),
    ({"backends": [{"name": "w", "container": "c", "address": "fe80::1"}]}, "not an IPv4 address"),
    ({"backends": [{"name": "w", "container": "a"}, {"name": "w", "container": "b"}]}, "more than once"),
    ({"timeout": -1}, ">= 0"),
    ({"network": "net/x"}, "not a valid name"),
    ({"extra": 1}, "unknown keys: extra"),
])
def test_sync_arguments_are_validated(change, message):
    with pytest.raises(BadRequest) as err:
        W.parse_sync(sync_args(**change))
    assert message in err.value.message


def test_drain_and_remove_arguments_are_validated():
    assert W.parse_drain({"project": "shop", "service": "web", "server": "web-1"}) == (
        "shop", "web", "web-1", W.DEFAULT_DRAIN_TIMEOUT)
    assert W.parse_drain({"project": "shop", "service": "web", "server": "web-1", "timeout": 5})[3] == 5.0
    for bad in ({"project": "shop", "service": "web"}, {"project": "shop", "service": "web", "server": "a/b"},
                {"project": "shop", "service": "web", "server": "a", "timeout": 7200},
                {"project": "shop", "service": "web", "server": "a", "wait": 1}):
        with pytest.raises(BadRequest):
            W.parse_drain(bad)
    assert W.parse_remove({"project": "shop", "service": "web"}) == ("shop", "web")
    with pytest.raises(BadRequest):
        W.parse_remove({"project": "shop"})


def test_the_ops_are_registered():
    assert {"ingress_sync", "ingress_drain", "ingress_remove", "ingress_status", "ingress_start"} <= set(OPERATIONS)
    assert OPERATIONS["ingress_sync"] is I.op_ingress_sync


# --------------------------------------------------------------------------- rendering


def test_config_renders_a_frontend_and_backend_per_service():
    services = {
        "shop/web": svc([W.Server("web-1", "shop-web-1", "172.18.0.2"),
                         W.Server("web-2", "shop-web-2", "172.18.0.3", "maint"),
                         W.Server("web-3", "shop-web-3", "172.18.0.4", "warming")]),
        "blog/www": svc(project="blog", service="www", published=9000, target=8000, env="",
                        health=W.Health("/", 2.0, rise=3, fall=4, host="blog.example")),
    }
    text = H.render_config(PATHS, services)
    assert "stats socket /run/orch-ingress-%s/admin.sock mode 600 level admin expose-fd listeners" % (
        PATHS.run_dir.rsplit("-", 1)[1]) in text
    assert "server-state-file %s" % PATHS.server_state in text
    assert "load-server-state-from-file global" in text
    assert "master-worker" in text and "pidfile" not in text  # the pid file is on the command line
    # services in a stable order (by key), each a frontend on its port and a backend
    assert text.index("frontend fe.blog.www") < text.index("frontend fe.shop.web")
    web = text[text.index("frontend fe.shop.web"):]
    assert "    bind 0.0.0.0:8080\n    default_backend be.shop.web\n" in web
    assert "http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost" in web
    lines = [ln.strip() for ln in web.splitlines() if ln.strip().startswith("server ")]
    assert lines == [
        "server web-1 172.18.0.2:80 check inter 500ms fastinter 200ms downinter 200ms rise 2 fall 2",
        "server web-2 172.18.0.3:80 check inter 500ms fastinter 200ms downinter 200ms rise 2 fall 2 disabled",
        "server web-3 172.18.0.4:80 check inter 500ms fastinter 200ms downinter 200ms rise 2 fall 2 disabled",
    ]
    blog = text[text.index("frontend fe.blog.www"):text.index("frontend fe.shop.web")]
    assert "bind 0.0.0.0:9000" in blog and "hdr Host blog.example" in blog and " server " not in blog
    assert H.render_config(PATHS, services) == text  # deterministic


def test_server_lines_and_add_server_share_their_check_options():
    s = svc()
    server = W.Server("web-1", "shop-web-1", "172.18.0.2")
    text = H.render_config(PATHS, {s.key: s.with_servers([server])})
    line = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("server ")][0]
    assert H.cmd_add_server(s.backend, server, s.target, s.health) == "add server be.shop.web/" + line[len("server "):]


def test_an_empty_ingress_renders_globals_only():
    text = H.render_config(PATHS, {})
    assert "frontend" not in text and "backend" not in text and "expose-fd listeners" in text


@pytest.mark.skipif(not shutil.which("haproxy") and not Path("/usr/sbin/haproxy").exists(),
                    reason="haproxy is not installed here")
def test_haproxy_accepts_the_rendered_config(tmp_path):
    paths = F.paths_for(str(tmp_path), run_base="/run")  # -c binds nothing
    services = {"shop/web": svc([W.Server("web-1", "c1", "172.18.0.2"), W.Server("web-2", "c2", "172.18.0.3", "maint")]),
                "blog/www": svc(project="blog", service="www", published=9000, target=8000)}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(H.render_config(paths, services))
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    out = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_socket_paths_stay_short_whatever_the_data_dir():
    long_dir = "/var/lib/orch-agent/engines/" + "-".join(["ABCD"] * 12)
    paths = F.paths_for(long_dir, run_base="/run")
    # sun_path holds 107 bytes; HAProxy binds "<path>.<pid>.tmp" first and allows 97
    assert len(paths.admin_socket) <= 60 and len(paths.master_socket) <= 60
    assert paths.dir == long_dir + "/ingress" and paths.config.startswith(long_dir)
    assert F.paths_for(long_dir + "x", run_base="/run").run_dir != paths.run_dir  # one per node


# --------------------------------------------------------------------------- runtime API as data


def test_runtime_commands():
    h = W.Health("/healthz", interval=1.0, rise=3, fall=2)
    server = W.Server("web-2", "shop-web-2", "172.18.0.3")
    assert H.cmd_add_server("be.shop.web", server, 8080, h) == (
        "add server be.shop.web/web-2 172.18.0.3:8080 check inter 1000ms fastinter 200ms downinter 200ms "
        "rise 3 fall 2")
    assert H.cmds_warm("be.shop.web", "web-2") == [
        "enable health be.shop.web/web-2",
        "set server be.shop.web/web-2 state drain",
        "set server be.shop.web/web-2 health down",
    ]
    assert H.cmd_state("be.shop.web", "web-1", "drain") == "set server be.shop.web/web-1 state drain"
    assert H.cmd_state("be.shop.web", "web-1", "maint") == "set server be.shop.web/web-1 state maint"
    assert H.cmd_state("be.shop.web", "web-1", "ready") == "set server be.shop.web/web-1 state ready"
    assert H.cmd_del_server("be.shop.web", "web-1") == "del server be.shop.web/web-1"
    with pytest.raises(ValueError):
        H.cmd_state("be.shop.web", "web-1", "up")


def test_unix_command_refuses_chained_commands():
    for bad in ("show stat; shutdown sessions", "show info\nreload"):
        with pytest.raises(ValueError):
            H.unix_command("/nonexistent.sock", bad)


def rt(name, address="172.18.0.2", port=80, admin=0):
    return H.RuntimeServer(name, address, port, admin)


def test_plan_servers():
    runtime = {"old": rt("old", "172.18.0.2"), "gone": rt("gone", "172.18.0.9", admin=1),
               "moved": rt("moved", "172.18.0.5"), "back": rt("back", "172.18.0.6", admin=1),
               "draining": rt("draining", "172.18.0.7", admin=8)}
    desired = [W.Server("old", "c-old", "172.18.0.2"), W.Server("new", "c-new", "172.18.0.3"),
               W.Server("moved", "c-moved", "172.18.0.8"), W.Server("back", "c-back", "172.18.0.6"),
               W.Server("draining", "c-d", "172.18.0.7")]
    plan = H.plan_servers(runtime, desired, 80)
    assert plan.to_dict() == {"remove": ["gone", "moved"], "add": ["new", "moved"],
                              "rewarm": ["back", "draining"], "keep": ["old"]}
    # another target port is another server
    assert H.plan_servers({"a": rt("a")}, [W.Server("a", "c", "172.18.0.2")], 8080).to_dict()["remove"] == ["a"]
    assert H.plan_servers({}, [], 80).to_dict() == {"remove": [], "add": [], "rewarm": [], "keep": []}


def test_runtime_server_admin_bits():
    assert rt("a", admin=0).ready and not rt("a", admin=0).maint
    assert rt("a", admin=1).maint and not rt("a", admin=1).ready
    assert rt("a", admin=4).maint  # `disabled` in the config
    assert rt("a", admin=8).drain and not rt("a", admin=8).ready
    assert rt("a", admin=9).maint and not rt("a", admin=9).drain


# --------------------------------------------------------------------------- parsers (real HAProxy 2.6 output)

SHOW_PROC = """#<PID>          <type>          <reloads>       <uptime>        <version>
30716           master          3 [failed: 1]   0d00h11m01s     2.6.12-1+deb12u4
# workers
20126           worker          0               0d00h00m01s     2.6.12-1+deb12u4
# old workers
20001           worker          1               0d00h01m01s     2.6.12-1+deb12u4
# programs

"""

SERVERS_STATE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 be.p.web 1 a 127.0.0.1 2 0 1 1 658 15 3 3 6 0 0 0 - 18081 - 0 0 - - 0
3 be.p.web 3 c 127.0.0.1 0 1 1 1 0 15 3 0 14 0 0 0 - 18083 - 0 0 - - 0
"""

STAT_HEADER = ("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,"
               "status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,"
               "type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,")


def stat_row(px, sv, status, scur=0, check="L7OK", qcur=0):
    fields = dict.fromkeys(STAT_HEADER[2:].rstrip(",").split(","), "")
    fields.update(pxname=px, svname=sv, status=status, scur=str(scur), check_status=check, qcur=str(qcur))
    return ",".join(fields.values()) + ","


def test_parsers():
    assert H.parse_version("HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\nStatus: ...") == (
        "2.6.12-1+deb12u4", (2, 6, 12))
    assert H.parse_version("HA-Proxy version 2.2.9-2+deb11u5 2023/04/10")[1] == (2, 2, 9)
    with pytest.raises(AgentError):
        H.parse_version("command not found")
    proc = H.parse_show_proc(SHOW_PROC)
    assert proc == {"master": 30716, "reloads": 3, "failed": 1, "workers": [20126], "old_workers": [20001]}
    state = H.parse_servers_state(SERVERS_STATE)
    assert state == {"a": H.RuntimeServer("a", "127.0.0.1", 18081, 0), "c": H.RuntimeServer("c", "127.0.0.1", 18083, 1)}
    assert H.parse_servers_state("Can't find backend.\n") is None
    assert H.parse_servers_state(SERVERS_STATE.split("3 be")[0]) == {}
    rows = H.parse_stat("\n".join([STAT_HEADER, stat_row("be.p.web", "a", "UP", 3)]) + "\n\n")
    assert rows[0]["pxname"] == "be.p.web" and rows[0]["scur"] == "3" and rows[0]["status"] == "UP"
    assert H.parse_info("Name: HAProxy\nPid: 20126\nUptime_sec: 5\n")["Pid"] == "20126"


def test_health_states():
    assert H.serving({"status": "UP", "check_status": "L7OK"})
    assert not H.serving({"status": "UP 1/2", "check_status": "L7OK"})  # going down
    assert H.warmed({"status": "DRAIN", "check_status": "L7OK"})
    assert not H.warmed({"status": "DRAIN", "check_status": "INI"})  # no check passed yet
    assert not H.warmed({"status": "DOWN 1/2", "check_status": "L7OK"})  # not `rise` passes yet
    assert not H.warmed({"status": "DRAIN 1/2", "check_status": "L7OK"})


# --------------------------------------------------------------------------- container addresses


def inspect(name, state="running", networks=None, ports=None, project="shop"):
    return {"Name": "/" + name, "State": {"Status": state},
            "Config": {"Labels": {L.PROJECT: project} if project else {}},
            "NetworkSettings": {"Networks": {n: {"IPAddress": ip} for n, ip in (networks or {}).items()},
                                "Ports": ports or {}}}


class InspectingEngine(FakeEngine):
    """FakeEngine plus the raw inspect the ingress uses to find container addresses."""

    def __init__(self, containers):
        super().__init__()
        self.raw = containers

    def inspect_container(self, ref):
        if ref not in self.raw:
            raise type("NotFound", (Exception,), {})(ref)
        return self.raw[ref]


def test_container_address_prefers_the_project_network():
    engine = InspectingEngine({
        "a": inspect("a", networks={"other": "172.30.0.2", "shop_back": "172.19.0.2", "shop_default": "172.18.0.2"}),
        "b": inspect("b", networks={"shop_back": "172.19.0.3", "zz": "172.30.0.3"}),
        "c": inspect("c", networks={"ext": "172.30.0.4"}, project=""),
        "d": inspect("d", networks={"x": "172.30.0.5", "y": "172.31.0.5"}, project=""),
        "e": inspect("e", state="exited", networks={"shop_default": ""}),
        "f": inspect("f", networks={"host": ""}),
        "g": inspect("g", networks={"shop_default": "172.18.0.7"},
                     ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "81/tcp": None}),
    })
    assert I.container_address(engine, "a", project="shop")["address"] == "172.18.0.2"
    assert I.container_address(engine, "a", "other", project="shop")["network"] == "other"
    assert I.container_address(engine, "b", project="shop") == {
        "address": "172.19.0.3", "network": "shop_back", "published": [], "labels": {L.PROJECT: "shop"}}
    assert I.container_address(engine, "c", project="shop")["address"] == "172.30.0.4"  # its only network
    assert I.container_address(engine, "g", project="shop")["published"] == [8080]
    for name, network, kind in (("d", "", "not_found"), ("e", "", "exited"), ("f", "", "not_found"),
                                ("a", "nope", "not_found"), ("zz", "", "not_found")):
        with pytest.raises(AgentError) as err:
            I.container_address(engine, name, network, project="shop")
        assert err.value.kind == kind, name


def test_an_engine_without_inspect_is_an_error():
    with pytest.raises(AgentError) as err:
        I.inspect_container(object(), "x")
    assert err.value.kind == "engine"


# --------------------------------------------------------------------------- state


def test_state_round_trips(tmp_path):
    paths = F.paths_for(str(tmp_path), run_base=str(tmp_path))
    F.ensure_dirs(paths)
    assert F.load_state(paths) == {}
    services = {"shop/web": svc([W.Server("web-1", "c1", "172.18.0.2", "maint")])}
    F.save_state(paths, services)
    assert F.load_state(paths) == services
    assert json.loads(Path(paths.state).read_text())["version"] == F.STATE_VERSION
    Path(paths.state).write_text("{not json")
    with pytest.raises(AgentError) as err:
        F.load_state(paths)
    assert err.value.kind == "ingress"


# --------------------------------------------------------------------------- operations against a simulated HAProxy


class SimHAProxy:
    """Stands in for agent.haproxy.HAProxy: keeps backends and servers like the real
    runtime API does, health checks pass for the addresses in `world['healthy']`."""

    world: dict = {}

    def __init__(self, paths, clock=None, sleep=None, binary=None):
        self.paths = paths
        self.w = SimHAProxy.world

    binary = "/usr/sbin/haproxy"

    def installed(self):
        return True

    def version(self):
        return "2.6.12-1+deb12u4", (2, 6, 12)

    def dynamic(self):
        return True

    def pid(self):
        return 4242 if self.w["running"] else None

    def info(self):
        return {"Pid": "4243", "Uptime_sec": "7"}

    def write_config(self, text):
        prev = self.w.get("config")
        self.w["config"] = text
        return prev

    def _load(self):  # like a (re)start: backends from the config, states kept by name
        old = self.w["backends"]
        backends = {}
        current = None
        for ln in self.w["config"].splitlines():
            ln = ln.strip()
            if ln.startswith("backend "):
                current = ln.split()[1]
                backends[current] = {}
            elif ln.startswith("server ") and current is not None:
                _, name, addr = ln.split()[:3]
                prev = old.get(current, {}).get(name)  # the server-state file
                backends[current][name] = prev or {
                    "addr": addr, "admin": "maint" if ln.endswith(" disabled") else "ready", "up": True}
        self.w["backends"] = backends
        self.w["frontends"] = re.findall(r"^frontend (\S+)", self.w["config"], re.M)

    def start(self):
        self.w["running"] = True
        self.w["events"].append("start")
        self._load()
        return 4242

    def reload(self):
        self.w["events"].append("reload")
        self._load()
        return 4244

    def stop(self):
        self.w["events"].append("stop")
        self.w["running"] = False
        return True

    def save_server_state(self):
        pass

    def proc(self):
        return {"master": 4242, "workers": [4243], "old_workers": [], "failed": 0, "reloads": 0}

    def servers_state(self, backend):
        be = self.w["backends"].get(backend)
        if be is None:
            return None
        bits = {"ready": 0, "drain": 8, "maint": 1}
        return {n: H.RuntimeServer(n, s["addr"].split(":")[0], int(s["addr"].split(":")[1]), bits[s["admin"]])
                for n, s in be.items()}

    def runtime(self, cmd):
        self.w["commands"].append(cmd)
        words = cmd.split()
        if words[:2] == ["add", "server"]:
            be, name = words[2].split("/")
            self.w["backends"][be][name] = {"addr": words[3], "admin": "maint", "up": True}
            return "New server registered.\n"
        be, name = words[2].split("/")
        srv = self.w["backends"][be].get(name)
        if words[:2] == ["del", "server"]:
            self.w["backends"][be].pop(name)
            return "Server deleted.\n"
        if words[:2] == ["set", "server"] and words[3] == "state":
            srv["admin"] = words[4]
        elif words[:2] == ["set", "server"] and words[3] == "health":
            srv["up"] = False
        return "\n"

    def do(self, cmd, expect=""):
        out = self.runtime(cmd).strip()
        assert (expect in out) if expect else not out
        return out

    def stat(self):
        rows = [{"pxname": f, "svname": "FRONTEND", "status": "OPEN", "scur": "0"} for f in self.w["frontends"]]
        for be, servers in self.w["backends"].items():
            for name, s in servers.items():
                healthy = s["addr"].split(":")[0] in self.w["healthy"]
                if not s["up"] and healthy and s["admin"] != "maint":
                    s["up"] = True  # the checks run and pass
                status = {"maint": "MAINT"}.get(s["admin"]) or (
                    ("DRAIN" if s["admin"] == "drain" else "UP") if s["up"] and healthy else "DOWN")
                rows.append({"pxname": be, "svname": name, "status": status, "scur": str(s.get("scur", 0)),
                             "qcur": "0", "check_status": "L7OK" if healthy else "L4CON",
                             "check_desc": "" if healthy else "Connection refused", "stot": "0"})
        return rows


@pytest.fixture
def sim(monkeypatch, tmp_path):
    SimHAProxy.world = {"running": False, "backends": {}, "frontends": [], "commands": [], "events": [],
                        "healthy": {"172.18.0.2", "172.18.0.3"}}
    monkeypatch.setattr(I, "HAProxy", SimHAProxy)
    monkeypatch.setattr(I, "_port_free", lambda host, port: port != 7777)
    monkeypatch.setattr(I, "paths_for", lambda data_dir, run_base=None: F.Paths(
        dir=str(Path(data_dir) / "ingress"), run_dir=str(tmp_path / "run")))
    engine = InspectingEngine({
        "shop-web-1": inspect("shop-web-1", networks={"shop_default": "172.18.0.2"}),
        "shop-web-2": inspect("shop-web-2", networks={"shop_default": "172.18.0.3"}),
        "shop-web-3": inspect("shop-web-3", networks={"shop_default": "172.18.0.4"}),
        "stranger": inspect("stranger", networks={"shop_default": "172.18.0.9"}, project="other"),
        "publisher": inspect("publisher", networks={"shop_default": "172.18.0.10"},
                             ports={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}),
    })
    clock = Clock()
    events = []

    def run(op, args):
        ctx = Context(engine_factory=lambda: engine, state_dir=str(tmp_path / "state"),
                      emit=lambda t, **d: events.append(dict(d, type=t)), clock=clock, sleep=clock.sleep)
        return OPERATIONS[op](ctx, args)

    run.world = SimHAProxy.world
    run.events = events
    return run


def backends(*names):
    return [{"name": "web-%d" % n, "container": "shop-web-%d" % n} for n in names]


def test_rolling_replacement_through_the_ops(sim):
    w = sim.world
    first = sim("ingress_sync", sync_args(backends=backends(1)))
    assert first["process"] == "started" and w["events"] == ["start"]
    assert [(s["name"], s["address"], s["status"]) for s in first["servers"]] == [("web-1", "172.18.0.2", "UP")]
    # the server came in through the runtime API and took traffic only once it was seen healthy
    ref = "be.shop.web/web-1"
    assert w["commands"] == [
        "add server %s 172.18.0.2:80 check inter 500ms fastinter 200ms downinter 200ms rise 2 fall 2" % ref,
        "enable health " + ref, "set server %s state drain" % ref, "set server %s health down" % ref,
        "set server %s state ready" % ref,
    ]
    assert "server web-1 172.18.0.2:80" in w["config"]

    w["commands"].clear()
    both = sim("ingress_sync", sync_args(backends=backends(1, 2)))
    assert both["process"] == "" and w["events"] == ["start"]  # no reload for a server change
    assert both["changes"] == {"remove": [], "add": ["web-2"], "rewarm": [], "keep": ["web-1"]}
    assert [c for c in w["commands"] if "web-1" in c] == []

    w["commands"].clear()
    drained = sim("ingress_drain", {"project": "shop", "service": "web", "env": "prod", "server": "web-1", "timeout": 5})
    assert drained["drained"] and drained["state"] == "maint" and drained["remaining"] == 0
    assert w["commands"] == ["set server %s state drain" % ref, "set server %s state maint" % ref]

    w["commands"].clear()
    last = sim("ingress_sync", sync_args(backends=backends(2)))
    assert w["commands"] == ["del server %s" % ref]  # already in maintenance: no second drain
    assert [s["name"] for s in last["servers"]] == ["web-2"]
    assert "web-1" not in w["config"] and "server web-2 172.18.0.3:80" in w["config"]

    st = sim("ingress_status", {})
    assert st["running"] and st["ok"] and st["version"].startswith("2.6")
    assert [(f["service"], f["port"]["published"], [(s["name"], s["status"]) for s in f["servers"]])
            for f in st["frontends"]] == [("web", 8080, [("web-2", "UP")])]

    # rollback: the old container comes back (same name, same address): warmed up again
    w["commands"].clear()
    sim("ingress_drain", {"project": "shop", "service": "web", "env": "prod", "server": "web-2", "timeout": 5})
    back = sim("ingress_sync", sync_args(backends=backends(1, 2)))
    assert back["changes"]["rewarm"] == ["web-2"] and back["changes"]["add"] == ["web-1"]
    assert {s["name"]: s["status"] for s in back["servers"]} == {"web-1": "UP", "web-2": "UP"}


def test_sync_that_drops_a_live_server_drains_it_first(sim):
    sim("ingress_sync", sync_args(backends=backends(1, 2)))
    sim.world["commands"].clear()
    sim("ingress_sync", sync_args(backends=backends(2)))
    assert sim.world["commands"] == ["set server be.shop.web/web-1 state drain",
                                     "set server be.shop.web/web-1 state maint", "del server be.shop.web/web-1"]


def test_a_server_that_never_passes_its_checks_is_unhealthy_and_gets_no_traffic(sim):
    sim("ingress_sync", sync_args(backends=backends(1)))
    with pytest.raises(AgentError) as err:
        sim("ingress_sync", sync_args(backends=backends(1, 3), timeout=3))
    e = err.value
    assert e.kind == "unhealthy" and "web-3" in e.message and "GET /healthz on port 80" in e.message
    assert [(b["server"], b["status"], b["check"]) for b in e.details["servers"]] == [("web-3", "DOWN", "L4CON")]
    assert "set server be.shop.web/web-3 state ready" not in sim.world["commands"]
    st = sim("ingress_status", {})
    assert {s["name"]: s["state"] for s in st["frontends"][0]["servers"]} == {"web-1": "ready", "web-3": "warming"}


def test_a_second_service_reloads_and_keeps_the_first(sim):
    sim("ingress_sync", sync_args(backends=backends(1)))
    out = sim("ingress_sync", sync_args(service="api", port={"published": 9090, "target": 80},
                                        backends=backends(2)))
    assert out["process"] == "reloaded" and sim.world["events"] == ["start", "reload"]
    assert sim.world["backends"]["be.shop.web"]["web-1"]["admin"] == "ready"
    st = sim("ingress_status", {})
    assert [f["service"] for f in st["frontends"]] == ["api", "web"] and st["ok"]


def test_port_conflicts(sim):
    sim("ingress_sync", sync_args(backends=backends(1)))
    with pytest.raises(AgentError) as err:
        sim("ingress_sync", sync_args(service="api", backends=backends(2)))
    assert err.value.kind == "conflict" and "shop/web" in err.value.message
    with pytest.raises(AgentError) as err:
        sim("ingress_sync", sync_args(service="api", port={"published": 7777, "target": 80}, backends=backends(2)))
    assert err.value.kind == "conflict" and "in use on this node" in err.value.message


def test_containers_must_be_ours_and_not_publish_the_port(sim):
    with pytest.raises(AgentError) as err:
        sim("ingress_sync", sync_args(backends=[{"name": "x", "container": "stranger"}]))
    assert err.value.kind == "conflict" and "not a container orch manages" in err.value.message
    with pytest.raises(AgentError) as err:
        sim("ingress_sync", sync_args(backends=[{"name": "x", "container": "publisher"}]))
    assert err.value.kind == "conflict" and "publishes host port 8080" in err.value.message
    with pytest.raises(AgentError) as err:
        sim("ingress_sync", sync_args(backends=[{"name": "x", "container": "ghost"}]))
    assert err.value.kind == "not_found"
    assert sim.world["events"] == []  # nothing was started


def test_drain_of_unknown_things(sim):
    with pytest.raises(AgentError) as err:
        sim("ingress_drain", {"project": "shop", "service": "web", "env": "prod", "server": "web-1"})
    assert err.value.kind == "not_found"
    sim("ingress_sync", sync_args(backends=backends(1)))
    with pytest.raises(AgentError) as err:
        sim("ingress_drain", {"project": "shop", "service": "web", "env": "prod", "server": "web-9"})
    assert err.value.kind == "not_found" and "it has: web-1" in err.value.message


def test_drain_waits_for_sessions_then_times_out(sim):
    sim("ingress_sync", sync_args(backends=backends(1, 2)))
    sim.world["backends"]["be.shop.web"]["web-1"]["scur"] = 3  # three requests never finish
    out = sim("ingress_drain", {"project": "shop", "service": "web", "env": "prod", "server": "web-1", "timeout": 2})
    assert out["sessions"] == 3 and out["remaining"] == 3 and not out["drained"] and out["seconds"] >= 2
    assert sim.world["backends"]["be.shop.web"]["web-1"]["admin"] == "maint"


def test_remove_reloads_then_stops_with_the_last_service(sim):
    sim("ingress_sync", sync_args(backends=backends(1)))
    sim("ingress_sync", sync_args(service="api", port={"published": 9090, "target": 80}, backends=backends(2)))
    assert sim("ingress_remove", {"project": "shop", "service": "api", "env": "prod"})["process"] == "reloaded"
    out = sim("ingress_remove", {"project": "shop", "service": "web", "env": "prod"})
    assert out == {"removed": True, "port": 8080, "process": "stopped", "running": False}
    assert sim("ingress_remove", {"project": "shop", "service": "web", "env": "prod"})["removed"] is False
    assert sim.world["events"] == ["start", "reload", "reload", "stop"]
    st = sim("ingress_status", {})
    assert st["frontends"] == [] and st["ok"] and not st["running"]


def test_status_reports_problems_for_nodes_check(sim):
    sim("ingress_sync", sync_args(backends=backends(1)))
    sim.world["healthy"].discard("172.18.0.2")  # the container died
    st = sim("ingress_status", {})
    assert not st["ok"] and any("web-1" in p and "DOWN" in p for p in st["problems"])
    sim.world["running"] = False  # HAProxy is gone (node rebooted)
    st = sim("ingress_status", {})
    assert not st["ok"] and "not running" in st["problems"][0]
    sim.world["healthy"].add("172.18.0.2")
    out = sim("ingress_start", {})
    assert out["started"] and out["running"] and sim.world["events"][-1] == "start"


# --------------------------------------------------------------------------- the bundle


def test_bundle_carries_jinja2_and_the_template_and_renders_on_python39(tmp_path):
    from orchestrator.io.agent_bundle import build_bundle

    b = build_bundle(tmp_path)
    import zipfile

    names = zipfile.ZipFile(b.path).namelist()
    assert "agent/templates/haproxy.cfg.j2" in names and "jinja2/environment.py" in names
    assert "markupsafe/_native.py" in names and not [n for n in names if n.startswith("markupsafe/_speedups")]
    py39 = Path("/root/.pyenv/versions/3.9.18/bin/python")
    python = str(py39) if py39.exists() else sys.executable
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from agent import haproxy as H, ingress_files as F; from agent.wire import ingress as W; "
            "s = W.ServiceIngress('shop', 'web', 8080, 80, servers=(W.Server('w', 'c', '172.18.0.2'),)); "
            "print(H.render_config(F.paths_for('/x', run_base='/run'), {s.key: s}))")
    out = subprocess.run([python, "-I", "-c", code, str(b.path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "server w 172.18.0.2:80 check" in out.stdout and ".pyz/jinja2" not in out.stderr


def test_a_new_health_check_reloads_and_keeps_the_servers_a_new_target_port_replaces_them(sim):
    sim("ingress_sync", sync_args(backends=backends(1)))
    sim.world["commands"].clear()
    out = sim("ingress_sync", sync_args(health={"path": "/ready"}, backends=backends(1)))
    assert out["process"] == "reloaded" and out["changes"]["keep"] == ["web-1"] and sim.world["commands"] == []
    assert "uri /ready" in sim.world["config"]
    out = sim("ingress_sync", sync_args(port={"published": 8080, "target": 81}, backends=backends(1)))
    assert out["process"] == "reloaded" and out["changes"]["add"] == ["web-1"]
    assert sim.world["commands"][0].startswith("add server be.shop.web/web-1 172.18.0.2:81 ")


def test_sync_never_takes_over_another_environments_frontend(sim):
    """One project's service for two environments on one node (agent.owner)."""
    sim("ingress_sync", sync_args(backends=backends(1)))
    config, commands = sim.world["config"], list(sim.world["commands"])
    with pytest.raises(AgentError) as err:
        sim("ingress_sync", sync_args(env="qa", backends=backends(2)))
    assert err.value.kind == "conflict" and "belongs to environment prod, not qa" in err.value.message
    assert "orch down --env prod" in err.value.details["fix"]
    assert sim.world["config"] == config and sim.world["commands"] == commands
    assert [s["name"] for s in sim("ingress_status", {})["frontends"][0]["servers"]] == ["web-1"]


def test_drain_and_remove_over_rpc_only_for_the_frontends_environment(sim):
    sim("ingress_sync", sync_args(backends=backends(1)))
    config = sim.world["config"]
    for env in ({"env": "qa"}, {}):  # another environment, or none: not a licence
        for op, extra in (("ingress_remove", {}), ("ingress_drain", {"server": "web-1"})):
            with pytest.raises(AgentError) as err:
                sim(op, dict({"project": "shop", "service": "web"}, **extra, **env))
            assert err.value.kind == "conflict" and "belongs to environment prod" in err.value.message
    assert sim.world["config"] == config
    assert sim("ingress_remove", {"project": "shop", "service": "web", "env": "prod"})["removed"] is True
