"""The node ingress (HAProxy run by the agent) on a lab node, under a steady HTTP load.

Two busybox httpd containers answer "v1" and "v2" on the project network of prod-1 and
publish no port; the ingress owns the published port. A load from this host at 60
requests/s checks every response while the ingress goes v1 -> v1+v2 -> (a reload for a
second service) -> drain v1 -> v1 stopped -> v2 only: no request may fail, and every
request sent after the drain must be answered by v2. HAProxy then outlives the agent.
"""

from __future__ import annotations

import base64
import http.client
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.spec import config_hash
from orchestrator import transport as T
from orchestrator.agent_bundle import current_bundle

pytestmark = pytest.mark.e2e

NODE = "prod-1"
IMAGE = "busybox:latest"
RATE = 60.0  # requests per second
HEALTH = {"path": "/healthz", "interval": 0.5, "rise": 2, "fall": 2}


@pytest.fixture(scope="module")
def conn(lab):
    node = next(n for n in lab.nodes if n.name == NODE)
    target = T.NodeTarget(node.name, node.address, node.ssh_port, lab.ssh_user, lab.ssh_key)
    options = T.SSHOptions(known_hosts=lab.known_hosts, allow_agent=False, env_name="prod",
                           connect_timeout=5, command_timeout=120)
    conns = T.connect_all([target], options)
    yield conns[NODE]
    T.close_all(conns)


def httpd(project, name, body):
    files = [{"name": "index", "target": "/www/index.html", "content": base64.b64encode(body.encode()).decode()},
             {"name": "health", "target": "/www/healthz", "content": base64.b64encode(b"ok\n").decode()}]
    c = {"image": IMAGE, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"], "networks": [{"name": "default"}],
         "configs": files, "stop_grace_period": 1, "init": True}  # no ports: the ingress owns the host port
    return {"project": project, "service": name, "env": "prod", "release": "r1", "replicas": [1],
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}


