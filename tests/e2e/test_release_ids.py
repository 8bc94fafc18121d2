"""Release ids on the lab's prod agents: an id is never given to a second release (the
agents' compare-and-set), whatever the controllers did. Own project name per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from orchestrator.core import releases as R
from orchestrator.io import ledger as RL
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle
from orchestrator.core.environments import load_environment

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def sessions():
    env = load_environment("prod", ROOT / "environments")
    conns = T.connect_all(list(env.nodes), T.options_from_env(env))
    opened = T.open_sessions(conns, current_bundle())
    yield opened
    for s in opened.values():
        s.close()
    T.close_all(conns)


def test_two_controllers_numbering_from_the_same_history(sessions):
    project = "e2e-ids-" + uuid.uuid4().hex[:6]
    one, two = RL.ReleaseLedger(sessions, project, "prod"), RL.ReleaseLedger(sessions, project, "prod")
    h1, h2 = one.history(), two.history()
    manifest = {"name": project, "services": {"web": {"image": f"r/x@{DIGEST}"}}}
    r1 = R.new_release(h1, services={"web": f"r/x@{DIGEST}"}, manifest=manifest, performer={"user": "ada", "host": "a"})
    r2 = R.new_release(h2, services={"web": f"r/y@{DIGEST}"}, manifest=manifest, performer={"user": "bob", "host": "b"})
    assert r1.id == r2.id == 1
    assert one.write(r1).stored_on == ["prod-1", "prod-2"]
    with pytest.raises(R.LedgerError) as err:
        two.write(r2)
    assert "taken by another release" in err.value.message and "ada" in err.value.message
    for node, s in sessions.items():
        got = s.call("release_get", {"env": "prod", "project": project, "id": 1})["release"]
        assert got["services"] == r1.services and got["performer"]["user"] == "ada", node
    # the second controller reads again and numbers after it
    r2 = R.new_release(two.history(), services=r2.services, manifest=manifest, performer=r2.performer)
    assert r2.id == 2 and two.write(r2).stored_on == ["prod-1", "prod-2"]
