"""More of deploying without a registry, on the lab: environments of its own (ydev on dev-1,
yfar on test-1, neither naming a registry address) and a project of its own.

- save -> load -> promote --from-archive: ydev's live release saved (read from dev-1's
  loopback registry), loaded into test-1's, promoted into yfar by the same digest with
  lineage `yfar #1 <- ydev #N`, and it serves.
- prune: a release no environment keeps loses its manifest in dev-1's loopback registry and
  the registry's garbage collection frees bytes, while the live release keeps running;
  --dry-run listed exactly that.
- placement: in an environment of two nodes, a node gets only the images of the services
  it runs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
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
        self.name = "e2exfer2-" + uuid.uuid4().hex[:6]
        self.port = random.randint(420, 499) * 100 + random.randint(10, 49)
        (root / "environments").mkdir(parents=True)
        (root / "environments" / "ydev.yaml").write_text(
            "name: ydev\n" + lab_nodes_yaml(lab, "dev-1")
            + f"registry: {{mirror: {lab.registry_mirror}, ca_file: {lab.ca_cert}}}\n")
        (root / "environments" / "yfar.yaml").write_text("name: yfar\n" + lab_nodes_yaml(lab, "test-1")
                                                         + "registry: none\n")
        (root / "compose.yaml").write_text(textwrap.dedent(f"""\
            services:
              web:
                build: .
                ports: ["{self.port}:8080"]
            """))

    def write(self, text: str, size: int = 1_000_000) -> None:
        (self.dir / "Dockerfile").write_text(DOCKERFILE.format(text=text, size=size))

    def orch(self, *args: str, check: bool = True, extra_env: dict | None = None) -> dict:
        named = [] if args[0] in ("promote", "image") else ["-p", self.name]
        cp = subprocess.run([ORCH, *args, *named, "--json"], cwd=self.dir, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "ORCH_LOCK_WAIT": "600", **(extra_env or {})})
        assert not check or cp.returncode == 0, f"orch {' '.join(args)}: {cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
        return last_json(cp.stdout)

    def digest(self, out: dict) -> str:
        return out["images"]["web"].split("@")[1]


@pytest.fixture
def app(lab, tmp_path):
    a = App(tmp_path / "app", lab)
    yield a
    for env in ("ydev", "yfar"):
        subprocess.run([ORCH, "down", "--env", env, "-p", a.name, "--json"], cwd=a.dir, capture_output=True,
                       timeout=300)
    tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                          text=True).stdout.split()
    mine = [t for t in tags if f"{a.name}/web:" in t]
    if mine:
        subprocess.run(["docker", "rmi", *mine], capture_output=True)
    drop_repository(f"{a.name}/web")


def test_save_load_and_promote_from_an_archive_without_registries(app, lab, tmp_path):
    test = lab.node("test-1").address
    app.write("far v1")
    up = app.orch("up", "--env", "ydev")
    digest = app.digest(up)
    path = tmp_path / "release.tar"
    saved = app.orch("image", "save", "--env", "ydev", "-p", app.name, "-o", str(path))
    assert saved["images"]["web"]["digest"] == digest

    # A truncated copy is bad input: exit 2, nothing pushed into test-1.
    cut = tmp_path / "cut.tar"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    cp = subprocess.run([ORCH, "image", "load", str(cut), "--env", "yfar", "--json"], cwd=app.dir,
                        capture_output=True, text=True, timeout=300)
    assert cp.returncode == 2 and "nothing was changed" in cp.stderr and "Traceback" not in cp.stderr, cp.stderr[-2000:]

    loaded = app.orch("image", "load", str(path), "--env", "yfar")
    assert loaded["images"]["web"]["ref"] == f"127.0.0.1:47055/{app.name}/web@{digest}"
    assert loaded["nodes"]["test-1"]["web"]["blobs_pushed"] >= 1
    assert registry_manifest("test-1", f"{app.name}/web", digest)["layers"]

    promoted = app.orch("promote", app.name, "--to", "yfar", "--from-archive", str(path))
    assert app.digest(promoted) == digest
    assert promoted["lineage"] == f"yfar #1 <- ydev #{up['release']['id']}"
    assert promoted["transferred"]["moves"] == []  # already on test-1: nothing moved
    assert http_get(f"http://{test}:{app.port}/").strip() == "far v1"
    again = app.orch("image", "load", str(path), "--env", "yfar")
    assert again["images"]["web"]["blobs_pushed"] == 0


def test_prune_deletes_an_unkept_release_from_the_loopback_registry_and_frees_bytes(app, lab):
    dev = lab.node("dev-1").address
    repo = f"{app.name}/web"
    digests = []
    for v in (1, 2, 3):
        app.write(f"prune v{v}")
        digests.append(app.digest(app.orch("up", "--env", "ydev")))
    keep_one = {"ORCH_KEEP_IMAGES": "1"}  # only the live release (v3) is kept

    dry = app.orch("prune", "--env", "ydev", "--dry-run", extra_env=keep_one)
    planned = {r["node"]: [f"{m['repository']}@{m['digest']}" for m in r["manifests"]]
               for r in dry["plan"]["node_registries"]}
    assert f"{repo}@{digests[0]}" in planned["dev-1"]  # v1: no environment keeps it, nothing runs it
    assert not any(digests[2] in ref for ref in planned["dev-1"])  # never the live release
    registry_manifest("dev-1", repo, digests[0])  # --dry-run deleted nothing

    done = app.orch("prune", "--env", "ydev", extra_env=keep_one)
    assert done["plan"]["node_registries"] == dry["plan"]["node_registries"]
    assert done["node_registries"]["dev-1"]["deleted"] == planned["dev-1"]
    freed = done["bytes_freed"]["node_registries"]["dev-1"]
    gc = done["node_registries"]["dev-1"]["gc"]
    print(f"\nprune of the loopback registry on dev-1: {len(planned['dev-1'])} manifest(s), {freed} bytes freed "
          f"in {gc['seconds']} s (read-only meanwhile: {gc['read_only']})")
    assert freed >= 1_000_000 and gc["read_only"]  # at least v1's own 1 MB layer
    with pytest.raises(subprocess.CalledProcessError):
        registry_manifest("dev-1", repo, digests[0])
    assert registry_manifest("dev-1", repo, digests[2])["layers"]
    assert http_get(f"http://{dev}:{app.port}/").strip() == "prune v3"  # the live release kept running
    assert app.orch("up", "--env", "ydev")["status"] == "ok"  # the registry is back, writable
    again = app.orch("prune", "--env", "ydev", "--dry-run", extra_env=keep_one)
    assert not any(r["manifests"] for r in again["plan"]["node_registries"])


def test_only_the_nodes_that_run_a_service_get_its_image(lab, tmp_path):
    """zduo (dev-1 and test-1, no registry): web placed on test-1, api on dev-1; each built
    image is pushed straight to the node its constraints allow, and neither node gets the
    other's image."""
    a = App(tmp_path / "duo", lab)
    (a.dir / "environments" / "zduo.yaml").write_text(
        "name: zduo\n" + lab_nodes_yaml(lab, "dev-1", "test-1")
        + f"registry: {{mirror: {lab.registry_mirror}, ca_file: {lab.ca_cert}}}\n")
    (a.dir / "compose.yaml").write_text(textwrap.dedent(f"""\
        services:
          web:
            build: .
            ports: ["{a.port}:8080"]
            deploy: {{placement: {{constraints: ["node.hostname == test-1"]}}}}
          api:
            build: .
            deploy: {{placement: {{constraints: ["node.hostname == dev-1"]}}}}
        """))
    a.write("duo v1", size=100_000)
    try:
        up = a.orch("up", "--env", "zduo")
        web, api = up["images"]["web"].split("@")[1], up["images"]["api"].split("@")[1]
        moves = sorted((m["node"], m["via"], m["digest"]) for m in up["transferred"]["moves"])
        assert moves == [("dev-1", "engine", api), ("test-1", "engine", web)]
        assert registry_manifest("test-1", f"{a.name}/web", web)["layers"]
        assert registry_manifest("dev-1", f"{a.name}/api", api)["layers"]
        with pytest.raises(subprocess.CalledProcessError):
            registry_manifest("test-1", f"{a.name}/api", api)  # test-1 runs no api: not sent
        with pytest.raises(subprocess.CalledProcessError):
            registry_manifest("dev-1", f"{a.name}/web", web)
        assert http_get(f"http://{lab.node('test-1').address}:{a.port}/").strip() == "duo v1"
    finally:
        subprocess.run([ORCH, "down", "--env", "zduo", "-p", a.name, "--json"], cwd=a.dir, capture_output=True,
                       timeout=300)
        tags = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True,
                              text=True).stdout.split()
        mine = [t for t in tags if t.startswith(f"{a.name}/")]
        if mine:
            subprocess.run(["docker", "rmi", *mine], capture_output=True)
        drop_repository(f"{a.name}/web")
        drop_repository(f"{a.name}/api")
