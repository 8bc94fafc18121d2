"""Round trips to the nodes (issue 17) on the lab's prod (2 nodes): a no-op `orch up` waits
for at most two agent round trips per node after the connect (the lock, with the ledger
and the state read behind it), as many for 30 services as for 5; and through a proxy
that adds 50 ms of round-trip time (bench/netem.py: 25 ms each way, in each node's
network namespace, the node's host key checked strictly as `[ADDRESS]:PORT`) it still
completes. No timing is asserted."""

from __future__ import annotations

import shutil
import uuid

import pytest

from bench.netem import Proxies, many_services, proxied_env, proxied_known_hosts

from .helpers import ROOT, last_json

pytestmark = pytest.mark.e2e

NOOP_ROUND_TRIPS = 2  # after the connect, per node: today 1 (lock + ledger + state), lock_release unwaited
CHANGE_ROUND_TRIPS = 6  # one-service change: lock, deploying, rollout, last check, live, discard + prune


class Many:
    def __init__(self, orch, tmp, services: int):
        self.orch_ = orch
        self.dir = tmp / f"many{services}"
        self.dir.mkdir()
        (self.dir / "compose.yaml").write_text(many_services(services))
        shutil.copytree(ROOT / "environments", self.dir / "environments")
        self.name = f"rtt-{services}-{uuid.uuid4().hex[:6]}"

    def up(self, *args: str, round_: str = "0") -> dict:
        cp = self.orch_("up", "--env", "prod", "-f", str(self.dir / "compose.yaml"), "-p", self.name, "--json",
                        *args, env={"NO_COLOR": "1", "ROUND": round_}, timeout=900)
        return last_json(cp.stdout)

    def down(self) -> None:
        self.orch_("down", "--env", "prod", "-f", str(self.dir / "compose.yaml"), "-p", self.name, "--json",
                   check=False)


@pytest.fixture(scope="module")
def apps(lab, orch, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rtt")
    made = {n: Many(orch, tmp, n) for n in (5, 30)}
    try:
        for app in made.values():
            first = app.up()
            assert first["status"] == "ok" and first["new_release"], first
        yield made
    finally:
        for app in made.values():
            app.down()


def after_connect(final: dict) -> dict[str, int]:
    return {node: t["after_connect"]["round_trips"] for node, t in final["round_trips"].items()}


def noop(app, *args: str) -> dict:
    """A no-op re-run; once more when the first re-applied the mesh another project of the
    shared prod changed meanwhile."""
    final = app.up(*args)
    if not final.get("noop") and (final.get("plan") or {}).get("mesh"):
        final = app.up(*args)
    assert final["status"] == "ok" and final["noop"] and not final["new_release"], final
    return final


def test_a_noop_waits_for_a_handful_of_round_trips_whatever_the_services(apps):
    few, many = noop(apps[5]), noop(apps[30])
    assert set(after_connect(few)) == {"prod-1", "prod-2"}
    assert max(after_connect(few).values()) <= NOOP_ROUND_TRIPS, few["round_trips"]
    assert after_connect(many) == after_connect(few), (few["round_trips"], many["round_trips"])
    for final in (few, many):  # the connect: the agent's hello, no state read before the lock
        assert all(t["connect"] == {"requests": 1, "round_trips": 1} for t in final["round_trips"].values())
        assert all(t["after_connect"]["sessions"] == 0 for t in final["round_trips"].values())


def test_a_noop_through_50_ms_of_latency_completes(apps, lab, tmp_path):
    app = apps[5]
    known = proxied_known_hosts(lab, tmp_path / "known_hosts")
    envs = proxied_env(app.dir / "environments" / "prod.yaml", tmp_path / "envs", known, lab)
    with Proxies(lab):
        final = noop(app, "--environments", str(envs))
    assert max(after_connect(final).values()) <= NOOP_ROUND_TRIPS, final["round_trips"]


def test_a_one_service_change_takes_as_many_round_trips_whatever_the_services(apps):
    mark = uuid.uuid4().hex[:6]
    changed = {n: apps[n].up(round_=mark) for n in (5, 30)}
    for n, final in changed.items():
        assert final["status"] == "ok" and final["new_release"] and final["changed"] == [f"s{n - 1:02d}"], final
    assert max(after_connect(changed[5]).values()) <= CHANGE_ROUND_TRIPS, changed[5]["round_trips"]
    assert max(after_connect(changed[30]).values()) == max(after_connect(changed[5]).values()), (
        changed[5]["round_trips"], changed[30]["round_trips"])
