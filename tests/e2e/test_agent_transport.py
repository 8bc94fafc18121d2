"""The SSH transport and the node agent against the local lab (`orch lab up`).

Builds on conftest's `lab` fixture; every test works in its own project
(e2e-<random>) and removes it afterwards.
"""

from __future__ import annotations

import base64
import random
import re
import ssl
import threading
import time
import urllib.request
import uuid

import pytest

from agent.wire.spec import config_hash
from orchestrator.core.environments import NodeSpec
from orchestrator.io import transport as T
from orchestrator.io.transport import ssh
from orchestrator.io.agent_bundle import current_bundle

pytestmark = pytest.mark.e2e

IMAGE = "busybox:latest"  # resolvable on every lab node through the lab's mirror


@pytest.fixture(scope="module")
def lab_env(lab):
    """The lab (conftest's `lab`: up and healthy) as transport targets and strict SSH options."""
    targets = [NodeSpec(n.name, n.address, n.ssh_port, lab.ssh_user, lab.ssh_key) for n in lab.nodes]
    options = T.SSHOptions(known_hosts=lab.known_hosts, allow_agent=False, env_name="dev",
                           connect_timeout=5, command_timeout=120)
    return {"lab": lab, "targets": {t.name: t for t in targets}, "options": options}


@pytest.fixture(scope="module")
def conns(lab_env):
    conns = T.connect_all(lab_env["targets"].values(), lab_env["options"])
    yield conns
    T.close_all(conns)


@pytest.fixture(scope="module")
def bundle():
    return current_bundle()


@pytest.fixture(scope="module")
def sessions(conns, bundle):
    """Long-lived agent sessions on dev-1 and test-1 (re-opened if a test killed one)."""
    opened = {}

    def get(node):
        s = opened.get(node)
        if s is None or s.channel.exit_status_ready():
            opened[node] = s = T.AgentSession.open(conns[node], bundle)
        return s

    yield get
    for s in opened.values():
        s.close()


@pytest.fixture
def dev(sessions):
    return sessions("dev-1")


@pytest.fixture
def project(sessions):
    """A unique project name; whatever it left on dev-1 and test-1 is removed afterwards."""
    name = "e2e-" + uuid.uuid4().hex[:8]
    yield name
    for node in ("dev-1", "test-1"):
        sessions(node).call("remove", {"project": name, "env": "dev", "remove_volumes": True})


def service(project, name="web", replicas=(1,), **container):
    # init: a PID 1 that passes SIGTERM on, so removing the test's containers is quick
    c = {"image": IMAGE, "networks": [{"name": "default"}], "stop_grace_period": 1, "init": True}
    c.update(container)
    return {"project": project, "service": name, "env": "dev", "release": "r1", "replicas": list(replicas),
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}


def http_get(url, timeout=5.0, attempts=20):
    for i in range(attempts):
        try:
            return urllib.request.urlopen(url, timeout=timeout).read().decode()
        except OSError:
            if i == attempts - 1:
                raise
            time.sleep(0.25)


def free_port():
    return random.randint(20000, 29999)


# --------------------------------------------------------------------------- SSH


def test_connects_to_all_nodes_in_parallel_with_strict_host_keys(lab_env, monkeypatch):
    assert lab_env["options"].strict_host_keys
    targets = list(lab_env["targets"].values())
    # In parallel: every node's connect must be under way at the same time. Each one waits
    # at a barrier for all the others before it connects for real; were connect_all one
    # node after the other, the first would wait there alone and the barrier would break.
    # (The barrier's timeout is a hang guard, not a speed check.)
    together = threading.Barrier(len(targets), timeout=120)
    real_connect = ssh.connect

    def connect(target, options):
        try:
            together.wait()
        except threading.BrokenBarrierError:
            raise AssertionError(f"connect to {target.name} was not under way together with the other nodes' "
                                 "connects: connect_all does not connect in parallel") from None
        return real_connect(target, options)

    monkeypatch.setattr(ssh, "connect", connect)
    conns = T.connect_all(targets, lab_env["options"])
    try:
        assert list(conns) == ["dev-1", "test-1", "prod-1", "prod-2"]
        for name, conn in conns.items():
            assert conn.run(["hostname"], check=True).stdout.strip() == name
    finally:
        T.close_all(conns)


