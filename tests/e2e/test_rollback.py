"""Rollback on the lab with a copy of examples/hello.

Release 1 goes dev -> test -> prod. Then the app's code changes (one line of the api)
and prod's configuration changes (a new environment value in prod's overlay); release 2
goes the same way. `orch rollback --env prod` brings back release 1's digests and its
rendered configuration (the value is gone again, although today's files still set it),
pulls nothing (the nodes kept release 1's images), and `orch history --env prod --json`
shows both releases, the rollback and the lineage.
"""

from __future__ import annotations

import pytest

from .hello_app import Hello, events

pytestmark = pytest.mark.e2e

NOTE_CMD = ["sh", "-c", "echo note=${HELLO_NOTE:-unset}"]


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    a = Hello(tmp_path_factory.mktemp("rollback"), "rb")
    yield a
    a.down_everywhere()
    a.remove_local_images()


def pipeline(app) -> dict:
    app.up("dev")
    app.promote("test")
    final, _ = app.promote("prod", "--approve")
    return final


def note(app, env: str) -> set[str]:
    out = set()
    for replica in (1, 2):
        cp = app.run("exec", "--env", env, "-p", app.name, "--replica", str(replica), "api", "--", *NOTE_CMD)
        out.add(cp.stdout.strip())
    return out


@pytest.fixture(scope="module")
def releases(app):
    first = pipeline(app)
    (app.dir / "api" / "app" / "message.txt").write_text("hello from the api, release two\n")
    prod = app.dir / "environments" / "prod.yaml"
    text = prod.read_text()
    marker = '    api:\n      environment:\n        HELLO_ENV: "{{ env.name }}"\n'
    assert marker in text
    prod.write_text(text.replace(marker, marker + '        HELLO_NOTE: "changed-in-release-2"\n'))
    second = pipeline(app)
    return first, second


def test_release_2_runs_new_code_and_config(app, releases):
    first, second = releases
    assert second["release_id"] == 2 and second["lineage"] == "prod #2 <- test #2 <- dev #2"
    assert second["images"]["api"] != first["images"]["api"]
    assert second["images"]["web"] == first["images"]["web"]  # web did not change: same digest
    assert {h["message"] for h in app.health("prod")} == {"hello from the api, release two"}
    assert note(app, "prod") == {"note=changed-in-release-2"}


def test_rollback_brings_back_release_1s_digests_and_rendered_config(app, releases):
    first, second = releases
    final, cp = app.rollback("prod")
    assert final["status"] == "ok" and final["release_id"] == 3
    assert final["images"] == first["images"]
    assert final["lineage"] == "prod #3 (rollback to #1) <- test #1 <- dev #1"
    assert final["release"]["rollback_of"] == 2 and final["release"]["restores"] == 1
    # Release 1's images were kept on the nodes: nothing pulled.
    pulls = [e for e in events(cp.stdout) if e["event"] == "agent" and e.get("type") == "image.pull"]
    assert pulls == []
    running = app.digests("prod")
    assert {s: next(iter(d)) for s, d in running.items()} == {s: r.split("@")[1] for s, r in first["images"].items()}
    assert {h["message"] for h in app.health("prod")} == {"hello from the api"}
    assert note(app, "prod") == {"note=unset"}  # release 1's rendered config, not today's prod.yaml
    assert {h["env"] for h in app.health("prod")} == {"prod"}


def test_history_shows_both_releases_the_rollback_and_the_lineage(app, releases):
    history = app.history("prod")
    rows = {r["id"]: r for r in history["releases"]}
    assert sorted(rows) == [1, 2, 3]
    assert rows[3]["status"] == "live" and rows[3]["command"] == "rollback"
    assert rows[3]["lineage_text"] == "prod #3 (rollback to #1) <- test #1 <- dev #1"
    assert rows[2]["status"] == "rolled_back" and rows[2]["lineage_text"] == "prod #2 <- test #2 <- dev #2"
    assert rows[1]["status"] == "superseded" and rows[1]["lineage_text"] == "prod #1 <- test #1 <- dev #1"
    assert rows[3]["services"] == rows[1]["services"] != rows[2]["services"]
    assert "api (image, config)" in rows[3]["changes"]["summary"]
    text = app.run("history", "--env", "prod", "-p", app.name, "--text").stdout
    assert "rolled back" in text and "prod #3 (rollback to #1) <- test #1 <- dev #1" in text


def test_rolling_back_again_goes_to_release_2(app, releases):
    _, second = releases
    final, _ = app.rollback("prod", "--to", "2")
    assert final["release_id"] == 4 and final["images"] == second["images"]
    assert note(app, "prod") == {"note=changed-in-release-2"}
