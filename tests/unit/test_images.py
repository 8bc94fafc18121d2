"""Versions, build planning, build/push against a fake engine and registry, pinning, preflight."""

import subprocess
from pathlib import Path

import pytest

from orchestrator.core import images as IP
from orchestrator.io import images as I
from orchestrator.core.compose import LoadOptions, load_project
from orchestrator.core.environments import parse_environment
from orchestrator.errors import InputError
from orchestrator.io.registry_client import (
    ImageNotFound,
    Layer,
    Manifest,
    PingResult,
    RegistryAuthError,
    RegistryTLSError,
    RegistryUnavailable,
)

PASSWORD = "pa55-w0rd-xyz"
D = {c: "sha256:" + c * 64 for c in "abcdef0123456789"}


def environment(tmp_path, registry="10.250.0.1:5000", mirror="10.250.0.1:5001", extra=""):
    creds = tmp_path / "registry.env"
    creds.write_text(f"ORCH_REGISTRY_USER=orch\nORCH_REGISTRY_PASSWORD={PASSWORD}\n")
    lines = ["name: dev", "nodes: [{name: dev-1, host: 10.250.0.11}]", "registry:"]
    if registry:
        lines.append(f"  address: {registry}")
    lines += ["  username_env: ORCH_REGISTRY_USER", "  password_env: ORCH_REGISTRY_PASSWORD",
              f"  credentials_file: {creds}"]
    if mirror:
        lines.append(f"  mirror: {mirror}")
    path = tmp_path / "dev.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return parse_environment(path)


def project(tmp_path, compose=None, environ=None):
    (tmp_path / "web").mkdir(exist_ok=True)
    (tmp_path / "web" / "Dockerfile").write_text("ARG BASE=busybox\nFROM ${BASE}\nCOPY . /www\n")
    (tmp_path / "compose.yaml").write_text(compose or """
name: hello
services:
  web:
    build:
      context: ./web
      args: {BASE: busybox, FROM_ENV: null, UNSET: null}
      labels: {team: a}
      target: prod
  cache:
    image: busybox:1.36
  pinned:
    image: ghcr.io/org/x@""" + D["a"] + """
  own:
    image: 10.250.0.1:5000/shared/tool:2
""")
    return load_project(LoadOptions(working_dir=tmp_path, environ=environ or {"FROM_ENV": "yes"}))