def test_unknown_host_key_is_refused_with_the_trust_command(lab_env, tmp_path):
    options = T.SSHOptions(known_hosts=tmp_path / "empty_known_hosts", allow_agent=False, env_name="dev", retries=0)
    target = lab_env["targets"]["dev-1"]
    with pytest.raises(T.NodesUnreachable) as err:
        T.connect_all([target], options)
    failure = err.value.failures["dev-1"]
    assert isinstance(failure, T.UnknownHostKey)
    recorded = T.load_known_hosts(lab_env["options"].known_hosts_path).lookup(target.known_hosts_name)
    assert failure.fingerprint == T.fingerprint(list(recorded.values())[0])
    assert "run: orch nodes trust --env dev" in err.value.render()


def test_changed_host_key_is_refused_loudly(lab_env, tmp_path):
    # Record test-1's key under dev-1's address: to the client, dev-1's key "changed".
    real = T.load_known_hosts(lab_env["options"].known_hosts_path)
    dev, test = lab_env["targets"]["dev-1"], lab_env["targets"]["test-1"]
    wrong = list(real.lookup(test.known_hosts_name).values())[0]
    path = tmp_path / "known_hosts"
    T.append_known_host(path, dev.known_hosts_name, wrong)
    for strict in (True, False):
        options = T.SSHOptions(known_hosts=path, strict_host_keys=strict, allow_agent=False, retries=0)
        with pytest.raises(T.HostKeyChanged) as err:
            T.connect(dev, options)
        assert "HOST KEY HAS CHANGED" in err.value.render() and T.fingerprint(wrong) in err.value.render()
    assert path.read_text().count("\n") == 1  # never replaced


def test_unreachable_node_is_named_and_nothing_is_touched(lab_env):
    dev = lab_env["targets"]["dev-1"]
    ghost = NodeSpec("ghost-1", dev.host, 2, "root", dev.identity_file)  # a lab host, a closed port
    options = T.SSHOptions(known_hosts=lab_env["options"].known_hosts, allow_agent=False, retries=1, backoff=0.1,
                           connect_timeout=5)
    with pytest.raises(T.NodesUnreachable) as err:
        T.connect_all(list(lab_env["targets"].values()) + [ghost], options)
    text = err.value.render()
    assert "cannot connect to 1 of 5 node(s); nothing was changed on any node" in text
    assert f"ghost-1 ({dev.host}:2): connection refused" in text
    assert set(err.value.failures) == {"ghost-1"}


# --------------------------------------------------------------------------- agent


def test_agent_is_uploaded_once(conns, bundle, tmp_path):
    state = f"/tmp/orch-e2e-state-{uuid.uuid4().hex[:8]}"
    try:
        first = T.AgentSession.open(conns["test-1"], bundle, state_dir=state)
        first.close()
        second = T.AgentSession.open(conns["test-1"], bundle, state_dir=state)
        second.close()
        assert first.uploaded and not second.uploaded
        assert second.hello["bundle"] == bundle.name
    finally:
        conns["test-1"].run(["rm", "-rf", state])


def test_agents_run_with_the_nodes_python_from_their_unpacked_copy():
    """environments/prod.yaml says `python: /usr/bin/python3` for its nodes: orch's own
    connect (the path of every command) starts the agent with it, and the agent runs from
    the copy its stub unpacked beside the bundle (bytecode kept between starts)."""
    from pathlib import Path

    from orchestrator.io.nodes import close_nodes, ssh_connect
    from orchestrator.core.environments import load_environment
    from orchestrator.core.progress import Progress

    env = load_environment("prod", Path(__file__).resolve().parents[2] / "environments")
    assert {n.python for n in env.nodes} == {"/usr/bin/python3"}
    nodes = ssh_connect(env, Progress())
    try:
        for name, node in nodes.items():
            hello = node.lock_session().hello
            bundle = current_bundle()
            assert hello["executable"] == "/usr/bin/python3", (name, hello)
            assert hello["bundle"] == bundle.name
            assert hello["runs_from"] == T.bundle_path(bundle)[:-len(".pyz")] + ".d", (name, hello)
    finally:
        close_nodes(nodes)


def test_info_from_every_node(conns, bundle):
    sessions = T.open_sessions(conns, bundle)
    try:
        infos = {name: s.call("info") for name, s in sessions.items()}
    finally:
        for s in sessions.values():
            s.close()
    assert {i["hostname"] for i in infos.values()} == set(conns)
    assert len({i["engine"]["id"] for i in infos.values()}) == 4  # each node its own engine
    for info in infos.values():
        assert info["engine"]["version"] and info["protocol"] == 1 and info["disk"]["state_dir"]["free"] > 0


