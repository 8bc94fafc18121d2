"""The release pipeline of examples/ci/ run as a CI job runs it, against the lab: orch as
a subprocess with no terminal (stdin from /dev/null, stdout and stderr to pipes),
CI=true and GitHub Actions' variables, --json (and without it: no terminal means JSON),
every stdout line parsed:

  build, push -> up dev --no-build -> verify dev -> promote test -> verify test ->
  promote prod (refused: exit 3, a JSON error naming the gate) -> promote prod --approve

Each stage's final object is checked (status, release id, environment, lineage, the
same digests in dev, test and prod), the releases record the CI job (performer.ci), and
every command runs with --verbose while the project has a Compose secret and the
registry password comes from a variable: neither value ever appears on stdout or
stderr, also when the registry refuses a wrong password. Then another process holds an
environment's deploy lock (as a second CI job would): the stage stops with exit 4 and
a JSON error naming the holder and its CI job.

A copy of examples/hello under its own project name and ports (hello_app.Hello), so it
never collides with another test or `make demo`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from .hello_app import ORCH, ROOT, Hello

pytestmark = pytest.mark.e2e

STAGES = ("build", "deploy-dev", "verify-dev", "promote-test", "verify-test", "promote-prod")


def github_env(job: str, run_id: str) -> dict:
    return {"CI": "true", "GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "e2e-octocat", "GITHUB_WORKFLOW": "deploy hello",
            "GITHUB_RUN_ID": run_id, "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": job,
            "GITHUB_SERVER_URL": "https://github.example", "GITHUB_REPOSITORY": "acme/hello",
            "GITHUB_REF_NAME": "main", "GITHUB_SHA": "0" * 40}


def lab_registry_password() -> str:
    for line in Path("/var/lib/orch-lab/registry.env").read_text().splitlines():
        if line.startswith("ORCH_REGISTRY_PASSWORD="):
            return line.split("=", 1)[1].strip().strip("'\"")
    raise AssertionError("no ORCH_REGISTRY_PASSWORD in the lab's registry.env")


class Job:
    """One CI job's way of running orch: no terminal, the CI's variables, JSON parsed and
    kept under orch-output/STAGE.jsonl as the examples/ci pipelines keep it."""

    def __init__(self, app: Hello, run_id: str, secrets: dict[str, str], out: Path):
        self.app, self.run_id, self.secrets, self.out = app, run_id, secrets, out
        out.mkdir(parents=True, exist_ok=True)
        self.outputs: list[str] = []

    def orch(self, stage: str, *args: str, env: dict | None = None, timeout: float = 900) -> tuple[int, list, str]:
        environ = {k: v for k, v in os.environ.items() if k not in ("ORCH_OUTPUT", "ORCH_VERBOSE")
                   and not k.startswith(("GITHUB_", "GITLAB_", "CI_"))}
        environ.update(self.app.vars)
        environ.update(github_env(stage, self.run_id))
        environ.update(self.secrets)
        environ.update(env or {})
        cp = subprocess.run([ORCH, "--verbose", *args], cwd=self.app.dir, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout, env=environ)
        (self.out / f"{stage}.jsonl").write_text(cp.stdout)
        self.outputs.append(cp.stdout + cp.stderr)
        lines = [json.loads(line) for line in cp.stdout.splitlines()]  # every line is JSON
        assert lines, f"orch {' '.join(args)}: no output\n{cp.stderr[-3000:]}"
        *events, final = lines
        assert all(e.get("event") and e.get("version") == 1 for e in events), events[:3]
        assert "event" not in final and final["version"] == 1 and final["command"], final
        if cp.returncode == 0:
            assert final["status"] in ("ok", "planned") and "error" not in final, final
        else:
            assert final["status"] == "failed" and final["error"]["exit_code"] == cp.returncode, final
            assert "orch: error: " in cp.stderr
        self.last_stderr = cp.stderr
        return cp.returncode, lines, cp.stderr

    def ok(self, stage: str, *args: str, **kw) -> dict:
        code, lines, stderr = self.orch(stage, *args, **kw)
        assert code == 0, f"stage {stage}: orch {' '.join(args)} exited {code}:\n{json.dumps(lines[-1])[:3000]}\n" \
                          f"{stderr[-3000:]}"
        return lines[-1]


SECRET_SERVICE = """\
    secrets: [api_key]
