"""`orch up` of examples/shop to PROD (two lab nodes): web's 2 replicas spread over
both, every published port answers, the replica on prod-2 reaches api on prod-1 by
name (through the environment's service mesh), and a second `up` changes nothing on
either node."""

from __future__ import annotations

import time

import pytest

from .helpers import Shop, http_get
from .mesh_diag import mesh_state

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shop(orch, lab, tmp_path_factory):
    s = Shop(orch, tmp_path_factory.mktemp("prod"), "prod", "prod")
    s.first = s.up()
    yield s
    s.down()


def test_replicas_spread_over_both_nodes_and_the_rest_on_the_first(shop):
    assert shop.first["changed"] == ["api", "db", "migrate", "web", "worker"]
    placed = sorted((c["service"], c["replica"], c["node"]) for c in shop.ps())
    assert placed == [("api", 1, "prod-1"), ("db", 1, "prod-1"), ("migrate", 1, "prod-1"),
                      ("web", 1, "prod-1"), ("web", 2, "prod-2"), ("worker", 1, "prod-1")]


def test_every_published_port_answers_on_its_node(shop, lab):
    p1, p2 = lab.node("prod-1").address, lab.node("prod-2").address
    web = shop.ports["WEB_PORT"]
    assert shop.first["addresses"]["web"] == [f"{p1}:{web}", f"{p2}:{web}"]
    assert shop.first["addresses"]["api"] == [f"{p1}:{shop.ports['API_PORT']}"]
    assert http_get(f"http://{p1}:{shop.ports['DB_PORT']}/") == "db-ok"
    assert http_get(f"http://{p1}:{shop.ports['API_PORT']}/") == "api 1 prod"
    for host in (p1, p2):
        assert http_get(f"http://{host}:{web}/") == "web 1"
        # each web replica fetched api's page at start, by service name: on prod-2 through
        # the environment's service mesh (api runs on prod-1)
        got = http_get(f"http://{host}:{web}/api.txt")
        if got != "api 1 prod":  # say where it broke: wget's own words, the deploy's events, the mesh
            logs = shop.orch("logs", "web", check=False)
            events = [(e.get("t"), e.get("node"), e.get("service"), e.get("type") or e.get("event"))
                      for e in shop.first["_events"] if e.get("service") in ("api", "web")]
            raise AssertionError(f"web on {host} fetched {got!r} at its start\n{logs.stdout}{logs.stderr}\n"
                                 f"{events}\n{mesh_state(('prod-1', 'prod-2'))}")


def test_second_up_on_both_nodes_changes_nothing(shop):
    before = shop.ids()
    t0 = time.monotonic()
    again = shop.up()
    wall = time.monotonic() - t0
    assert again["noop"] is True and again["changed"] == [] and shop.ids() == before
    print(f"no-op orch up on prod (2 nodes): {wall:.2f}s wall, {again['duration_s']:.2f}s in the command")


def test_scaling_web_down_removes_the_replica_on_prod_2_and_back_up_recreates_it(shop):
    env_file = shop.dir / "environments" / "prod.yaml"
    text = env_file.read_text()
    env_file.write_text(text.replace("replicas: 2", "replicas: 1"))
    try:
        res = shop.up()
        removed = [a for a in res["plan"]["actions"] if a["action"] == "remove"]
        assert [(a["service"], a["replica"], a["node"], a["reason"]) for a in removed] == [
            ("web", 2, "prod-2", "scaled down")]
        assert sorted((c["service"], c["node"]) for c in shop.ps() if c["service"] == "web") == [("web", "prod-1")]
    finally:
        env_file.write_text(text)
    back = shop.up()
    assert [(a["action"], a["node"]) for a in back["plan"]["actions"] if a["action"] != "unchanged"] == [
        ("create", "prod-2")]