def test_apply_serves_on_the_node_then_is_idempotent_then_recreates_on_change(dev, project, lab_env):
    port = free_port()
    page = base64.b64encode(b"hello from orch\n").decode()
    spec = service(project, command=["httpd", "-f", "-p", "8080", "-h", "/www"],
                   ports=[{"target": 8080, "published": port}], environment={"GREETING": "one"},
                   configs=[{"name": "index", "target": "/www/index.html", "content": page}])
    events = []
    first = dev.call("apply", {"spec": spec}, on_event=events.append)
    assert first["changed"] and first["containers"][0]["action"] == "created"
    assert {"apply.start", "container.create", "container.start", "container.running"} <= {e["type"] for e in events}
    host = lab_env["targets"]["dev-1"].host
    assert http_get(f"http://{host}:{port}/index.html") == "hello from orch\n"

    again = []
    second = dev.call("apply", {"spec": spec}, on_event=again.append)
    assert not second["changed"] and second["containers"][0]["id"] == first["containers"][0]["id"]
    # Idempotent means untouched: no pull, no create/start/remove, and no new wait for the
    # running container (a wait would show as container.running / waiting events).
    assert [e["type"] for e in again] == ["apply.start"], again
    assert second["containers"][0]["action"] == "unchanged"

    spec2 = service(project, command=["httpd", "-f", "-p", "8080", "-h", "/www"],
                    ports=[{"target": 8080, "published": port}], environment={"GREETING": "two"},
                    configs=[{"name": "index", "target": "/www/index.html", "content": page}])
    third = dev.call("apply", {"spec": spec2})
    assert third["containers"][0]["action"] == "recreated" and third["containers"][0]["id"] != first["containers"][0]["id"]
    assert http_get(f"http://{host}:{port}/index.html") == "hello from orch\n"
    state = dev.call("state", {"project": project})["containers"]
    assert [(c["service"], c["replica"], c["state"]) for c in state] == [("web", 1, "running")]
    assert state[0]["config_hash"] == spec2["config_hash"] and state[0]["ports"][0]["published"] == port


