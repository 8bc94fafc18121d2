"""The whole pipeline on the lab with a copy of examples/hello (two built services,
verify checks, prod gated on verification and approval):

up dev (build, push, pin) -> verify dev -> promote test -> verify test -> promote prod
(refused with exit 3 without --approve; done with it). The digests running in prod
equal those in test and dev (from `orch ps --json` on each), nothing is rebuilt on the
way, every release is in its environment's ledger with its lineage, and promoting what
is already live is a no-op that says so.
"""

from __future__ import annotations

import pytest

from .hello_app import HOSTS, Hello, events
from .helpers import http_get

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    a = Hello(tmp_path_factory.mktemp("pipeline"), "pipe")
    yield a
    a.down_everywhere()
    a.remove_local_images()


@pytest.fixture(scope="module")
def dev(app):
    final, cp = app.up("dev")
    return final, cp


def test_up_dev_builds_pushes_pins_and_records_release_1(app, dev):
    final, cp = dev
    assert final["status"] == "ok" and final["release_id"] == 1 and final["new_release"]
    assert set(final["images"]) == {"api", "web"}
    for svc, ref in final["images"].items():
        assert ref.startswith(f"10.250.0.1:5000/{app.name}/{svc}@sha256:")
    assert {p["service"] for p in final["pushed"]} == {"api", "web"}
    # order: images before any connection, the lock before the state, verify after
    phases = [e["phase"] for e in events(cp.stdout) if e["event"] == "phase"]
    assert phases.index("images") < phases.index("connect") < phases.index("lock") < phases.index("apply")
    assert phases[-1] == "verify" and final["verification"]["ok"] is True
    assert "hello from orch" in http_get(f"http://{HOSTS['dev'][0]}:{app.web_port}/")
    rel = final["release"]
    assert rel["status"] == "live" and rel["verified"] is True and rel["command"] == "up"


def test_verify_dev_records_on_the_live_release(app, dev):
    report, _ = app.verify("dev")
    assert report["ok"] and report["recorded"] and report["release"] == 1 and report["total"] == 2


def test_a_second_up_is_a_no_op_without_a_new_release(app, dev):
    final, _ = app.up("dev")
    assert final["noop"] and not final["new_release"] and final["release_id"] == 1
    assert "already live in dev as dev #1" in final["message"]


def test_promote_to_test_then_prod_with_approval(app, dev):
    dev_final, _ = dev
    images = dev_final["images"]

    test_final, cp = app.promote("test")
    assert test_final["status"] == "ok" and test_final["source"] == {"env": "dev", "id": 1}
    assert test_final["images"] == images and test_final["lineage"] == "test #1 <- dev #1"
    assert not any(e.get("phase") == "images" and "building" in e.get("text", "") for e in events(cp.stdout))
    assert test_final["verification"]["ok"] is True  # test verifies on deploy (with its smoke command)
    report, _ = app.verify("test")
    assert report["ok"] and report["release"] == 1
    assert [h["env"] for h in app.health("test")] == ["test"]

    refused, cp = app.promote("prod", check=False)
    assert cp.returncode == 3, cp.stdout + cp.stderr
    assert refused["error"]["details"]["gate"] == "approved"
    assert "gate 'approved' refused promoting test #1 to prod" in cp.stderr and "--approve" in cp.stderr
    assert app.run("ps", "--env", "prod", "-p", app.name, "--text").stdout.startswith("no containers")

    prod_final, _ = app.promote("prod", "--approve")
    assert prod_final["status"] == "ok" and prod_final["lineage"] == "prod #1 <- test #1 <- dev #1"
    assert prod_final["release"]["approval"]["via"] == "--approve"
    assert prod_final["verification"]["ok"] is True
    assert [h["env"] for h in app.health("prod")] == ["prod", "prod"]  # prod's overlay, the same bytes

    # The digests running in prod equal those in test and dev.
    running = {env: app.digests(env) for env in ("dev", "test", "prod")}
    assert running["prod"] == running["test"] == running["dev"]
    assert all(len(d) == 1 for d in running["prod"].values())  # both replicas on the same digest
    assert {s: next(iter(d)) for s, d in running["prod"].items()} == {s: r.split("@")[1] for s, r in images.items()}

    history = app.history("prod")
    (rel,) = history["releases"]
    assert rel["lineage_text"] == "prod #1 <- test #1 <- dev #1" and rel["status"] == "live"
    assert rel["source"] == {"env": "test", "id": 1} and rel["approval"]["by"]


def test_promoting_what_is_live_already_is_a_no_op(app):
    again, cp = app.promote("prod", "--approve")
    assert again["status"] == "ok" and not again["new_release"]
    assert "test #1 is already live in prod as prod #1; nothing to do." in again["message"]
    assert [r["id"] for r in app.history("prod")["releases"]] == [1]


def test_lock_status_is_free_after_every_command(app):
    cp = app.run("lock", "status", "--env", "prod", "--json")
    assert '"held": false' in cp.stdout
