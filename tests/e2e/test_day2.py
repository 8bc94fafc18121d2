"""Day-2 commands against PROD: `orch ps`, `orch logs` (and -f) and `orch exec`, with the
replica that runs on prod-2."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid

import pytest

from .helpers import Shop, last_json, sigint_default

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shop(orch, lab, tmp_path_factory):
    s = Shop(orch, tmp_path_factory.mktemp("day2"), "prod", "day2", extra_env={"WORKER_INTERVAL": "1"})
    s.up()
    yield s
    s.down()


def test_ps_lists_the_replica_on_prod_2(shop):
    text = shop.orch("ps", "--text").stdout
    header, *rows = text.splitlines()
    assert header.split()[:4] == ["SERVICE", "REPLICA", "NODE", "STATE"]
    web2 = [r.split() for r in rows if r.split()[:3] == ["web", "2", "prod-2"]]
    assert web2 and web2[0][3] == "running"
    (row,) = [c for c in shop.ps() if (c["service"], c["replica"]) == ("web", 2)]
    assert row["node"] == "prod-2" and row["uptime_s"] is not None
    assert row["image"].startswith("busybox@sha256:") and row["digest"] == row["image"].split("@")[1]  # pinned
    assert row["ports"] == [f"10.250.0.32:{shop.ports['WEB_PORT']}->80/tcp"]


def test_logs_from_every_replica_prefixed_service_replica_at_node(shop):
    out = shop.orch("logs", "web", "--text").stdout.splitlines()
    assert "web-2@prod-2 | web ready, api says: api 1 prod" in out
    assert "web-1@prod-1 | web ready, api says: api 1 prod" in out
    tail = shop.orch("logs", "worker", "--tail", "2", "--text").stdout.splitlines()
    assert tail == ["worker-1@prod-1 | tick"] * 2
    *lines, done = [last_json(ln) for ln in shop.orch("logs", "web", "--json").stdout.splitlines()]
    assert {"event": "log", "version": 1, "service": "web", "replica": 2, "node": "prod-2",
            "container": f"{shop.project}-web-2", "line": "web ready, api says: api 1 prod"} in lines
    assert done["status"] == "ok" and done["command"] == "logs" and done["lines"] == len(lines)
    assert shop.orch("logs", "web", "--since", "1h", "--text").stdout.count("web ready") == 2
    assert shop.orch("logs", "nosuch", check=False).returncode == 2


def test_logs_follow_streams_as_lines_come_until_ctrl_c(shop):
    from .conftest import ORCH

    proc = subprocess.Popen(
        [ORCH, "logs", "--env", "prod", "-f", "-p", shop.project, "--file", str(shop.compose), "--tail", "1",
         "worker", "web", "--text"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **shop.vars},
        preexec_fn=sigint_default)  # Ctrl-C below, whatever the suite's own SIGINT disposition
    seen: list[str] = []

    def read():
        for line in proc.stdout:
            seen.append(line.rstrip("\n"))

    def wait_until(what, condition, timeout=120):  # a wait, not a speed check
        deadline = time.monotonic() + timeout
        while not condition():
            assert proc.poll() is None, f"orch logs -f ended ({proc.returncode}) before {what}: {seen}"
            assert time.monotonic() < deadline, f"no {what} from `orch logs -f` within {timeout} s: {seen}"
            time.sleep(0.2)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until("4 worker ticks and a line of web-2",
                   lambda: seen.count("worker-1@prod-1 | tick") >= 4
                   and any(ln.startswith("web-2@prod-2 | ") for ln in seen))
        # New lines arrive as they are written, while it follows (not all at once at the
        # end): a line written into worker-1's output now, well after the command started,
        # shows up while the command still runs. (--tail 1 gave one old tick at most, so
        # the other ticks came the same way.)
        mark = "mark-" + uuid.uuid4().hex[:8]
        shop.orch("exec", "worker", "--", "sh", "-c", f"echo {mark} > /proc/1/fd/1")
        wait_until(f"line {mark!r} written after it started", lambda: f"worker-1@prod-1 | {mark}" in seen)
        assert proc.poll() is None  # still following
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(120)  # a hang guard: it exits at once on Ctrl-C
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, proc.stderr.read()


def test_exec_runs_in_the_replica_on_prod_2_and_exits_with_its_code(shop):
    (row,) = [c for c in shop.ps() if (c["service"], c["replica"]) == ("web", 2)]
    cp = shop.orch("exec", "web", "--replica", "2", "--", "sh", "-c",
                   "hostname; cat /srv/api.txt; echo oops >&2; exit 3", check=False)
    assert cp.returncode == 3, cp.stderr
    out = cp.stdout.splitlines()
    assert out[0] == row["id"][:12]  # the container's hostname: it ran in web-2 on prod-2
    assert out[1] == "api 1 prod"
    assert "oops" in cp.stderr
    ok = shop.orch("exec", "web", "--replica", "2", "--", "true", check=False)
    assert ok.returncode == 0
    missing = shop.orch("exec", "web", "--replica", "7", "--", "true", check=False)
    assert missing.returncode == 1 and "no container of web replica 7" in missing.stderr