# --------------------------------------------------------------------------- version


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    r = tmp_path / "repo"
    (r / "app").mkdir(parents=True)
    (r / "app" / "main.txt").write_text("one\n")
    (r / "other").mkdir()
    (r / "other" / "x.txt").write_text("x\n")
    git(r, "init", "-q")
    git(r, "-c", "user.name=t", "-c", "user.email=t@e", "add", ".")
    git(r, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init")
    return r


def test_version_is_the_short_commit_hash_when_clean(repo):
    v = I.compute_version([repo / "app"])
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert v.version == head[:12] and v.source == "git" and not v.dirty


def test_dirty_tree_gets_a_deterministic_content_suffix(repo):
    (repo / "app" / "main.txt").write_text("two\n")
    a = I.compute_version([repo / "app"])
    b = I.compute_version([repo / "app"])
    assert a.dirty and a.version == b.version and "-dirty-" in a.version
    (repo / "app" / "main.txt").write_text("three\n")
    assert I.compute_version([repo / "app"]).version != a.version
    (repo / "app" / "main.txt").write_text("two\n")
    (repo / "app" / "new.txt").write_text("untracked\n")
    c = I.compute_version([repo / "app"])
    assert c.version != a.version and c.version.startswith(a.version.split("-")[0])


def test_changes_outside_the_project_do_not_make_it_dirty(repo):
    (repo / "other" / "x.txt").write_text("changed\n")
    assert not I.compute_version([repo / "app"]).dirty


def test_override_and_its_validation(repo):
    assert I.compute_version([repo], "1.4.2").version == "1.4.2"
    with pytest.raises(InputError):
        I.compute_version([repo], "-bad tag")


def test_outside_git_the_version_hashes_the_contexts(tmp_path):
    d = tmp_path / "plain"
    d.mkdir()
    (d / "f").write_text("a")
    v1 = I.compute_version([d])
    assert v1.source == "content" and v1.version.startswith("src-")
    (d / "f").write_text("b")
    assert I.compute_version([d]).version != v1.version


# --------------------------------------------------------------------------- planning


def test_plan_builds_tags_and_inputs(tmp_path):
    p = project(tmp_path)
    env = environment(tmp_path)
    jobs = IP.plan_builds(p, env, "abc123", environ={"FROM_ENV": "from-controller"})
    assert [j.service for j in jobs] == ["web"]
    j = jobs[0]
    assert j.ref == "10.250.0.1:5000/hello/web:abc123" and j.registry == "10.250.0.1:5000"
    assert j.registry_path == "hello/web"
    assert j.context == str(tmp_path / "web") and j.dockerfile == "Dockerfile" and j.target == "prod"
    assert j.args == {"BASE": "busybox", "FROM_ENV": "yes"}  # null args come from the environment, unset dropped
    assert j.labels == {"team": "a", "io.orch.project": "hello", "io.orch.service": "web"}
    assert "abc123" not in j.labels.values()  # never the version: unchanged sources keep their digest


def test_plan_builds_filters_and_rejects_unknown_services(tmp_path):
    p, env = project(tmp_path), environment(tmp_path)
    assert IP.plan_builds(p, env, "v", services=["cache"]) == []
    with pytest.raises(InputError) as err:
        IP.plan_builds(p, env, "v", services=["wbe"])
    assert "'wbe'" in err.value.render()


def test_repository_names_are_made_valid():
    assert IP.image_repository("r:1", "My_App", "Web.API") == "r:1/my-app/web-api"
    assert IP.image_repository(None, "p", "s") == "p/s"


# --------------------------------------------------------------------------- fakes


class FakeAPI:
    def __init__(self, build_msgs=None, push_msgs=None, images=None):
        self.build_msgs = build_msgs or []
        self.push_msgs = push_msgs or []
        self.images = dict(images or {})
        self.build_kw = []
        self.push_kw = []

    def build(self, **kw):
        self.build_kw.append(kw)
        for m in self.build_msgs:
            yield m
        if not any("error" in m for m in self.build_msgs):
            self.images[kw["tag"]] = D["b"]

    def inspect_image(self, ref):
        if ref not in self.images:
            raise LookupError(ref)
        return {"Id": self.images[ref]}

    def push(self, repository, tag=None, stream=False, decode=False, auth_config=None):
        self.push_kw.append({"repository": repository, "tag": tag, "auth_config": auth_config})
        yield from self.push_msgs


class FakeClient:
    def __init__(self, api):
        self.api = api


class FakeRegistry:
    address = "10.250.0.1:5000"

    def __init__(self, digest=D["c"], layers=None, config_exists=False, ping=None, tags=None):
        self.digest = digest
        self._layers = layers or []
        self.config_exists = config_exists
        self._ping = ping or PingResult(self.address, "ok", authenticated=True)
        self.tags = tags if tags is not None else {}
        self.asked = []

    def ping(self):
        return self._ping

    def blob_exists(self, repo, digest):
        return self.config_exists

    def manifest_digest(self, repo, ref):
        self.asked.append((repo, ref))
        if self.tags:
            return self.tags.get((repo, ref))
        return self.digest

    def layers(self, repo, ref):
        return self._layers

    def manifest(self, repo, ref):
        import json

        return Manifest("x", self.digest, json.dumps({"config": {"size": 1500}}).encode())


STEPS_OK = [
    {"stream": "Step 1/3 : FROM busybox\n"}, {"stream": " ---> 43d388dc723e\n"},
    {"stream": "Step 2/3 : COPY . /www\n"}, {"stream": " ---> Using cache\n"}, {"stream": " ---> 9cc8c48a67cd\n"},
    {"stream": "Step 3/3 : RUN true\n"}, {"stream": " ---> Running in abc\n"},
    {"aux": {"ID": D["b"]}}, {"stream": "Successfully built 9cc8\n"},
]


def job(**kw):
    base = dict(service="web", repository="10.250.0.1:5000/hello/web", tag="v1", context="/src/web")
    base.update(kw)
    return IP.BuildJob(**base)


# --------------------------------------------------------------------------- build


def test_build_streams_output_and_counts_steps():
    api = FakeAPI(STEPS_OK)
    lines = []
    [res] = I.build([job(args={"BASE": "busybox"}, labels={"l": "1"}, target="prod")],
                    lambda s, ln: lines.append((s, ln)), FakeClient(api))
    assert res.image_id == D["b"] and res.steps == 3 and res.cached_steps == 1 and res.ref.endswith("web:v1")
    assert ("web", "Step 2/3 : COPY . /www") in lines
    kw = api.build_kw[0]
    assert kw["path"] == "/src/web" and kw["tag"] == "10.250.0.1:5000/hello/web:v1" and kw["target"] == "prod"
    assert kw["buildargs"] == {"BASE": "busybox"} and kw["labels"] == {"l": "1"} and kw["decode"] is True


def test_failing_step_raises_with_that_steps_output_only():
    msgs = [
        {"stream": "Step 1/2 : RUN echo early\n"}, {"stream": "early output\n"},
        {"stream": "Step 2/2 : RUN make\n"}, {"stream": " ---> Running in 1\n"}, {"stream": "cc: error: x.c\n"},
        {"error": "The command '/bin/sh -c make' returned a non-zero code: 2",
         "errorDetail": {"message": "The command '/bin/sh -c make' returned a non-zero code: 2"}},
    ]
    with pytest.raises(I.BuildFailed) as err:
        I.build([job()], None, FakeClient(FakeAPI(msgs)))
    e = err.value
    assert e.exit_code == 1 and e.step == "step 2/2 (RUN make)"
    text = e.render()
    assert "building web failed at step 2/2 (RUN make)" in text and "  | cc: error: x.c" in text
    assert "early output" not in text and "no node was touched" in text


def test_inline_dockerfile_is_written_outside_the_context_and_removed():
    api = FakeAPI(STEPS_OK)
    I.build([job(dockerfile=None, dockerfile_inline="FROM busybox\n")], None, FakeClient(api))
    path = api.build_kw[0]["dockerfile"]
    assert path.endswith(".Dockerfile") and not Path(path).exists()


# --------------------------------------------------------------------------- push


PUSH_MSGS = [
    {"status": "The push refers to repository [10.250.0.1:5000/hello/web]"},
    {"status": "Preparing", "id": "171bfb03bb30"}, {"status": "Preparing", "id": "c0cfa2630dc0"},
    {"status": "Mounted from library/busybox", "id": "171bfb03bb30"},
    {"status": "Pushing", "id": "c0cfa2630dc0", "progressDetail": {"current": 512, "total": 4096}},
    {"status": "Pushed", "id": "c0cfa2630dc0"},
    {"status": "v1: digest: " + D["c"] + " size: 735"},
    {"aux": {"Tag": "v1", "Digest": D["c"], "Size": 735}},
]
LAYERS = [Layer("sha256:" + "1" * 64, 1_069_016, "sha256:171bfb03bb30" + "0" * 52),
          Layer("sha256:" + "2" * 64, 900, "sha256:c0cfa2630dc0" + "0" * 52)]


def test_push_sends_credentials_per_request_and_reads_back_digest_and_bytes(tmp_path):
    env = environment(tmp_path)
    api = FakeAPI(push_msgs=PUSH_MSGS, images={"10.250.0.1:5000/hello/web:v1": D["b"]})
    lines = []
    [res] = I.push([job()], env, lambda s, ln: lines.append(ln), FakeClient(api), FakeRegistry(layers=LAYERS))
    assert api.push_kw[0] == {"repository": "10.250.0.1:5000/hello/web", "tag": "v1", "auth_config": {
        "username": "orch", "password": PASSWORD, "serveraddress": "10.250.0.1:5000"}}
    assert res.digest == D["c"] and res.pinned == "10.250.0.1:5000/hello/web@" + D["c"]
    assert (res.layers_pushed, res.layers_mounted, res.layers_reused) == (1, 1, 0)
    assert res.bytes_pushed == 900 + 1500 + 735  # the new layer, the new config, the manifest
    assert res.image_bytes == 1_069_916
    assert not any(PASSWORD in ln for ln in lines) and PASSWORD not in repr(res)


def test_push_of_an_unchanged_image_sends_only_the_manifest(tmp_path):
    msgs = [{"status": "Layer already exists", "id": "171bfb03bb30"},
            {"status": "Layer already exists", "id": "c0cfa2630dc0"}, {"aux": {"Digest": D["c"], "Size": 735}}]
    api = FakeAPI(push_msgs=msgs, images={"10.250.0.1:5000/hello/web:v1": D["b"]})
    [res] = I.push([job()], environment(tmp_path), None, FakeClient(api),
                   FakeRegistry(layers=LAYERS, config_exists=True))
    assert (res.bytes_pushed, res.layers_pushed, res.layers_reused) == (735, 0, 2)


def test_push_needs_the_image_built_first(tmp_path):
    with pytest.raises(I.PushFailed) as err:
        I.push([job()], environment(tmp_path), None, FakeClient(FakeAPI()), FakeRegistry())
    assert "orch build" in err.value.render()


def test_push_refused_by_the_registry_is_an_auth_error(tmp_path):
    api = FakeAPI(push_msgs=[{"error": "unauthorized: authentication required",
                              "errorDetail": {"message": "unauthorized: authentication required"}}],
                  images={"10.250.0.1:5000/hello/web:v1": D["b"]})
    with pytest.raises(RegistryAuthError) as err:
        I.push([job()], environment(tmp_path), None, FakeClient(api), FakeRegistry())
    assert PASSWORD not in err.value.render()


def test_digest_mismatch_between_engine_and_registry_fails(tmp_path):
    api = FakeAPI(push_msgs=PUSH_MSGS, images={"10.250.0.1:5000/hello/web:v1": D["b"]})
    with pytest.raises(I.PushFailed):
        I.push([job()], environment(tmp_path), None, FakeClient(api), FakeRegistry(digest=D["d"], layers=LAYERS))


# --------------------------------------------------------------------------- preflight


@pytest.mark.parametrize("ping,error,words", [
    (PingResult("r", "down", "connection refused (is the registry running and listening on that port?)"),
     RegistryUnavailable, "is not reachable: connection refused"),
    (PingResult("r", "unauthorized", "the registry refuses the credentials of user 'orch'"),
     RegistryAuthError, "refuses the credentials of user 'orch' (from ORCH_REGISTRY_USER / ORCH_REGISTRY_PASSWORD"),
    (PingResult("r", "tls", "its TLS certificate is not trusted"), RegistryTLSError, "not trusted"),
    (PingResult("r", "error", "the registry answered HTTP 500 to GET /v2/"), RegistryUnavailable, "HTTP 500"),
])
def test_check_registry_fails_fast_with_one_paragraph(tmp_path, ping, error, words):
    env = environment(tmp_path)
    with pytest.raises(error) as err:
        I.check_registry(env, client=FakeRegistry(ping=ping))
    text = err.value.render()
    assert err.value.exit_code == 1 and words in text and "no node was touched" in text and err.value.fix
    assert PASSWORD not in text and "\n" not in text


def test_check_registry_needs_an_address(tmp_path):
    with pytest.raises(InputError) as err:
        I.check_registry(environment(tmp_path, registry=None))
    assert "registry.address" in err.value.render()


def test_pull_auth_only_for_the_environments_registry(tmp_path):
    env = environment(tmp_path)
    auth = I.pull_auth(env, "10.250.0.1:5000/hello/web@" + D["a"])
    assert auth == {"username": "orch", "password": PASSWORD, "serveraddress": "10.250.0.1:5000"}
    assert I.pull_auth(env, "busybox@" + D["a"]) is None  # never to Docker Hub behind the mirror
    assert I.pull_auth(env, "ghcr.io/a/b:1") is None


# --------------------------------------------------------------------------- pinning


class Recorder:
    def __init__(self, name, answers):
        self.name = name
        self.answers = answers
        self.asked = []

    def manifest_digest(self, repo, ref):
        self.asked.append((repo, ref))
        return self.answers.get((repo, ref))


def test_resolve_images_routes_each_reference(tmp_path):
    p, env = project(tmp_path), environment(tmp_path)
    mirror = Recorder("mirror", {("library/busybox", "1.36"): D["d"]})
    own = Recorder("env", {("shared/tool", "2"): D["e"]})
    pins = I.resolve_images(p, env, clients={"mirror": mirror, "env": own})
    assert pins == {
        "cache": "busybox@" + D["d"],  # Docker Hub name, pinned through the mirror, spelled as written
        "pinned": "ghcr.io/org/x@" + D["a"],  # already a digest: kept, nothing asked
        "own": "10.250.0.1:5000/shared/tool@" + D["e"],  # the env's registry, with its credentials
    }
    assert "web" not in pins  # built, pinned by push
    assert mirror.asked == [("library/busybox", "1.36")] and own.asked == [("shared/tool", "2")]


def test_resolve_images_missing_tag_is_bad_input(tmp_path):
    p, env = project(tmp_path), environment(tmp_path)
    with pytest.raises(ImageNotFound) as err:
        I.resolve_images(p, env, services=["cache"], clients={"mirror": Recorder("m", {})})
    assert err.value.exit_code == 2 and "busybox:1.36 does not exist (mirror 10.250.0.1:5001 of docker.io)" in \
        err.value.render()


def test_without_a_mirror_docker_hub_names_go_to_docker_hub(tmp_path):
    p, env = project(tmp_path), environment(tmp_path, mirror=None)
    clients = {}
    client, via = I._client_for(I.parse_reference("busybox"), env, {}, clients)
    assert client.address == "docker.io" and via == "registry docker.io"


# --------------------------------------------------------------------------- all at once


def test_prepare_images_with_no_build_pins_the_versions_tags(tmp_path, monkeypatch):
    p, env = project(tmp_path), environment(tmp_path)
    reg = FakeRegistry(tags={("hello/web", "v9"): D["f"], ("shared/tool", "2"): D["e"]})
    monkeypatch.setattr(I, "resolve_images", lambda *a, **k: {"cache": "busybox@" + D["d"]})
    out = I.prepare_images(p, env, version="v9", build_images=False, registry=reg)
    assert out.pins == {"web": "10.250.0.1:5000/hello/web@" + D["f"], "cache": "busybox@" + D["d"]}
    assert out.version.version == "v9" and out.builds == [] and out.pushes == []
    reg.tags = {}
    reg.digest = None
    with pytest.raises(ImageNotFound) as err:
        I.prepare_images(p, env, version="v9", build_images=False, registry=reg)
    assert "--no-build" in err.value.render()


def test_prepare_images_checks_the_registry_before_building(tmp_path):
    p, env = project(tmp_path), environment(tmp_path)
    api = FakeAPI(STEPS_OK)
    with pytest.raises(RegistryUnavailable):
        I.prepare_images(p, env, version="v1", client=FakeClient(api),
                         registry=FakeRegistry(ping=PingResult("r", "down", "connection refused")))
    assert api.build_kw == []  # nothing built, nothing pushed
