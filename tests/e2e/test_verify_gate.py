"""The way out of a pipeline whose test environment has no verify checks, on the lab:
`orch verify --env test` refuses (exit 2, nothing recorded) instead of passing with no
check, `orch promote --to prod` is refused by the `verified` gate (exit 3) with a
message naming both fixes, and once test has a check and a recorded pass the promotion
goes through.

Own project (e2e-verifygate-XXXXXX), own environment files copied from the lab's into a
temp project folder; everything deployed is taken down at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ORCH = str(Path(sys.executable).parent / "orch")
CHECK = """verify:
  checks:
    - name: smoke
      command: ["%s", "-c", "import os; assert os.environ['ORCH_ENV'] == 'test'; print('smoke ok')"]
      retries: 0
""" % sys.executable


def final(stdout: str) -> dict:
    return json.loads([ln for ln in stdout.strip().splitlines() if ln.startswith("{")][-1])


@pytest.fixture
def app(lab, tmp_path):
    name = "e2e-verifygate-" + uuid.uuid4().hex[:6]
    (tmp_path / "compose.yaml").write_text(
        f"name: {name}\nservices:\n  app:\n    image: busybox:latest\n    command: [sleep, '3600']\n"
        "    init: true\n    stop_grace_period: 1s\n")
    envs = tmp_path / "environments"
    envs.mkdir()
    for env in ("dev", "test", "prod"):
        shutil.copy(ROOT / "environments" / f"{env}.yaml", envs / f"{env}.yaml")
    assert "verify:" not in (envs / "test.yaml").read_text()  # the lab's test has no checks
    assert "verification: true" in (envs / "prod.yaml").read_text()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ORCH, *args, "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "ORCH_LOCK_WAIT": os.environ.get("ORCH_LOCK_WAIT", "600")})

    yield name, envs, run
    downs = {env: run("down", "--env", env, "-p", name) for env in ("prod", "test")}
    assert all(cp.returncode == 0 for cp in downs.values()), {e: cp.stderr[-2000:] for e, cp in downs.items()}


def test_no_checks_in_test_is_not_a_dead_end_for_prod(app):
    name, envs, run = app
    cp = run("up", "--env", "test", "-p", name)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]

    cp = run("verify", "--env", "test", "-p", name)
    assert cp.returncode == 2, cp.stdout[-3000:] + cp.stderr[-3000:]
    err = final(cp.stdout)["error"]
    assert err["kind"] == "InputError" and "nothing to verify: test has no verify checks" in err["message"]
    assert f"add checks under `verify: checks:` in {envs / 'test.yaml'}" in err["message"]
    assert f"`gates.verification: false`) from prod's environment file ({envs / 'prod.yaml'})" in err["message"]
    assert "nothing to verify" in cp.stderr

    history = final(run("history", "--env", "test", "-p", name).stdout)
    assert [r.get("verification") for r in history["releases"]] == [None]  # nothing recorded

    cp = run("promote", name, "--to", "prod", "--approve")
    assert cp.returncode == 3, cp.stdout[-3000:] + cp.stderr[-3000:]
    err = final(cp.stdout)["error"]
    assert err["details"]["gate"] == "verified" and err["details"]["no_checks"] is True
    assert "it has not been verified, and it cannot be: test has no verify checks" in err["message"]
    assert f"`verify: checks:` in test's environment file ({envs / 'test.yaml'})" in err["fix"]
    assert f"`gates.verification: false`) from prod's environment file ({envs / 'prod.yaml'})" in err["fix"]

    # The first fix: a check in test, a recorded pass, and the gate lets the release through.
    (envs / "test.yaml").write_text((envs / "test.yaml").read_text() + CHECK)
    cp = run("verify", "--env", "test", "-p", name)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    doc = final(cp.stdout)
    assert doc["recorded"] and doc["passed"] == doc["total"] == 1
    cp = run("promote", name, "--to", "prod", "--approve")
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    assert final(cp.stdout)["source"] == {"env": "test", "id": 1}
    ps = final(run("ps", "--env", "prod", "-p", name).stdout)["containers"]
    assert [c["state"] for c in ps] == ["running"]
