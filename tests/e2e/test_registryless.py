"""Deploying without a registry on the lab: environments of its own (xdev on dev-1, xtest on
test-1, xprod on prod-1 and prod-2, none naming a registry address) and a project of its own, built from the lab's
busybox. up, change one line, up again (only the changed layer travels: bytes sent within
1.2x that layer, printed), promote to xtest and on to xprod (the same digest, copied from
dev-1's, then test-1's loopback registry), rollback, and an `orch up` killed mid-transfer that a re-run completes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.helpers import REGISTRYLESS_DOCKERFILE as DOCKERFILE
from tests.e2e.helpers import drop_repository, http_get, lab_nodes_yaml, last_json, registry_manifest

pytestmark = pytest.mark.e2e

ORCH = str(Path(sys.executable).parent / "orch")


class App:
    def __init__(self, root: Path, lab):
        self.dir = root
        self.name = "e2exfer-" + uuid.uuid4().hex[:6]
        self.port = random.randint(420, 499) * 100 + random.randint(50, 99)
        (root / "environments").mkdir(parents=True)
        (root / "environments" / "xdev.yaml").write_text(
            "name: xdev\n" + lab_nodes_yaml(lab, "dev-1")
            + f"registry: {{mirror: {lab.registry_mirror}, ca_file: {lab.ca_cert}}}\n")
        (root / "environments" / "xtest.yaml").write_text(
            "name: xtest\npromote_from: xdev\n" + lab_nodes_yaml(lab, "test-1") + "registry: none\n")
        # Two nodes: the image reaches the second by a registry-to-registry copy. The nodes are
        # prod's too, so the environment's mesh takes a range and port of its own.
        (root / "environments" / "xprod.yaml").write_text(
            "name: xprod\npromote_from: xtest\n" + lab_nodes_yaml(lab, "prod-1", "prod-2") + "registry: none\n"
            + "mesh: {cidr: 10.192.0.0/12, port: 51823}\n")
        (root / "compose.yaml").write_text(textwrap.dedent(f"""\
            services:
              web:
                build: .
                ports: ["{self.port}:8080"]
                deploy: {{mode: global}}
            """))

    def write(self, text: str, size: int = 1_000_000) -> None:
        (self.dir / "Dockerfile").write_text(DOCKERFILE.format(text=text, size=size))

    def orch(self, *args: str, check: bool = True) -> dict:
        named = [] if args[0] == "promote" else ["-p", self.name]
        cp = subprocess.run([ORCH, *args, *named, "--json"], cwd=self.dir, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "ORCH_LOCK_WAIT": "600"})
        assert not check or cp.returncode == 0, f"orch {' '.join(args)}: {cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
        return last_json(cp.stdout)

    def digest(self, out: dict) -> str:
        return out["images"]["web"].split("@")[1]


@pytest.fixture
def app(lab, tmp_path):
    a = App(tmp_path / "app", lab)
    yield a
    for env in ("xdev", "xtest", "xprod"):
        subprocess.run([ORCH, "down", "--env", env, "-p", a.name, "--json"], cwd=a.dir, capture_output=True,
                       timeout=300)
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                          text=True).stdout.split()
    mine = [t for t in tags if f"{a.name}/web:" in t]
    if mine:
        subprocess.run(["docker", "rmi", *mine], capture_output=True)
    drop_repository(f"{a.name}/web")


def test_up_change_promote_rollback_and_a_killed_transfer(app, lab):
    dev, test = lab.node("dev-1").address, lab.node("test-1").address
    app.write("xfer v1")
    first = app.orch("up", "--env", "xdev")
    d1 = app.digest(first)
    assert first["images"]["web"].startswith(f"127.0.0.1:47055/{app.name}/web@sha256:")
    assert first["transferred"]["moves"][0]["via"] == "engine"
    assert http_get(f"http://{dev}:{app.port}/").strip() == "xfer v1"

    # One line changed: only its layer (about 1 MB of random bytes) goes to dev-1.
    app.write("xfer v2")
    second = app.orch("up", "--env", "xdev")
    d2 = app.digest(second)
    assert d2 != d1
    repo = f"{app.name}/web"
    old = {ly["digest"] for ly in registry_manifest("dev-1", repo, d1)["layers"]}
    new = [ly for ly in registry_manifest("dev-1", repo, d2)["layers"] if ly["digest"] not in old]
    changed = sum(ly["size"] for ly in new)
    sent = second["transferred"]["bytes_sent"]
    print(f"\nregistry-less second up: {sent} bytes sent for a changed layer of {changed} bytes "
          f"({sent / changed:.3f}x)")
    assert len(new) == 1 and sent <= 1.2 * changed
    assert http_get(f"http://{dev}:{app.port}/").strip() == "xfer v2"

    # Promotion: the bytes that ran in xdev, copied from dev-1's registry: the same digest.
    promoted = app.orch("promote", app.name, "--to", "xtest")
    assert app.digest(promoted) == d2
    assert [m["via"] for m in promoted["transferred"]["moves"]] == ["xdev/dev-1"]
    assert http_get(f"http://{test}:{app.port}/").strip() == "xfer v2"

    # And on to xprod's two nodes, copied from test-1: the digest that passed dev and test.
    prod = app.orch("promote", app.name, "--to", "xprod")
    assert app.digest(prod) == d2
    for n in ("prod-1", "prod-2"):
        assert http_get(f"http://{lab.node(n).address}:{app.port}/").strip() == "xfer v2"
        assert registry_manifest(n, repo, d2)["layers"], n
    history = app.orch("history", "--env", "xprod")
    assert "xtest" in json.dumps(history["releases"][0]), history["releases"][0]

    # Rollback: release 1's digest, still in dev-1's loopback registry.
    rolled = app.orch("rollback", "--env", "xdev")
    assert app.digest(rolled) == d1
    assert http_get(f"http://{dev}:{app.port}/").strip() == "xfer v1"

    # A transfer killed mid-layer (the controller and its SSH connections gone): the re-run
    # completes, and the release it deploys runs.
    app.write("xfer v3", size=60_000_000)
    proc = subprocess.Popen([ORCH, "up", "--env", "xdev", "-p", app.name, "--json"], cwd=app.dir,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "ORCH_LOCK_WAIT": "600"})
    killed_at = None
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        ev = json.loads(line) if line.startswith("{") else {}
        if ev.get("event") == "transfer" and 0 < ev.get("bytes", 0) < ev.get("total", 0):
            proc.send_signal(signal.SIGKILL)
            killed_at = ev["bytes"]
            break
        assert time.monotonic() < deadline
    proc.wait(30)
    assert killed_at is not None, "the transfer ended before it could be killed"
    third = app.orch("up", "--env", "xdev")
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                          text=True).stdout.split()
    assert not [t for t in tags if t.startswith("127.0.0.1:") and f"/{app.name}/web:" in t]  # no forward's tag left
    assert third["status"] == "ok" and app.digest(third) not in (d1, d2)
    assert http_get(f"http://{dev}:{app.port}/").strip() == "xfer v3"
