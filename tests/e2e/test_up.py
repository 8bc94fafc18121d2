"""`orch up` / `plan` / `down` of examples/shop to DEV (one lab node).

Acceptance: from nothing every published port answers and `orch ps --json` lists every
replica on the right node; a second `up` plans no change and starts nothing (same
container IDs); changing one service's environment recreates that service only;
removing a service from the file and `up --remove-orphans` removes it.

Every test module works in its own project (-p e2e-...) on its own host ports, and
takes it down at the end. The helpers (Shop, http_get, last_json) are in tests/e2e/helpers.py.
"""

from __future__ import annotations

import pytest

from .helpers import Shop, http_get, last_json

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shop(orch, lab, tmp_path_factory):
    s = Shop(orch, tmp_path_factory.mktemp("up"), "dev", "up")
    s.first = s.up()
    yield s
    s.down()


def test_deploy_to_dev_from_nothing(shop, lab):
    first = shop.first
    assert first["changed"] == ["api", "db", "migrate", "web", "worker"]
    assert first["plan"]["summary"]["create"] == 5
    host = lab.node("dev-1").address
    assert http_get(f"http://{host}:{shop.ports['DB_PORT']}/") == "db-ok"
    assert http_get(f"http://{host}:{shop.ports['API_PORT']}/") == "api 1 dev"
    assert http_get(f"http://{host}:{shop.ports['WEB_PORT']}/") == "web 1"
    assert http_get(f"http://{host}:{shop.ports['WEB_PORT']}/api.txt") == "api 1 dev"  # web reached api by name
    assert first["addresses"]["web"] == [f"{host}:{shop.ports['WEB_PORT']}"]
    rows = {(c["service"], c["replica"]): c for c in shop.ps()}
    assert sorted(rows) == [("api", 1), ("db", 1), ("migrate", 1), ("web", 1), ("worker", 1)]
    assert {c["node"] for c in rows.values()} == {"dev-1"}
    assert rows[("db", 1)]["health"] == "healthy" and rows[("api", 1)]["health"] == "healthy"
    assert rows[("migrate", 1)]["state"] == "exited" and rows[("migrate", 1)]["exit_code"] == 0
    assert rows[("web", 1)]["state"] == "running" and rows[("web", 1)]["image_id"].startswith("sha256:")


def test_second_up_plans_no_change_and_starts_nothing(shop):
    before = shop.ids()
    plan = last_json(shop.orch("plan", "--json").stdout)["plan"]
    assert plan["noop"] is True and plan["summary"]["unchanged"] == 5
    text = shop.orch("plan", "--text").stdout
    assert "No changes" in text
    again = shop.up()
    assert again["noop"] is True and again["changed"] == []
    assert "apply" not in again["timings"]
    assert shop.ids() == before


def test_state_without_the_sdk_reads_what_the_sdk_reads(shop, lab):
    """agent.engine_reads (state's fast path) and agent.engine.Engine (the docker SDK)
    report every container of the project on a real engine identically."""
    import docker

    from agent.wire import labels as L
    from agent.engine import Engine
    from agent.engine_reads import SocketReads

    host = lab.node("dev-1").docker_host
    sdk = Engine(docker.DockerClient(base_url=host))
    reads = SocketReads.from_env({"DOCKER_HOST": host})
    want = sdk.containers(L.filters(shop.project))
    assert len(want) == 5
    assert reads.containers(L.filters(shop.project)) == want
    assert reads.container(want[0].id) == sdk.container(want[0].id)
    assert reads.container("no-such-container") is None


def test_changing_one_services_environment_recreates_that_service_only(shop):
    before = shop.ids()
    plan = last_json(shop.orch("plan", "--json", env={"WORKER_INTERVAL": "2"}).stdout)["plan"]
    (change,) = [a for a in plan["actions"] if a["action"] != "unchanged"]
    assert change["service"] == "worker" and change["action"] == "recreate"
    assert change["changed"] == ["environment"]
    res = shop.up(env={"WORKER_INTERVAL": "2"})
    assert res["changed"] == ["worker"]
    after = shop.ids()
    worker = f"{shop.project}-worker-1"
    assert after[worker] != before[worker]
    assert {k: v for k, v in after.items() if k != worker} == {k: v for k, v in before.items() if k != worker}
    shop.vars["WORKER_INTERVAL"] = "2"


def test_dry_run_changes_nothing(shop):
    before = shop.ids()
    res = shop.up("--dry-run", env={"SHOP_VERSION": "9"})
    assert res["status"] == "planned" and res["dry_run"] is True
    assert {a["service"] for a in res["plan"]["actions"] if a["action"] == "recreate"} == {"api", "web"}
    assert shop.ids() == before


def test_removing_a_service_and_remove_orphans_removes_it(shop):
    text = shop.compose.read_text()
    start = text.index("  worker:\n")
    end = text.index("\nvolumes:")
    shop.compose.write_text(text[:start] + text[end + 1:])
    try:
        kept = shop.up()
        assert kept["noop"] is True and kept["plan"]["orphans"] == {"worker": ["dev-1"]}
        assert "worker runs on dev-1 but is not in the Compose file" in kept["_stderr"]
        assert f"{shop.project}-worker-1" in shop.ids()
        removed = shop.up("--remove-orphans")
        assert removed["changed"] == ["worker"]
        assert [a["action"] for a in removed["plan"]["actions"] if a["service"] == "worker"] == ["remove"]
        names = shop.ids()
        assert f"{shop.project}-worker-1" not in names and len(names) == 4
    finally:
        shop.compose.write_text(text)


def test_down_removes_containers_and_networks_but_keeps_volumes(shop, ssh):
    res = last_json(shop.orch("down", "--json").stdout)
    assert res["status"] == "ok" and len(res["removed"]) == 4
    assert res["networks"] == {"dev-1": [f"{shop.project}_default"]}
    assert shop.ps() == []
    node = ssh("dev-1")
    vols = node.check(f"docker volume ls -q --filter label=io.orch.project={shop.project}").split()
    assert vols == [f"{shop.project}_dbdata"]
    nets = node.check(f"docker network ls -q --filter label=io.orch.project={shop.project}").split()
    assert nets == []
