"""`orch prune` on the lab: a project of its own (one service built from the lab's busybox)
deployed three times on dev (the first with a second service, left behind and then
stopped); with ORCH_KEEP_IMAGES=1 `orch prune --dry-run` lists the two old images, the
stopped container and its secret files on dev-1 and the two manifests in the lab registry, `orch prune` removes
exactly those (and garbage-collects the registry), and the live release keeps running."""

from __future__ import annotations

import random
import shutil
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.e2e.helpers import http_get, last_json

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEEP_ONE = {"ORCH_KEEP_IMAGES": "1"}


@pytest.fixture
def app(lab, orch, tmp_path):
    d = tmp_path / "app"
    (d / "web").mkdir(parents=True)
    shutil.copytree(ROOT / "environments", d / "environments")
    project = "e2e-prune-" + uuid.uuid4().hex[:6]
    port = random.randint(400, 449) * 100 + 7
    web = textwrap.dedent(f"""\
        name: {project}
        services:
          web:
            build: {{context: ./web}}
            command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
            ports: ["{port}:8080"]
            init: true
            stop_grace_period: 1s
        """)
    # v1 only: a service with a secret file, left behind (no --remove-orphans) and then stopped
    side = textwrap.indent(textwrap.dedent("""\
        side:
          image: busybox
          command: ["sleep", "3600"]
          init: true
          stop_grace_period: 1s
          secrets: [token]
        """), "  ") + "secrets:\n  token: {file: ./token.txt}\n"
    (d / "token.txt").write_text("prune-e2e-token\n")
    (d / "compose.yaml").write_text(web + side)
    (d / "web" / "Dockerfile").write_text("FROM busybox\nCOPY index.html /www/index.html\n")

    def run(*args, check=True, env=None):
        return orch(args[0], "--env", "dev", "--file", str(d / "compose.yaml"), *args[1:], check=check, env=env)

    images: dict = {}
    yield {"dir": d, "project": project, "port": port, "run": run, "images": images, "web_only": web}
    run("down", "--volumes", "--json", check=False)
    client = registry(lab)  # the manifests prune kept (the live release's) go too
    for ref in images.values():
        repo, _, digest = ref[len(lab.registry) + 1:].partition("@")
        client.delete_manifest(repo, digest)
    from orchestrator.io import images as I

    api = I.docker_client().api  # and the tags the host engine built (layers stay cached)
    for image in api.images():
        for tag in image.get("RepoTags") or []:
            if f"/{project}/" in tag:
                api.remove_image(tag)


def registry(lab):
    from orchestrator.core.environments import RegistryCredentials
    from orchestrator.io.registry_client import RegistryClient

    user, password = lab.registry_credentials()
    return RegistryClient(lab.registry, ca_file=str(lab.ca_cert), credentials=RegistryCredentials(user, password))


def test_dry_run_lists_exactly_what_prune_removes_and_the_live_release_keeps_running(app, lab, ssh):
    d, run, images = app["dir"], app["run"], app["images"]
    for v in (1, 2, 3):
        (d / "web" / "index.html").write_text(f"prune v{v} {app['project']}\n")
        final = last_json(run("up", "--json", "--version", f"v{v}").stdout)
        assert final["status"] == "ok"
        images[v] = final["images"]["web"]
        (d / "compose.yaml").write_text(app["web_only"])
    side = f"{app['project']}-side-1"
    dev1 = ssh("dev-1")
    assert dev1.run(f"docker stop {side}")[0] == 0
    assert http_get(f"http://{lab.node('dev-1').address}:{app['port']}/") == f"prune v3 {app['project']}"
    before = last_json(run("ps", "--json").stdout)["containers"]

    dry = last_json(run("prune", "--dry-run", "--json", env=KEEP_ONE).stdout)
    assert dry["status"] == "planned" and dry["dry_run"] is True and dry["removed"] == {}
    plan = dry["plan"]
    [node] = [n for n in plan["nodes"] if n["items"]]
    assert node["node"] == "dev-1"
    assert sorted(i["label"] for i in node["items"] if i["kind"] == "images") == sorted([images[1], images[2]])
    assert [(i["kind"], i["name"]) for i in node["items"] if i["kind"] != "images"] == [
        ("containers", side), ("files", f"{app['project']}/side")]
    reg = plan["registry"]
    assert reg["address"] == lab.registry and reg["gc"] == "lab"
    assert sorted(f"{lab.registry}/{m['repository']}@{m['digest']}" for m in reg["manifests"]) == sorted(
        [images[1], images[2]])

    done = last_json(run("prune", "--json", env=KEEP_ONE).stdout)
    assert done["status"] == "ok" and done["plan"] == plan  # the plan carried out is the one printed
    assert done["removed"] == {"dev-1": {k: [i["name"] for i in node["items"] if i["kind"] == k]
                                         for k in ("containers", "images", "volumes", "files")}}
    assert dev1.run(f"docker inspect {side}")[0] != 0
    assert done["refused"] == {} and done["registry_errors"] == []
    assert sorted(done["deleted"]) == sorted(f"{m['repository']}@{m['digest']}" for m in reg["manifests"])
    assert done["gc_ran"] is True and isinstance(done["bytes_freed"]["registry"], int)
    assert done["bytes_freed"]["nodes"]["dev-1"] > 0

    # the live release keeps running, untouched; its image stays in the registry
    assert http_get(f"http://{lab.node('dev-1').address}:{app['port']}/") == f"prune v3 {app['project']}"
    after = last_json(run("ps", "--json").stdout)["containers"]
    assert [(c["id"], c["state"]) for c in after] == [(c["id"], c["state"]) for c in before if c["service"] == "web"]
    again = last_json(run("prune", "--dry-run", "--json", env=KEEP_ONE).stdout)
    assert not any(n["items"] for n in again["plan"]["nodes"]) and again["plan"]["registry"]["manifests"] == []
    client = registry(lab)
    for v, present in ((1, False), (2, False), (3, True)):
        repo, _, digest = images[v][len(lab.registry) + 1:].partition("@")
        assert (client.manifest_digest(repo, digest) is not None) is present, v
