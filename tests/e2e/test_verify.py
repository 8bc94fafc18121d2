"""`orch verify` against the lab: HTTP checks per node where the service runs, a command
check on the controller with the environment's URLs exported, the result recorded on
the live release in the nodes' ledgers, exit 1 when a check fails.

The service is started with the agent's `apply` directly (the test does not depend on
`orch up`), and a live release is written to the ledger for it.
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from agent.wire.spec import config_hash
from orchestrator.io import images as I
from orchestrator.core import releases as R
from orchestrator.io import ledger as RL
from orchestrator.io import transport as T
from orchestrator.io.agent_bundle import current_bundle
from orchestrator.core.compose import LoadOptions, load_project

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
ORCH = str(Path(sys.executable).parent / "orch")


@pytest.fixture
def deployed(lab, tmp_path):
    project = "e2everify" + uuid.uuid4().hex[:6]
    port = random.randint(30000, 39999)
    (tmp_path / "compose.yaml").write_text(
        f"name: {project}\nservices:\n  web:\n    image: busybox:latest\n    ports: ['{port}:8080']\n")
    envs = tmp_path / "environments"
    envs.mkdir()
    text = (ROOT / "environments" / "test.yaml").read_text()
    if "mirror:" not in text:
        text = text.replace("  credentials_file: /var/lib/orch-lab/registry.env\n",
                            "  credentials_file: /var/lib/orch-lab/registry.env\n  mirror: 10.250.0.1:5001\n")
    text += """verify:
  checks:
    - name: home
      service: web
      http: "http://{{ node.host }}:{{ service.port }}/"
      contains: verify-me
      retries: 5
    - name: smoke
      command: ["%s", "-c", "import os, urllib.request; assert b'verify-me' in urllib.request.urlopen(os.environ['ORCH_URL_WEB']).read(); print('smoke ok', os.environ['ORCH_ENV'])"]
      timeout: 30
      retries: 0
""" % sys.executable
    (envs / "test.yaml").write_text(text)

    from orchestrator.core.environments import load_environment

    env = load_environment("test", envs)
    p = load_project(LoadOptions(working_dir=tmp_path, environ={}))
    pins = I.resolve_images(p, env)  # busybox:latest -> busybox@sha256:... through the mirror
    conns = T.connect_all(list(env.nodes), T.options_from_env(env))
    sessions = T.open_sessions(conns, current_bundle())
    page = base64.b64encode(b"verify-me\n").decode()
    c = {"image": pins["web"], "command": ["httpd", "-f", "-p", "8080", "-h", "/www"], "init": True,
         "stop_grace_period": 1, "networks": [{"name": "default"}], "ports": [{"target": 8080, "published": port}],
         "configs": [{"name": "index", "target": "/www/index.html", "content": page}]}
    spec = {"project": project, "service": "web", "env": "test", "release": "1", "replicas": [1],
            "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}
    sessions["test-1"].call("apply", {"spec": spec})
    ledger = RL.ReleaseLedger(sessions, project, "test")
    rel = R.new_release(ledger.history(), services=pins, manifest=R.render_manifest(p, pins),
                        performer=RL.detect_performer())
    ledger.write(*R.mark_live(ledger.history(), rel))
    yield {"dir": tmp_path, "project": project, "ledger": ledger, "sessions": sessions, "envs": envs, "port": port}
    sessions["test-1"].call("remove", {"project": project, "env": "test"})
    for s in sessions.values():
        s.close()
    T.close_all(conns)


def test_verify_passes_and_is_recorded_on_the_live_release(deployed):
    cp = subprocess.run([ORCH, "verify", "--env", "test", "--json"], cwd=deployed["dir"], capture_output=True,
                        text=True, timeout=600)  # a hang guard
    assert cp.returncode == 0, cp.stdout + cp.stderr
    doc = json.loads(cp.stdout)
    assert doc["ok"] and doc["recorded"] and doc["release"] == 1
    by_name = {r["name"]: r for r in doc["results"]}
    assert by_name["home"]["node"] == "test-1" and by_name["home"]["target"].endswith(f":{deployed['port']}/")
    assert by_name["smoke"]["output"] == ["smoke ok test"]
    live = deployed["ledger"].history().live()
    assert live.verified is True and live.verification["total"] == 2


def test_failing_check_exits_1_and_is_recorded(deployed):
    env_file = deployed["envs"] / "test.yaml"
    env_file.write_text(env_file.read_text().replace("contains: verify-me", "contains: something-else")
                        .replace("retries: 5", "retries: 1"))
    cp = subprocess.run([ORCH, "verify", "--env", "test", "--text"], cwd=deployed["dir"], capture_output=True, text=True,
                        timeout=600)  # a hang guard
    assert cp.returncode == 1
    assert "FAIL home @test-1" in cp.stdout and "does not contain 'something-else'" in cp.stdout
    assert "1 of 2 check(s) failed: home@test-1" in cp.stdout and "Recorded on test #1" in cp.stdout
    assert deployed["ledger"].history().live().verified is False