"""


@pytest.fixture(scope="module")
def app(lab, tmp_path_factory):
    a = Hello(tmp_path_factory.mktemp("ci"), "ci")
    compose = a.dir / "compose.yaml"
    # a Compose secret from a variable, given to api
    text = compose.read_text().replace("    restart: unless-stopped\n    init: true  # signals",
                                       SECRET_SERVICE + "    restart: unless-stopped\n    init: true  # signals", 1)
    compose.write_text(text + "\nsecrets:\n  api_key:\n    environment: HELLO_CI_SECRET\n")
    yield a
    a.down_everywhere()
    a.remove_local_images()


@pytest.fixture(scope="module")
def job(app, tmp_path_factory):
    secrets = {"HELLO_CI_SECRET": "ci-secret-" + uuid.uuid4().hex,
               "ORCH_REGISTRY_USER": "orch", "ORCH_REGISTRY_PASSWORD": lab_registry_password()}
    return Job(app, str(uuid.uuid4().int % 10**9), secrets, tmp_path_factory.mktemp("orch-output"))


def assert_no_secret(job: Job, extra: tuple[str, ...] = ()) -> None:
    for value in (job.secrets["HELLO_CI_SECRET"], job.secrets["ORCH_REGISTRY_PASSWORD"], *extra):
        leaks = [i for i, text in enumerate(job.outputs) if value in text]
        assert not leaks, f"a secret value appears in the output of command(s) {leaks}"


def test_the_ci_pipeline_stage_by_stage(app, job):
    name = app.name
    # build: build and push this version's images
    built = job.ok("build", "build", "--env", "dev", "-p", name, "--json")
    assert built["command"] == "build" and {b["service"] for b in built["built"]} == {"api", "web"}
    pushed = job.ok("build", "push", "--env", "dev", "-p", name, "--json")
    images = pushed["images"]
    assert set(images) == {"api", "web"} and all(f"/{name}/" in ref and "@sha256:" in ref for ref in images.values())
    assert pushed["image_version"] == built["image_version"]

    # deploy dev: the pushed images, nothing built
    dev = job.ok("deploy-dev", "up", "--env", "dev", "-p", name, "--no-build", "--json")
    assert dev["command"] == "up" and dev["environment"] == "dev" and dev["status"] == "ok"
    assert dev["release_id"] == 1 and dev["new_release"] and dev["images"] == images and dev["pushed"] == []
    assert dev["verification"]["ok"] is True and dev["lineage"] == "dev #1"
    ci = dev["release"]["performer"]["ci"]
    assert ci["system"] == "github-actions" and ci["job"] == "deploy-dev" and ci["actor"] == "e2e-octocat"
    assert ci["url"] == f"https://github.example/acme/hello/actions/runs/{job.run_id}"

    report = job.ok("verify-dev", "verify", "--env", "dev", "-p", name, "--json")
    assert report["ok"] and report["recorded"] and report["release"] == 1 and report["environment"] == "dev"

    test = job.ok("promote-test", "promote", name, "--to", "test", "--json")
    assert test["environment"] == "test" and test["release_id"] == 1 and test["new_release"]
    assert test["images"] == images and test["source"] == {"env": "dev", "id": 1}
    assert test["lineage"] == "test #1 <- dev #1" and test["verification"]["ok"] is True

    report = job.ok("verify-test", "verify", "--env", "test", "-p", name, "--json")
    assert report["ok"] and report["release"] == 1

    # promote prod without the approval: the gate refuses, exit 3, nothing deployed
    code, lines, stderr = job.orch("promote-prod", "promote", name, "--to", "prod", "--json")
    refused = lines[-1]
    assert code == 3 and refused["error"]["kind"] == "GateRefused" and refused["error"]["exit_code"] == 3
    assert refused["error"]["details"]["gate"] == "approved" and "--approve" in refused["error"]["fix"]
    assert refused["environment"] == "prod" and "gate 'approved' refused" in stderr
    ps = job.ok("promote-prod", "ps", "--env", "prod", "-p", name)  # no --json: no terminal, JSON anyway
    assert ps["command"] == "ps" and ps["containers"] == []

    # the manual job: approved
    prod = job.ok("promote-prod", "promote", name, "--to", "prod", "--approve", "--json")
    assert prod["environment"] == "prod" and prod["release_id"] == 1 and prod["images"] == images
    assert prod["lineage"] == "prod #1 <- test #1 <- dev #1" and prod["verification"]["ok"] is True
    approval = prod["release"]["approval"]
    assert approval["via"] == "--approve" and "via github-actions (e2e-octocat)" in approval["by"]

    # the same digests run everywhere
    running = {}
    for env in ("dev", "test", "prod"):
        doc = job.ok("promote-prod", "ps", "--env", env, "-p", name)
        assert doc["environment"] == env and doc["containers"]
        running[env] = {(c["service"], c["digest"]) for c in doc["containers"]}
        assert all(c["state"] == "running" for c in doc["containers"])
    assert running["dev"] == running["test"] == running["prod"]
    assert running["prod"] == {(s, ref.split("@")[1]) for s, ref in images.items()}

    # the releases record the CI jobs; history (no --json: JSON anyway) shows them
    history = job.ok("promote-prod", "history", "--env", "prod", "-p", name)
    (rel,) = history["releases"]
    assert rel["lineage_text"] == "prod #1 <- test #1 <- dev #1"
    assert rel["performer"]["ci"]["job"] == "promote-prod" and rel["performer"]["ci"]["run_id"] == job.run_id
    text = subprocess.run([ORCH, "history", "--env", "test", "-p", name, "--text"], cwd=app.dir, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **app.vars}).stdout
    assert "via github-actions (e2e-octocat) promote-test#" in text, text

    # again: nothing to do, exit 0
    again = job.ok("promote-prod", "promote", name, "--to", "prod", "--approve", "--json")
    assert again["new_release"] is False and again["release_id"] == 1

    # the other read-only commands, verbose too
    config = job.ok("promote-prod", "config", "--env", "prod", "--json")
    assert config["project"]["secrets"]["api_key"]["environment"] == "HELLO_CI_SECRET"
    job.ok("promote-prod", "lock", "status", "--env", "prod", "--json")
    assert any("orch: debug: " in out for out in job.outputs)
    assert_no_secret(job)
    assert sorted(p.stem for p in job.out.glob("*.jsonl")) == sorted(STAGES)


def test_a_wrong_registry_password_fails_without_printing_it(app, job):
    wrong = "wrong-pw-" + uuid.uuid4().hex
    code, lines, stderr = job.orch("build", "push", "--env", "dev", "-p", app.name, "--json",
                                   env={"ORCH_REGISTRY_PASSWORD": wrong})
    assert code == 1 and lines[-1]["error"]["kind"] == "RegistryAuthError" and "refuses the credentials" in stderr
    code, lines, _ = job.orch("deploy-dev", "up", "--env", "dev", "-p", app.name, "--json",
                              env={"ORCH_REGISTRY_PASSWORD": wrong})
    assert code == 1 and lines[-1]["error"]["kind"] == "RegistryAuthError"
    assert_no_secret(job, (wrong,))


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, %(root)r)
    from pathlib import Path
    from orchestrator.io import transport as T
    from orchestrator.io.agent_bundle import current_bundle
    from orchestrator.core.environments import load_environment
    from orchestrator.io.lock import LockHolder, acquire_lock

    env = load_environment(sys.argv[1], Path(sys.argv[2]))
    conns = T.connect_all(list(env.nodes), T.options_from_env(env))
    sessions = T.open_sessions(conns, current_bundle(), require_engine=False)
    lock = acquire_lock(env.name, sessions, LockHolder.current("orch up --env " + env.name, project="other"), wait=120)
    print("ACQUIRED", flush=True)
    time.sleep(600)
""")