class Load:
    """GET / at a fixed rate, each on a new connection; every answer is recorded."""

    def __init__(self, host, port, rate):
        self.host, self.port, self.interval = host, port, 1.0 / rate
        self.results = []  # (sent at, finished at, body or None, error)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=24)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, sent):
        body, error = None, ""
        try:
            c = http.client.HTTPConnection(self.host, self.port, timeout=5)
            c.request("GET", "/", headers={"Connection": "close"})
            r = c.getresponse()
            data = r.read().decode()
            c.close()
            if r.status == 200:
                body = data
            else:
                error = "HTTP %d %s" % (r.status, data[:80])
        except Exception as exc:  # any failure counts
            error = "%s: %s" % (type(exc).__name__, exc)
        with self._lock:
            self.results.append((sent, time.monotonic(), body, error))

    def _run(self):
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.05))
                continue
            self._pool.submit(self._one, next_at)
            next_at += self.interval

    def start(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self.seconds = time.monotonic() - self.started
        return sorted(self.results)


def get(host, port):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", "/")
    r = c.getresponse()
    return r.status, r.read().decode()


def test_rolling_switch_under_load_drops_nothing_and_outlives_the_agent(conn, lab):
    bundle = current_bundle()
    project = "e2e-ing-" + uuid.uuid4().hex[:6]
    port, port2 = random.sample(range(21000, 29999), 2)
    host = next(n for n in lab.nodes if n.name == NODE).address
    session = T.AgentSession.open(conn, bundle)
    started = time.monotonic()

    def sync(service, p, names):
        return session.call("ingress_sync", {
            "project": project, "env": "prod", "service": service,
            "port": {"published": p, "target": 8080, "protocol": "http"}, "health": HEALTH,
            "backends": [{"name": n, "container": "%s-%s-1" % (project, n)} for n in names], "timeout": 20})

    try:
        session.call("apply", {"spec": httpd(project, "v1", "v1\n")})
        session.call("apply", {"spec": httpd(project, "v2", "v2\n")})
        first = sync("web", port, ["v1"])
        assert [(s["name"], s["status"]) for s in first["servers"]] == [("v1", "UP")]
        assert first["process"] in ("started", "reloaded")
        assert get(host, port) == (200, "v1\n")

        load = Load(host, port, RATE).start()
        time.sleep(2.0)
        both = sync("web", port, ["v1", "v2"])
        assert both["process"] == "" and both["changes"]["add"] == ["v2"]  # runtime API, no reload
        time.sleep(1.5)
        other = sync("api", port2, ["v2"])  # a new frontend: a seamless reload under load
        assert other["process"] == "reloaded"
        time.sleep(1.5)
        drained = session.call("ingress_drain", {"project": project, "service": "web", "server": "v1",
                                                 "timeout": 10})
        switch = time.monotonic()
        assert drained["drained"] and drained["state"] == "maint"
        time.sleep(1.0)
        session.call("remove", {"project": project, "service": "v1"})  # the old container stops
        last = sync("web", port, ["v2"])
        assert last["changes"]["remove"] == ["v1"] and [s["name"] for s in last["servers"]] == ["v2"]
        time.sleep(2.0)
        results = load.stop()

        failed = [r for r in results if r[3]]
        bodies = [r[2] for r in results]
        after = [r for r in results if r[0] > switch]
        rate = len(results) / load.seconds
        print("ingress load: %d requests in %.1fs (%.0f/s), %d failed, v1=%d v2=%d, %d after the switch, "
              "drain %.2fs" % (len(results), load.seconds, rate, len(failed), bodies.count("v1\n"),
                               bodies.count("v2\n"), len(after), drained["seconds"]))
        assert not failed, failed[:5]
        assert rate >= 50 and len(results) >= 50 * 8
        assert set(bodies) == {"v1\n", "v2\n"} and bodies.count("v1\n") > 20
        assert after and all(r[2] == "v2\n" for r in after), [r for r in after if r[2] != "v2\n"][:5]

        # HAProxy is not the agent's child: kill the agent, the ingress keeps serving
        before = session.call("ingress_status")
        conn.run(["kill", "-9", str(session.pid)], check=True)
        session.close()
        time.sleep(0.5)
        assert get(host, port) == (200, "v2\n") and get(host, port2) == (200, "v2\n")
        session = T.AgentSession.open(conn, bundle)
        st = session.call("ingress_status")
        assert st["running"] and st["pid"] == before["pid"] and st["version"].startswith("2.")
        mine = {f["service"]: f for f in st["frontends"] if f["project"] == project}
        assert sorted(mine) == ["api", "web"]
        assert mine["web"]["port"]["published"] == port and mine["web"]["status"] == "OPEN"
        assert [(s["name"], s["status"], s["state"]) for s in mine["web"]["servers"]] == [("v2", "UP", "ready")]
        assert not [p for p in st["problems"] if project in p]

        # HAProxy gone (as after a reboot): status says so, ingress_start brings every service back
        conn.run(["kill", "-TERM", str(st["pid"])], check=True)
        deadline = time.monotonic() + 10
        while session.call("ingress_status")["running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        down = session.call("ingress_status")
        assert not down["running"] and not down["ok"] and "not running" in down["problems"][0]
        up = session.call("ingress_start")
        assert up["started"] and up["running"] and up["pid"] != st["pid"]
        assert get(host, port) == (200, "v2\n") and get(host, port2) == (200, "v2\n")
    finally:
        for service in ("web", "api"):
            try:
                session.call("ingress_remove", {"project": project, "service": service})
            except Exception:
                pass
        session.call("remove", {"project": project})
        session.close()
    with T.AgentSession.open(conn, bundle) as s:
        st = s.call("ingress_status")
        assert not [f for f in st["frontends"] if f["project"] == project]
    assert time.monotonic() - started < 60
