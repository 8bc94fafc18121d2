"""The node ingress (HAProxy run by the agent) on a lab node, under a steady HTTP load.

Two busybox httpd containers answer "v1" and "v2" on the project network of prod-1 and
publish no port; the ingress owns the published port. A load from this host at 60
requests/s checks every response while the ingress goes v1 -> v1+v2 -> (a reload for a
second service) -> drain v1 -> v1 stopped -> v2 only: no request may fail, and every
request sent after the drain must be answered by v2. HAProxy then outlives the agent.
"""

from __future__ import annotations

import base64
import random
import time
import uuid

import pytest

from agent.wire.spec import config_hash
from orchestrator.core.environments import NodeSpec
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle

from .helpers import Load, get

pytestmark = pytest.mark.e2e

NODE = "prod-1"
IMAGE = "busybox:latest"
RATE = 60.0  # requests per second
HEALTH = {"path": "/healthz", "interval": 0.5, "rise": 2, "fall": 2}


@pytest.fixture(scope="module")
def conn(lab):
    node = next(n for n in lab.nodes if n.name == NODE)
    target = NodeSpec(node.name, node.address, node.ssh_port, lab.ssh_user, lab.ssh_key)
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


def test_rolling_switch_under_load_drops_nothing_and_outlives_the_agent(conn, lab):
    bundle = current_bundle()
    project = "e2e-ing-" + uuid.uuid4().hex[:6]
    port, port2 = random.sample(range(21000, 29999), 2)
    host = next(n for n in lab.nodes if n.name == NODE).address
    session = T.AgentSession.open(conn, bundle)
    per_step = 60  # requests that must run through each step: about a second of the load

    def sync(service, p, names):
        # (timeout: how long the agent may wait for HAProxy's checks; a hang guard)
        return session.call("ingress_sync", {
            "project": project, "env": "prod", "service": service,
            "port": {"published": p, "target": 8080, "protocol": "http"}, "health": HEALTH,
            "backends": [{"name": n, "container": "%s-%s-1" % (project, n)} for n in names], "timeout": 120})

    try:
        session.call("apply", {"spec": httpd(project, "v1", "v1\n")})
        session.call("apply", {"spec": httpd(project, "v2", "v2\n")})
        first = sync("web", port, ["v1"])
        assert [(s["name"], s["status"]) for s in first["servers"]] == [("v1", "UP")]
        assert first["process"] in ("started", "reloaded")
        assert get(host, port) == (200, "v1\n")

        # Each step starts only once the load has run through the previous one.
        marks = {}
        load = Load(host, port, RATE).start()
        marks["v1 only"] = load.started
        load.wait_for(per_step, marks["v1 only"], "with v1 only")
        marks["v1 + v2 (runtime API)"] = time.monotonic()
        both = sync("web", port, ["v1", "v2"])
        assert both["process"] == "" and both["changes"]["add"] == ["v2"]  # runtime API, no reload
        load.wait_for(per_step, marks["v1 + v2 (runtime API)"], "after v2 was added")
        marks["reload for a second frontend, drain v1"] = time.monotonic()
        other = sync("api", port2, ["v2"])  # a new frontend: a seamless reload under load
        assert other["process"] == "reloaded"
        load.wait_for(per_step, marks["reload for a second frontend, drain v1"], "after the reload")
        # (timeout: how long the agent may wait for v1's sessions to end; a hang guard)
        drained = session.call("ingress_drain", {"project": project, "env": "prod", "service": "web", "server": "v1",
                                                 "timeout": 60})
        switch = time.monotonic()
        assert drained["drained"] and drained["state"] == "maint"
        marks["v1 drained, still running"] = switch
        load.wait_for(per_step, switch, "after the drain")
        marks["v1 stopped, v2 only"] = time.monotonic()
        session.call("remove", {"project": project, "env": "prod", "service": "v1"})  # the old container stops
        last = sync("web", port, ["v2"])
        assert last["changes"]["remove"] == ["v1"] and [s["name"] for s in last["servers"]] == ["v2"]
        load.wait_for(2 * per_step, marks["v1 stopped, v2 only"], "after v1 was stopped")
        results = load.stop()

        failed = [r for r in results if r[3]]
        bodies = [r[2] for r in results]
        after = [r for r in results if r[0] > switch]
        steps = list(marks.items())
        per_mark = {name: len([r for r in results if mark <= r[4] < (steps[i + 1][1] if i + 1 < len(steps)
                                                                        else float("inf"))])
                    for i, (name, mark) in enumerate(steps)}
        print("ingress load: %d requests in %.1fs, %d failed, v1=%d v2=%d, %d after the switch, per step %s, "
              "drain %.2fs" % (len(results), load.seconds, len(failed), bodies.count("v1\n"),
                               bodies.count("v2\n"), len(after), per_mark, drained["seconds"]))
        assert not failed, failed[:5]
        # the load ran through every step (no request-rate bound: the machine may be busy)
        assert all(n >= per_step for n in per_mark.values()), per_mark
        assert set(bodies) == {"v1\n", "v2\n"} and bodies.count("v1\n") >= per_step
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
        deadline = time.monotonic() + 120  # a wait for HAProxy to exit, not a speed check
        while session.call("ingress_status")["running"]:
            assert time.monotonic() < deadline, f"HAProxy (pid {st['pid']}) still runs 120 s after SIGTERM"
            time.sleep(0.2)
        down = session.call("ingress_status")
        assert not down["running"] and not down["ok"] and "not running" in down["problems"][0]
        up = session.call("ingress_start")
        assert up["started"] and up["running"] and up["pid"] != st["pid"]
        assert get(host, port) == (200, "v2\n") and get(host, port2) == (200, "v2\n")
    finally:
        for service in ("web", "api"):
            try:
                session.call("ingress_remove", {"project": project, "env": "prod", "service": service})
            except Exception:
                pass
        session.call("remove", {"project": project, "env": "prod"})
        session.close()
    with T.AgentSession.open(conn, bundle) as s:
        st = s.call("ingress_status")
        assert not [f for f in st["frontends"] if f["project"] == project]
