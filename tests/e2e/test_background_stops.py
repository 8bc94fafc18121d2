"""`orch up` does not wait for the old container's stop (agent/stops.py's detached helper),
end to end on DEV (dev-1): a SIGTERM-deaf app (busybox httpd as PID 1) behind the node's
ingress, start-first, stop_grace_period 6s.

- the rolling `up` returns while the replaced container is still stopping (it is listed,
  renamed `-prev`, right after), and the node removes it once its stop returned;
- the next `up` at once waits for that (the environment's work lock) and converges, with
  nothing of the previous releases left.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import time
import uuid

import pytest

from .conftest import LOCK_WAIT, ORCH
from .helpers import env_file, get, last_json

pytestmark = pytest.mark.e2e

GRACE = 6
COMPOSE = """\
services:
  web:
    image: busybox
    stop_grace_period: {grace}s
    command: ["sh", "-c", "mkdir -p /w && echo $${{VERSION}} > /w/index.html && exec httpd -f -p 80 -h /w"]
    environment: {{VERSION: "${{VERSION:-v1}}"}}
    ports: ["{port}:80"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/"]
      interval: 1s
      retries: 10
    x-orch:
      ingress: {{port: {port}, health: /}}
"""


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bgstop")
    port = 38200 + int(uuid.uuid4().hex[:4], 16) % 300
    (tmp / "compose.yaml").write_text(textwrap.dedent(COMPOSE.format(grace=GRACE, port=port)))
    env_file(tmp / "environments", lab)
    project = f"e2e-bgstop-{uuid.uuid4().hex[:6]}"

    def run(*args: str, **variables: str) -> subprocess.CompletedProcess:
        cp = subprocess.run([ORCH, *args, "--env", "dev", "-p", project], cwd=tmp, capture_output=True, text=True,
                            timeout=600, env={**os.environ, **LOCK_WAIT, **variables})
        assert cp.returncode == 0, f"orch {args[0]} exited {cp.returncode}:\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
        return cp

    run("up", "--json", VERSION="v1")
    yield project, port, run
    run("down", "--json")


def kept(lab, project: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}} {{.State}}", "--filter",
                          f"label=io.orch.project={project}"], capture_output=True, text=True, check=True,
                         env={**os.environ, "DOCKER_HOST": lab.node("dev-1").docker_host}).stdout
    return sorted(line for line in out.splitlines() if line.split()[0].endswith("-prev"))


def test_up_returns_while_the_old_container_stops_and_the_node_removes_it(app, lab):
    project, port, run = app
    t0 = time.monotonic()
    cp = run("up", "--json", VERSION="v2")
    took = time.monotonic() - t0
    events = [json.loads(ln) for ln in cp.stdout.splitlines() if ln.startswith("{")]
    left = kept(lab, project)
    assert get(lab.node("dev-1").address, port) == (200, "v2\n")
    stopping = [e for e in events if e.get("type") == "container.stopping"]
    assert [e["container"] for e in stopping] == [f"{project}-web-1-prev"] and stopping[0]["background"] is True
    assert not [e for e in events if e.get("phase") == "stops"]  # no wait for the stops at the end
    # Still there (stopping: httpd ignores SIGTERM) when up returned, unless up itself was slow.
    assert left == [f"{project}-web-1-prev running"] or took > GRACE, (left, took)
    deadline = time.monotonic() + GRACE + 20
    while kept(lab, project) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert kept(lab, project) == []  # removed by the node once its stop returned


def test_the_next_up_at_once_waits_for_the_stop_and_converges(app, lab):
    project, port, run = app
    run("up", "--json", VERSION="v3")
    final = last_json(run("up", "--json", VERSION="v4").stdout)  # v3's old container is still stopping
    assert final["status"] == "ok" and final["changed"] == ["web"]
    assert get(lab.node("dev-1").address, port) == (200, "v4\n")
    deadline = time.monotonic() + GRACE + 20
    while kept(lab, project) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert kept(lab, project) == []
    assert [c["state"] for c in last_json(run("ps", "--json").stdout)["containers"]] == ["running"]