def test_exec_returns_the_exit_code(dev, project):
    dev.call("apply", {"spec": service(project, command=["sleep", "3600"])})
    out = []
    stream = dev.stream("exec", {"project": project, "service": "web",
                                 "cmd": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    for ev in stream:
        if ev["type"] == "output":
            out.append((ev["stream"], ev["data"]))
    assert stream.result["exit_code"] == 3
    assert ("stdout", "out\n") in out and ("stderr", "err\n") in out


def test_logs_follow_streams_until_cancelled(dev, project):
    dev.call("apply", {"spec": service(project, command=[
        "sh", "-c", "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done"])})
    lines = []
    with dev.stream("logs", {"project": project, "follow": True, "tail": 0}) as stream:
        for ev in stream:
            lines.append(ev["line"])
            if len(lines) == 5:
                break
    assert stream.result["cancelled"] is True
    numbers = [int(ln.split()[1]) for ln in lines]
    assert numbers == list(range(numbers[0], numbers[0] + 5))
    assert dev.call("hello", {"protocol": 1})["protocol"] == 1  # the session goes on


def test_container_that_exits_fails_with_its_last_20_log_lines(dev, project):
    spec = service(project, name="crash", command=["sh", "-c", "for i in $(seq 1 30); do echo log $i; done; exit 2"])
    with pytest.raises(T.AgentError) as err:
        dev.call("apply", {"spec": spec})
    e = err.value
    assert e.kind == "exited" and e.node == "dev-1"
    assert e.details["logs"] == [f"log {i}" for i in range(11, 31)]
    text = e.render()
    assert text.startswith("dev-1: service crash replica 1 (container %s-crash-1) exited with code 2" % project)
    assert "Last 20 log lines" in text and "  | log 30" in text


def test_healthcheck_that_never_passes_fails_on_dockers_verdict(dev, project):
    hc = {"test": ["CMD", "false"], "interval": 1, "timeout": 1, "retries": 2, "start_period": 0}
    spec = service(project, name="sick", command=["sleep", "3600"], healthcheck=hc)
    with pytest.raises(T.AgentError) as err:
        # A margin far above Docker's verdict (2 failed probes, 1 s apart), so that even on a
        # busy machine the agent can only fail on that verdict: were it to ignore Docker's
        # "unhealthy" and wait for its own budget, the message below would differ. The
        # budget itself (start_period + (retries + 1) * interval + timeout + margin) is
        # checked with a fake clock in tests/unit/test_agent_operations.py.
        dev.call("apply", {"spec": spec, "health_margin": 120})
    e = err.value
    assert e.kind == "unhealthy" and "sick replica 1" in e.message
    # Docker says unhealthy after `retries` (2) failed probes in a row; the agent may read
    # the container a probe later on a busy machine, hence "at least 2".
    streak = re.search(r"is unhealthy: healthcheck failed (\d+) times in a row \(exit code 1\)", e.message)
    assert streak and int(streak.group(1)) >= 2, e.message
    assert e.details["health"] == "unhealthy" and len(e.details["health_log"]) >= 2


def test_agent_killed_mid_apply_then_reapply_converges(conns, bundle, project):
    conn = conns["dev-1"]
    # Each replica takes ~1s to become healthy, so the apply is still busy when killed.
    spec = service(project, replicas=[1, 2, 3], command=["sh", "-c", "sleep 1; touch /tmp/ok; exec sleep 3600"],
                   healthcheck={"test": ["CMD", "test", "-f", "/tmp/ok"], "interval": 0.5, "timeout": 1, "retries": 10})
    session = T.AgentSession.open(conn, bundle)
    created = []

    def on_event(ev):
        if ev["type"] == "container.create":
            created.append(ev["container"])
            if len(created) == 2:  # between two replicas: kill the agent process on the node
                conn.run(["kill", "-9", str(session.pid)], check=True)

    with pytest.raises(T.AgentProtocolError):
        session.call("apply", {"spec": spec}, on_event=on_event)
    session.close()
    with T.AgentSession.open(conn, bundle) as again:
        res = again.call("apply", {"spec": spec})
        assert sorted(c["replica"] for c in res["containers"]) == [1, 2, 3]
        state = again.call("state", {"project": project})["containers"]
        assert sorted((c["replica"], c["state"], c["health"]) for c in state) == [
            (r, "running", "healthy") for r in (1, 2, 3)
        ]
        assert not again.call("apply", {"spec": spec})["changed"]


def test_pull_by_digest_from_the_authenticated_registry(sessions, project, lab_env):
    import json

    lab = lab_env["lab"]
    user, password = lab.registry_credentials()
    registry = lab.registry
    ctx = ssl.create_default_context(cafile=str(lab.ca_cert))
    req = urllib.request.Request(
        f"https://{registry}/v2/library/busybox/manifests/latest", method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                           "application/vnd.oci.image.manifest.v1+json",
                 "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    digest = urllib.request.urlopen(req, context=ctx, timeout=10).headers["Docker-Content-Digest"]
    ref = f"{registry}/library/busybox@{digest}"
    auth = {"username": user, "password": password, "serveraddress": registry}
    spec = service(project, image=ref, command=["sleep", "3600"])
    spec["pull"] = "always"
    events = []
    s = sessions("test-1")
    res = s.call("apply", {"spec": spec, "auth": auth}, on_event=events.append)
    state = s.call("state", {"project": project})["containers"]
    assert res["containers"][0]["state"] == "running" and state[0]["image"] == ref
    assert [e["status"] for e in events if e["type"] == "image.pull"][-1] == "done"
    assert password not in json.dumps(events + state)


def test_remove_takes_containers_and_network_and_nothing_else(dev, project):
    dev.call("apply", {"spec": service(project, replicas=[1, 2], command=["sleep", "3600"])})
    dev.call("apply", {"spec": service(project, name="db", command=["sleep", "3600"])})
    others_before = {c["name"] for c in dev.call("state", {})["containers"] if c["project"] != project}
    res = dev.call("remove", {"project": project, "env": "dev"})
    assert sorted(c["name"] for c in res["removed"]) == [f"{project}-db-1", f"{project}-web-1", f"{project}-web-2"]
    assert res["networks"] == [f"{project}_default"]
    assert dev.call("state", {"project": project})["containers"] == []
    assert dev.call("networks", {"project": project})["networks"] == []
    others_after = {c["name"] for c in dev.call("state", {})["containers"] if c["project"] != project}
    assert others_before <= others_after
