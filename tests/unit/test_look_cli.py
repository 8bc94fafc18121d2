"""`orch stats`, `top`, `inspect`, `port` through the CLI over two fake prod nodes (the
cli_world fixture): the agent's real operations on FakeEngines, text and JSON, secrets
masked, bad input exit 2."""

import contextlib
import io
import json
import sys

import pytest

from orchestrator.cli import main, output
from tests.unit.fakes import PIPELINE_COMPOSE

# hello's api and web, web with two replicas (one per prod node) and a secret-looking variable
COMPOSE = PIPELINE_COMPOSE.replace(
    '    ports: ["8090:8080"]\n', '    ports: ["8090:8080"]\n    deploy: {replicas: 2}\n'
    '    environment: {SESSION_SECRET: s3cr3t-value, DB_URL: "postgres://app:pw123@db/app", MODE: fast}\n')


class Ran:
    def __init__(self, exit_code, stdout, stderr):
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr
        self.output = stdout + stderr


def cli(*args):
    """The `orch` entry point in this process (exit codes, errors, the secret filter), its
    output captured (not a terminal: JSON unless --text)."""
    out, err = io.StringIO(), io.StringIO()
    old = sys.argv
    sys.argv = ["orch", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
        output.reset()
    return Ran(code, out.getvalue(), err.getvalue())


def final(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def prod(cli_world):
    cli_world.write_compose(COMPOSE)
    r = cli("up", "--env", "prod", "--json")
    assert r.exit_code == 0, r.output
    return cli_world


# --------------------------------------------------------------------------- the commands


def test_stats_no_stream_json_and_text(prod):
    r = cli("stats", "--env", "prod", "--no-stream", "--json")
    assert r.exit_code == 0, r.output
    doc = final(r)
    assert (doc["command"], doc["status"], doc["environment"], doc["project"]) == ("stats", "ok", "prod", "hello")
    assert [(c["service"], c["replica"], c["node"]) for c in doc["containers"]] == [
        ("api", 1, "p1"), ("web", 1, "p1"), ("web", 2, "p2")]
    assert {c["cpu_percent"] for c in doc["containers"]} == {25.0}
    assert all(c["memory_used"] == 10 * 2 ** 20 and c["net_rx"] == 1000 and c["host"] for c in doc["containers"])
    assert len(r.stdout.strip().splitlines()) == 1  # only the final object

    for node in prod.nodes.values():
        node.calls.clear()
    r = cli("stats", "web", "--env", "prod", "--no-stream", "--text")
    assert r.exit_code == 0, r.output
    # one service: only its containers are sampled
    assert [a.get("service") for n in ("p1", "p2") for op, a in prod.nodes[n].calls if op == "stats"] == ["web", "web"]
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["SERVICE", "REPLICA", "NODE", "STATE", "CPU"]
    assert [ln.split()[:5] for ln in lines[1:]] == [["web", "1", "p1", "running", "25.00%"],
                                                    ["web", "2", "p2", "running", "25.00%"]]
    assert "10.0MiB / 100.0MiB" in lines[1] and "1.0kB / 2.0kB" in lines[1] and "4.1kB / 8.2kB" in lines[1]


def test_stats_streams_samples_until_interrupted(prod, monkeypatch):
    from orchestrator.app import look

    rounds = []

    def sleep(seconds):
        rounds.append(seconds)
        if len(rounds) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(look.time, "sleep", sleep)
    monkeypatch.setattr(look, "watch_stats", lambda *a, **kw: _watch(*a, sleep=sleep, **kw))
    r = cli("stats", "--env", "prod", "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(ln) for ln in r.stdout.strip().splitlines()]
    assert [ln.get("event") for ln in lines] == ["stats", "stats", None]
    assert lines[-1]["status"] == "ok" and lines[-1]["containers"] == lines[1]["containers"]


_watch = __import__("orchestrator.app.look", fromlist=["watch_stats"]).watch_stats


def test_top_and_port(prod):
    r = cli("top", "web", "--env", "prod", "--json")
    assert r.exit_code == 0, r.output
    rows = final(r)["containers"]
    assert [(x["service"], x["replica"], x["node"], x["name"]) for x in rows] == [
        ("web", 1, "p1", "hello-web-1"), ("web", 2, "p2", "hello-web-2")]
    assert rows[0]["titles"][-1] == "CMD" and len(rows[0]["processes"]) == 1

    r = cli("top", "web/2", "--env", "prod", "--text")
    assert r.exit_code == 0 and r.stdout == "web-2@p2 (hello-web-2)\nUID   PID  PPID  CMD\nroot  101  100   sh\n"

    r = cli("port", "web", "--env", "prod", "--json")
    assert r.exit_code == 0, r.output
    rows = final(r)["containers"]
    assert [(x["replica"], x["node"], x["host"], [(p["target"], p["published"]) for p in x["ports"]]) for x in rows] \
        == [(1, "p1", "10.250.0.200", [(8080, 8090)]), (2, "p2", "10.250.0.201", [(8080, 8090)])]
    r = cli("port", "web/1", "--env", "prod", "--text")
    assert r.stdout.splitlines() == ["SERVICE  REPLICA  NODE  PORT      BOUND         REACH AT",
                                     "web      1        p1    8080/tcp  0.0.0.0:8090  10.250.0.200:8090"]


def test_inspect_masks_secrets_and_shows_orchs_view(prod):
    r = cli("inspect", "api", "--env", "prod", "--json")
    assert r.exit_code == 0, r.output
    (row,) = final(r)["containers"]
    assert (row["service"], row["replica"], row["node"], row["release"]) == ("api", 1, "p1", "1")
    assert row["config_hash"] and row["image"].startswith("reg.test:5000/hello/api@sha256:")
    env = row["engine"]["Config"]["Env"]
    assert "DB_PASSWORD=***" in env and "HELLO_ENV=prod" in env
    assert "hunter22" not in r.stdout

    r = cli("inspect", "web/2", "--env", "prod", "--text")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("web-2@p2 (10.250.0.201)\n  container    hello-web-2")
    assert "SESSION_SECRET=***" in r.stdout and "postgres://app:***@db/app" in r.stdout and "MODE=fast" in r.stdout
    assert "s3cr3t-value" not in r.stdout and "pw123" not in r.stdout


@pytest.mark.parametrize("args, message", [
    (("inspect", "nope"), "no such service: nope"),
    (("top", "web/3"), "web has no replica 3 on prod"),
    (("port", "web/x"), "the replica must be a number from 1"),
    (("stats", "nope", "--no-stream"), "no such service: nope"),
])
def test_bad_input_exits_2_with_the_fix(prod, args, message):
    r = cli(*args, "--env", "prod", "--json")
    assert r.exit_code == 2
    doc = final(r)
    assert doc["status"] == "failed" and message in doc["error"]["message"] and "Fix: " in doc["error"]["message"]


def test_nothing_deployed(cli_world):
    r = cli("top", "web", "--env", "dev", "--json")
    assert r.exit_code == 1 and "no container of web is deployed on dev" in final(r)["error"]["message"]
    r = cli("stats", "--env", "dev", "--no-stream", "--text")
    assert r.exit_code == 0 and r.stdout.strip() == "no containers of hello on dev"


def test_ask_all_a_failing_node_fails_the_command_and_ctrl_c_stays_ctrl_c():
    from orchestrator.app.look import ask_all
    from orchestrator.io import transport as T

    class Node:
        def __init__(self, raises=None):
            self.raises = raises

        def call(self, op, args):
            if self.raises is not None:
                raise self.raises
            return {"containers": []}

    assert ask_all({"n1": Node(), "n2": Node()}, "stats", {}, "read the stats of") == {
        "n1": {"containers": []}, "n2": {"containers": []}}
    with pytest.raises(T.NodesUnreachable) as err:
        ask_all({"n1": Node(), "n2": Node(T.AgentError("n2", "stats", "engine", "engine down"))}, "stats", {},
                "read the stats of")
    assert "cannot read the stats of 1 of 2 node(s)" in err.value.render() and err.value.exit_code == 1
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the answers are awaited: not a node's failure
        ask_all({"n1": Node(KeyboardInterrupt())}, "stats", {}, "read the stats of")


def test_stats_of_several_services_samples_all_and_shows_those(prod):
    r = cli("stats", "api", "web", "--env", "prod", "--no-stream", "--json")
    assert r.exit_code == 0, r.output
    assert [(c["service"], c["replica"]) for c in final(r)["containers"]] == [("api", 1), ("web", 1), ("web", 2)]
    r = cli("stats", "api", "--env", "prod", "--no-stream", "--json")
    assert [(c["service"], c["node"]) for c in final(r)["containers"]] == [("api", "p1")]
