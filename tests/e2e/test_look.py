"""`orch stats`, `top`, `inspect`, `port` against examples/shop on PROD (two lab nodes):
every container of the project on both nodes, text and JSON, asserted on content; the live
`orch stats` stream ended with Ctrl-C; a secret in the environment masked by `inspect`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

import pytest

from .conftest import ORCH
from .helpers import Shop, last_json, sigint_default

pytestmark = pytest.mark.e2e

TOKEN = "tok-e2e-look-5f1c9a"  # api's SHOP_API_TOKEN: never printed


@pytest.fixture(scope="module")
def shop(orch, lab, tmp_path_factory):
    s = Shop(orch, tmp_path_factory.mktemp("look"), "prod", "look", extra_env={"SHOP_API_TOKEN": TOKEN})
    text = s.compose.read_text()
    s.compose.write_text(text.replace("      SHOP_MODE: standard\n",
                                      "      SHOP_MODE: standard\n      SHOP_API_TOKEN: ${SHOP_API_TOKEN}\n", 1))
    s.up()
    yield s
    s.down()


def _json(shop, *args):
    return last_json(shop.orch(*args, "--json").stdout)


def test_stats_one_sample_of_every_container_on_both_nodes(shop):
    doc = _json(shop, "stats", "--no-stream")
    assert (doc["status"], doc["command"], doc["environment"], doc["project"]) == ("ok", "stats", "prod", shop.project)
    rows = {(c["service"], c["replica"], c["node"]): c for c in doc["containers"]}
    assert sorted(rows) == [("api", 1, "prod-1"), ("db", 1, "prod-1"), ("migrate", 1, "prod-1"),
                            ("web", 1, "prod-1"), ("web", 2, "prod-2"), ("worker", 1, "prod-1")]
    done = rows[("migrate", 1, "prod-1")]
    assert done["state"] == "exited" and done["cpu_percent"] is None and done["memory_used"] is None
    for key, c in rows.items():
        if key[0] == "migrate":
            continue
        assert c["state"] == "running", c
        assert 0.0 <= c["cpu_percent"] < 400.0, c
        assert 0 < c["memory_used"] <= c["memory_limit"] and 0.0 <= c["memory_percent"] <= 100.0, c
        assert c["pids"] >= 1 and c["block_read"] >= 0 and c["block_write"] >= 0, c
        assert c["net_rx"] >= 0 and c["net_tx"] >= 0, c
    assert rows[("web", 2, "prod-2")]["net_rx"] > 0  # it fetched api's page from prod-1 at start

    text = shop.orch("stats", "web", "--no-stream", "--text").stdout.splitlines()
    assert text[0].split()[:4] == ["SERVICE", "REPLICA", "NODE", "STATE"] and "MEM USAGE / LIMIT" in text[0]
    assert [ln.split()[:4] for ln in text[1:]] == [["web", "1", "prod-1", "running"], ["web", "2", "prod-2", "running"]]
    assert all(re.search(r"\s\d+\.\d\d%\s+\d+(\.\d)?[KMG]?i?B / \d+\.\d[KMGT]iB\s", ln) for ln in text[1:]), text


def test_stats_streams_until_ctrl_c(shop):
    env = {**os.environ, **shop.vars}
    p = subprocess.Popen([ORCH, "stats", "--env", "prod", "--file", str(shop.compose), "-p", shop.project, "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=sigint_default)  # it gets a Ctrl-C below
    try:
        lines = [p.stdout.readline(), p.stdout.readline()]
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    events = [json.loads(ln) for ln in lines]
    assert [e["event"] for e in events] == ["stats", "stats"]
    assert all(len(e["containers"]) == 6 for e in events)
    final = last_json(out)
    assert final["status"] == "ok" and final["command"] == "stats" and len(final["containers"]) == 6


def test_top_lists_each_replicas_processes(shop):
    doc = _json(shop, "top", "web")
    rows = doc["containers"]
    assert [(r["service"], r["replica"], r["node"], r["name"]) for r in rows] == [
        ("web", 1, "prod-1", f"{shop.project}-web-1"), ("web", 2, "prod-2", f"{shop.project}-web-2")]
    for r in rows:
        cmd = r["titles"].index("CMD")
        assert any("httpd -f -p 80" in p[cmd] for p in r["processes"]), r
    text = shop.orch("top", "web/2", "--text").stdout
    assert text.startswith(f"web-2@prod-2 ({shop.project}-web-2)\nUID") and "httpd -f -p 80" in text


def test_inspect_shows_orchs_view_and_masks_the_secret(shop):
    doc = _json(shop, "inspect", "api")
    (row,) = doc["containers"]
    assert (row["service"], row["replica"], row["node"], row["state"]) == ("api", 1, "prod-1", "running")
    assert row["release"] == "1" and len(row["config_hash"]) >= 12 and "@sha256:" in row["image"]
    engine = row["engine"]
    assert engine["Id"] == row["id"] and engine["Name"] == f"/{shop.project}-api-1"
    assert engine["Config"]["Labels"]["io.orch.env"] == "prod"
    assert "SHOP_API_TOKEN=***" in engine["Config"]["Env"] and "SHOP_MODE=prod" in engine["Config"]["Env"]
    text = shop.orch("inspect", "web/2", "--text").stdout
    assert text.startswith("web-2@prod-2 (") and f"container    {shop.project}-web-2" in text
    assert '"Image": ' in text
    for out in (str(doc), text, shop.orch("inspect", "api", "--text").stdout):
        assert TOKEN not in out


def test_port_per_replica_and_node(shop, lab):
    web = shop.ports["WEB_PORT"]
    rows = _json(shop, "port", "web")["containers"]
    # one binding per address family the engine listens on (0.0.0.0, and [::] with IPv6)
    assert [(r["replica"], r["node"], r["host"], {(p["target"], p["protocol"], p["published"]) for p in r["ports"]})
            for r in rows] == [(1, "prod-1", lab.node("prod-1").address, {(80, "tcp", web)}),
                               (2, "prod-2", lab.node("prod-2").address, {(80, "tcp", web)})]
    assert all("0.0.0.0" in {p["host_ip"] for p in r["ports"]} for r in rows)
    text = shop.orch("port", "api", "--text").stdout.splitlines()
    api = shop.ports["API_PORT"]
    assert text[0].split() == ["SERVICE", "REPLICA", "NODE", "PORT", "BOUND", "REACH", "AT"]
    assert ["api", "1", "prod-1", f"{api}/tcp", f"0.0.0.0:{api}", f"{lab.node('prod-1').address}:{api}"] in [
        ln.split() for ln in text[1:]]


def test_bad_input_exits_2_and_touches_nothing(shop):
    for args, message in ((("inspect", "nope"), "no such service: nope"), (("top", "web/3"), "no replica 3"),
                          (("port", "web/0"), "number from 1")):
        cp = shop.orch(*args, "--json", check=False)
        assert cp.returncode == 2, cp.stderr
        assert message in last_json(cp.stdout)["error"]["message"]