def test_a_held_lock_stops_the_stage_with_exit_4_naming_the_holder(app, job, tmp_path):
    # An environment of its own on prod's nodes (the lock is named after the environment),
    # so holding it gets in nobody's way.
    lock_env = "cilock" + uuid.uuid4().hex[:6]
    prod = (app.dir / "environments" / "prod.yaml").read_text()
    (app.dir / "environments" / f"{lock_env}.yaml").write_text(prod.replace("\nname: prod\n", f"\nname: {lock_env}\n"))
    script = tmp_path / "holder.py"
    script.write_text(HOLDER % {"root": str(ROOT)})
    gitlab = {"GITLAB_CI": "true", "CI": "true", "GITLAB_USER_LOGIN": "other-dev", "CI_JOB_ID": "31337",
              "CI_JOB_NAME": "deploy", "CI_JOB_URL": "https://gitlab.example/acme/other/-/jobs/31337"}
    holder = subprocess.Popen([sys.executable, str(script), lock_env, str(app.dir / "environments")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={k: v for k, v in {**os.environ, **gitlab}.items() if not k.startswith("GITHUB_")})
    try:
        line = holder.stdout.readline()
        assert line.startswith("ACQUIRED"), line + (holder.stderr.read() if holder.poll() is not None else "")
        # the stage's deployer: fails at once with exit 4
        code, lines, stderr = job.orch("promote-prod", "up", "--env", lock_env, "-p", app.name, "--json",
                                       env={"ORCH_LOCK_WAIT": "0"})
        final = lines[-1]
        assert code == 4, (final, stderr[-2000:])
        err = final["error"]
        assert err["kind"] == "LockHeld" and err["exit_code"] == 4 and final["environment"] == lock_env
        who = err["details"]["holder"]
        assert who["command"] == f"orch up --env {lock_env}" and who["pid"] == holder.pid
        assert who["ci_job"] == "https://gitlab.example/acme/other/-/jobs/31337" and who["project"] == "other"
        assert f"environment {lock_env} is locked by" in stderr and "--lock-wait" in err["fix"]
        assert not any(e.get("phase") == "apply" for e in lines[:-1])  # nothing applied
        # waiting a little does not help: still 4, and it says it waited
        code, lines, _ = job.orch("promote-prod", "up", "--env", lock_env, "-p", app.name, "--json",
                                  "--lock-wait", "2")
        assert code == 4 and "waited" in lines[-1]["error"]["message"]
        status = job.ok("promote-prod", "lock", "status", "--env", lock_env)
        assert status["held"] is True and status["holder"]["ci_job"].endswith("/jobs/31337")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    # the holder gone (a cancelled CI job), the lock is free (at once; a moment for sshd to notice)
    deadline = time.monotonic() + 15
    while job.ok("promote-prod", "lock", "status", "--env", lock_env)["held"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.ok("promote-prod", "lock", "status", "--env", lock_env)["held"] is False
    history = job.ok("promote-prod", "history", "--env", lock_env, "-p", app.name)
    assert history["releases"] == []  # nothing was recorded (or changed) there
    assert_no_secret(job)
