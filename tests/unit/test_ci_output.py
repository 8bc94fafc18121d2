"""What CI sees (issue #7, "CI"): without a terminal, or with --json, every command prints
JSON lines and exactly one final object, last, also when it fails (the error object's
exit_code is the exit code); the schema in docs/json-output.md matches the code; the CI
job is recorded on releases and shown by `orch history`; secrets never reach stdout or
stderr, --verbose and error messages included; the pipelines in examples/ci/ run
commands the CLI accepts, in the documented stage order.

Commands run in-process through orchestrator.cli.main (exit codes, the secret filter,
the error path) over the fake nodes of test_pipeline (real agent operations on
in-memory engines)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import re
import shlex
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from orchestrator.core import releases as R
from orchestrator.io import ledger as RL
from orchestrator.cli import main
from orchestrator.cli import output as O

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "json-output.md"
CI = ROOT / "examples" / "ci"

GITHUB = {"GITHUB_ACTIONS": "true", "GITHUB_ACTOR": "octocat", "GITHUB_WORKFLOW": "deploy hello",
          "GITHUB_RUN_ID": "4242", "GITHUB_RUN_ATTEMPT": "1", "GITHUB_JOB": "promote-test",
          "GITHUB_SERVER_URL": "https://github.example", "GITHUB_REPOSITORY": "acme/hello",
          "GITHUB_REF_NAME": "main", "GITHUB_SHA": "abc123"}
GITLAB = {"GITLAB_CI": "true", "CI": "true", "GITLAB_USER_LOGIN": "ada", "GITLAB_USER_NAME": "Ada Lovelace",
          "CI_PIPELINE_ID": "900", "CI_JOB_ID": "901", "CI_JOB_URL": "https://gitlab.example/acme/hello/-/jobs/901",
          "CI_JOB_NAME": "promote-prod", "CI_PIPELINE_URL": "https://gitlab.example/acme/hello/-/pipelines/900",
          "CI_PROJECT_PATH": "acme/hello", "CI_COMMIT_REF_NAME": "main", "CI_COMMIT_SHA": "def456"}
GENERIC = {"CI": "true", "CI_JOB_NAME": "deploy", "CI_JOB_ID": "77", "CI_JOB_URL": "https://ci.example/jobs/77"}
CI_VARIABLES = sorted({*GITHUB, *GITLAB, *GENERIC, "JENKINS_URL", "BUILDKITE", "CIRCLECI"})


# --------------------------------------------------------------------------- running orch


class Run:
    def __init__(self, args, code, stdout, stderr):
        self.args, self.code, self.stdout, self.stderr = args, code, stdout, stderr

    @property
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def final(self) -> dict:
        return self.lines[-1]

    def __repr__(self) -> str:
        return (f"orch {' '.join(self.args)} -> {self.code}\nstdout:\n{self.stdout[-3000:]}\n"
                f"stderr:\n{self.stderr[-3000:]}")


@pytest.fixture
def orch(monkeypatch):
    """orch(*args, env=None) -> Run: the `orch` entry point in this process, stdout and
    stderr captured (not terminals, so JSON unless --text)."""
    for name in (*CI_VARIABLES, "ORCH_OUTPUT", "ORCH_VERBOSE", "ORCH_APPROVE", "ORCH_LOCK_WAIT"):
        monkeypatch.delenv(name, raising=False)

    def run(*args, env=None):
        out, err = io.StringIO(), io.StringIO()
        with monkeypatch.context() as m:
            for k, v in (env or {}).items():
                m.setenv(k, v)
            m.setattr(sys, "argv", ["orch", *args])
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
        O.reset()
        return Run(args, code, out.getvalue(), err.getvalue())

    return run


def make_api_fail(cli_world) -> None:
    """The next `up` builds an api image that exits at once (exit code 3)."""
    cli_world.version += 1
    ref = cli_world.pins(cli_world.workspaces("dev")[0].project)["api"]
    for node in cli_world.nodes.values():
        node.engine.behaviours[ref] = "exit:3"


def check_contract(r: Run) -> dict:
    """Every stdout line is JSON; events first (each with "event" and the version), the
    final object last (version, status, command; failed exactly when the exit code is not
    0, with the error's exit_code equal to it). Returns the final object."""
    assert r.stdout.endswith("\n"), r
    lines = r.lines
    assert lines, r
    *events, final = lines
    for ev in events:
        assert isinstance(ev.get("event"), str) and ev["version"] == 1, (ev, r)
    assert "event" not in final, r
    assert list(final)[:3] == ["version", "status", "command"], r
    assert final["version"] == 1 and final["command"], r
    if r.code == 0:
        assert final["status"] in ("ok", "planned") and "error" not in final, r
    else:
        assert final["status"] == "failed", r
        err = final["error"]
        assert err["exit_code"] == r.code and err["kind"] and err["message"], r
        assert "orch: error: " in r.stderr or err["kind"] == "UsageError", r
    return final


# --------------------------------------------------------------------------- the mode


def test_json_unless_a_terminal_or_told_otherwise():
    class TTY(io.StringIO):
        def isatty(self):
            return True

    pipe, tty = io.StringIO(), TTY()
    assert O.decide_json(None, pipe, {}) is True and O.decide_json(None, tty, {}) is False
    assert O.decide_json(None, pipe, {"ORCH_OUTPUT": "text"}) is False
    assert O.decide_json(None, tty, {"ORCH_OUTPUT": "json"}) is True
    assert O.decide_json(True, tty, {"ORCH_OUTPUT": "text"}) is True  # --json wins
    assert O.decide_json(False, pipe, {"ORCH_OUTPUT": "json"}) is False  # --text wins


def test_every_command_prints_json_lines_and_one_final_object(cli_world, orch):
    """The whole pipeline and every read-only command, as a CI job runs them."""
    runs = [
        orch("config"), orch("graph"), orch("envs"),
        orch("plan", "--env", "dev"),
        orch("up", "--env", "dev", "--dry-run"),
        orch("up", "--env", "dev"),
        orch("ps", "--env", "dev"),
        orch("logs", "--env", "dev"),
        orch("verify", "--env", "dev"),
        orch("promote", "hello", "--to", "test"),
        orch("promote", "hello", "--to", "prod"),  # refused: approval (exit 3)
        orch("promote", "hello", "--to", "prod", "--approve"),
        orch("history", "--env", "prod"),
        orch("lock", "status", "--env", "prod"),
        orch("rollback", "--env", "prod"),  # nothing earlier: bad input (exit 2)
        orch("down", "--env", "dev"),
    ]
    codes = {" ".join(r.args): r.code for r in runs}
    assert codes["promote hello --to prod"] == 3 and codes["rollback --env prod"] == 2, codes
    assert [c for a, c in codes.items() if a not in ("promote hello --to prod", "rollback --env prod")] == [0] * 14
    finals = {" ".join(r.args): check_contract(r) for r in runs}
    assert finals["up --env dev --dry-run"]["status"] == "planned"
    assert finals["lock status --env prod"]["command"] == "lock status"
    assert finals["promote hello --to prod"]["error"]["details"]["gate"] == "approved"
    assert finals["config"]["project"]["name"] == "hello"
    assert finals["logs --env dev"]["lines"] == sum(1 for ln in runs[7].lines if ln.get("event") == "log")
    up = next(r for r in runs if r.args == ("up", "--env", "dev"))
    assert {e["event"] for e in up.lines[:-1]} >= {"phase", "locked", "plan", "step", "check"}
    assert "is up on dev" in up.stderr  # the summary for people: on stderr


def test_prune_dry_run_prints_the_plan_prune_then_carries_out(cli_world, orch, monkeypatch):
    class Registry:  # every digest is there until deleted
        deleted: list = []

        def manifest_digest(self, repository, reference):
            return None if f"{repository}@{reference}" in self.deleted else reference

        def delete_manifest(self, repository, digest):
            self.deleted.append(f"{repository}@{digest}")
            return True

    monkeypatch.setattr("orchestrator.io.images.registry_client", lambda env, environ=None: Registry())
    for v in (1, 2):
        cli_world.version = v
        assert orch("up", "--env", "dev").code == 0
    keep = {"ORCH_KEEP_IMAGES": "1"}
    dry, done = orch("prune", "--env", "dev", "--dry-run", env=keep), orch("prune", "--env", "dev", env=keep)
    planned, final = check_contract(dry), check_contract(done)
    assert planned["status"] == "planned" and final["status"] == "ok" and final["plan"] == planned["plan"]
    manifests = [f"{m['repository']}@{m['digest']}" for m in planned["plan"]["registry"]["manifests"]]
    assert len(manifests) == 2 and final["deleted"] == manifests == Registry.deleted  # release 1's api and web
    assert "garbage-collect" in done.stderr and final["bytes_freed"]["registry"] == "unknown"
    text = orch("prune", "--env", "dev", "--dry-run", "--text", env=keep)
    assert text.code == 0 and "nothing to remove" in text.stdout


def test_failures_end_with_a_failed_final_object(cli_world, orch):
    # bad input, from the command's own failure path and from main's
    for r in (orch("up", "--env", "nope"), orch("ps", "--env", "nope"), orch("history", "--env", "nope")):
        final = check_contract(r)
        assert r.code == 2 and final["error"]["kind"] == "InputError" and final["error"]["problems"], r
        assert final["command"] == r.args[0]
    # the command line does not parse
    r = orch("up")
    final = check_contract(r)
    assert r.code == 2 and final["error"]["kind"] == "UsageError"
    assert "Missing option '--env'" in final["error"]["message"]
    assert final["command"] == "up" and "Missing option" in r.stderr
    r = orch("lock", "status", "--env", "dev", "--bogus")
    assert r.code == 2 and check_contract(r)["command"] == "lock status"
    # a deploy that fails
    make_api_fail(cli_world)
    r = orch("up", "--env", "dev")
    final = check_contract(r)
    assert r.code == 1 and final["error"]["kind"] == "DeployError" and final["environment"] == "dev"
    # a failing verification after a deploy, and `orch verify`
    cli_world.version += 1
    cli_world.checks_ok = False
    r = orch("up", "--env", "dev")
    assert r.code == 1 and check_contract(r)["error"]["kind"] == "VerificationFailed"
    r = orch("verify", "--env", "dev")
    final = check_contract(r)
    assert r.code == 1 and final["error"]["kind"] == "VerificationFailed" and final["ok"] is False
    assert final["error"]["details"]["failed"] == ["home"] and "verification failed in dev" in r.stderr


def test_a_bug_still_ends_with_a_final_object(cli_world, orch, monkeypatch):
    def boom(*a, **kw):
        raise RuntimeError("unexpected")

    monkeypatch.setattr("orchestrator.app.operate.list_containers", boom)
    r = orch("ps", "--env", "dev")
    final = check_contract(r)
    assert r.code == 1 and final["error"]["kind"] == "InternalError" and "Traceback" in r.stderr


def test_text_when_asked(cli_world, orch):
    r = orch("ps", "--env", "dev", "--text")
    assert r.code == 0 and r.stdout.startswith("no containers of hello on dev")
    r = orch("ps", "--env", "dev", env={"ORCH_OUTPUT": "text"})
    assert r.stdout.startswith("no containers")
    r = orch("up", "--env", "dev", "--text")
    assert r.code == 0 and not r.stdout.lstrip().startswith("{") and "hello is up on dev" in r.stdout
    r = orch("ps", "--env", "nope", "--text")
    assert r.code == 2 and r.stdout == "" and r.stderr.startswith("orch: error: no environment named 'nope'")
    r = orch("exec", "--env", "dev", "nosuch", "--", "true")  # exec never prints JSON
    assert r.code == 2 and r.stdout == ""


def test_lab_and_nodes_commands_print_one_final_object(orch, monkeypatch, tmp_path):
    from orchestrator.lab.status import Issue

    class Status:
        name, healthy, exists = "orch-nosuch", False, False
        issues = [Issue("no lab named orch-nosuch", "orch lab up --name orch-nosuch")]

        def to_json(self):
            return {"name": self.name, "exists": False, "healthy": False, "issues": [vars(i) for i in self.issues]}

    monkeypatch.setattr("orchestrator.lab.status.check", lambda name: Status())
    r = orch("lab", "status", "--name", "orch-nosuch")
    final = check_contract(r)
    assert r.code == 1 and final["error"]["kind"] == "LabUnhealthy" and final["command"] == "lab status"
    # nodes check (cli/nodes.py): one final object too (a node with a problem: status "error", exit 1)
    envs = tmp_path / "environments"
    envs.mkdir()
    (envs / "loc.yaml").write_text("nodes:\n  - {name: closed-1, host: 127.0.0.1, port: 9}\n"
                                   f"ssh: {{known_hosts: {tmp_path / 'kh'}}}\n")
    r = orch("nodes", "check", "--env", "loc", "--environments", str(envs))
    *_, final = r.lines
    assert r.code == 1 and final["command"] == "nodes check" and final["version"] == 1


# --------------------------------------------------------------------------- the documented schema


def doc_keys(heading: str) -> set[str]:
    """The keys in the first column of the table under `### heading` in json-output.md."""
    text = DOC.read_text()
    start = text.index(f"\n### {heading}\n")
    section = text[start + 1:].split("\n#", 1)[0]
    keys = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    return keys


def test_the_documented_final_objects_are_what_the_commands_print(cli_world, orch):
    up = check_contract(orch("up", "--env", "dev"))
    promoted = check_contract(orch("promote", "hello", "--to", "test"))
    documented = doc_keys("`up`, `promote`, `rollback`")
    assert set(up) == documented and set(promoted) == documented
    refused = check_contract(orch("promote", "hello", "--to", "prod"))
    assert set(refused["error"]) <= doc_keys("The error object")
    res = cli_world.up()  # the library's own result, as pipeline.PipelineResult.to_json makes it
    assert set(res.to_json()) == documented
    assert set(cli_world.promote("prod", approve=True).to_json()) == documented
    assert set(up["release"]) == doc_keys("The release object")
    for command, heading in (("ps", "`ps`"), ("plan", "`plan`"), ("verify", "`verify`"), ("history", "`history`"),
                             ("logs", "`logs`"), ("lock status", "`lock status`"), ("down", "`down`")):
        final = check_contract(orch(*command.split(), "--env", "dev"))
        assert set(final) == doc_keys(heading), command
    final = check_contract(orch("lock", "break", "--env", "dev", "--reason", "the contract"))
    assert set(final) == doc_keys("`lock break`") and final["broken"] is False
    bad = check_contract(orch("ps", "--env", "nope"))
    assert set(bad["error"]) <= doc_keys("The error object") and "problems" in bad["error"]
    assert set(check_contract(orch("up"))["error"]) <= doc_keys("The error object")


def test_the_documented_ci_keys_are_recorded():
    documented = {k for line in DOC.read_text().split("### The CI job", 1)[1].split("\n### ", 1)[0].splitlines()
                  if line.startswith("| `") for k in re.findall(r"`([a-z_]+)`", line.split("|")[1])}
    for environ in (GITHUB, GITLAB, GENERIC):
        assert set(R.ci_info(environ)) <= documented, environ


# --------------------------------------------------------------------------- the performer and the CI job


def test_github_actions_is_recorded():
    info = R.ci_info(GITHUB)
    assert info == {"system": "github-actions", "actor": "octocat", "workflow": "deploy hello", "run_id": "4242",
                    "run_attempt": "1", "job": "promote-test", "repository": "acme/hello", "ref": "main",
                    "sha": "abc123", "url": "https://github.example/acme/hello/actions/runs/4242"}
    assert R.ci_info({**GITHUB, "GITHUB_RUN_ATTEMPT": "2"})["url"].endswith("/runs/4242/attempts/2")
    assert R.ci_info({k: v for k, v in GITHUB.items() if k != "GITHUB_SERVER_URL"})["url"].startswith(
        "https://github.com/acme/hello/")


def test_gitlab_ci_is_recorded():
    info = R.ci_info(GITLAB)
    assert info == {"system": "gitlab-ci", "actor": "ada", "actor_name": "Ada Lovelace", "job": "promote-prod",
                    "job_id": "901", "pipeline_id": "900", "url": "https://gitlab.example/acme/hello/-/jobs/901",
                    "pipeline_url": "https://gitlab.example/acme/hello/-/pipelines/900", "repository": "acme/hello",
                    "ref": "main", "sha": "def456"}
    no_login = {k: v for k, v in GITLAB.items() if k != "GITLAB_USER_LOGIN"}
    assert R.ci_info(no_login)["actor"] == "Ada Lovelace"


def test_any_other_ci_is_recorded():
    assert R.ci_info(GENERIC) == {"system": "ci", "job": "deploy", "job_id": "77", "url": "https://ci.example/jobs/77"}
    assert R.ci_info({"CI": "true"}) == {"system": "ci"}
    assert R.ci_info({"CI": "false"}) == {} and R.ci_info({}) == {}


@pytest.mark.parametrize("environ,who,job", [
    (GITHUB, "via github-actions (octocat) promote-test#4242", "https://github.example/acme/hello/actions/runs/4242"),
    (GITLAB, "via gitlab-ci (ada) promote-prod#901", "https://gitlab.example/acme/hello/-/jobs/901"),
    (GENERIC, "via ci deploy#77", "https://ci.example/jobs/77"),
], ids=["github", "gitlab", "generic"])
def test_the_ci_job_is_on_the_release_and_in_history(cli_world, orch, monkeypatch, environ, who, job):
    no_git_user = {"GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}  # the performer: the login
    assert orch("up", "--env", "dev", env={**environ, **no_git_user, "USER": "runner"}).code == 0
    hist = check_contract(orch("history", "--env", "dev"))
    performer = hist["releases"][0]["performer"]
    assert performer["user"] == "runner" and performer["ci"] == R.ci_info(environ)
    text = orch("history", "--env", "dev", "--text").stdout
    row = next(line for line in text.splitlines() if line.startswith("#1"))
    assert f"runner {who}" in row, text
    # a second deployer sees the holder's CI job
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
    holder = RL.detect_performer({**environ, "USER": "runner"})
    assert holder.ci_job == job


# --------------------------------------------------------------------------- secrets


SECRET_COMPOSE = """\
name: hello
services:
  api:
    image: api-src
    environment:
      HELLO_ENV: ${HELLO_ENV:-local}
      APP_TOKEN: ${DEPLOY_TOKEN}
    secrets: [api_key]
    ports: ["8091:8081"]
    healthcheck: {test: ["CMD", "true"], interval: 1s}
  web:
    image: web-src
    ports: ["8090:8080"]
    depends_on: {api: {condition: service_healthy}}
secrets:
  api_key:
    environment: HELLO_SHARED_VALUE
"""

# Unique values; the variables holding the first two have names that do not look secret.
COMPOSE_SECRET = "cmp-secret-7f3a9c2e41"
REGISTRY_PASSWORD = "reg-pass-5d1e88b0c7"
TOKEN = "tok-91b2c3d4e5f6"
SECRETS = {"HELLO_SHARED_VALUE": COMPOSE_SECRET, "REG_PW_VALUE": REGISTRY_PASSWORD, "REG_USER_NAME": "deployer",
           "DEPLOY_TOKEN": TOKEN}


def leaked(r: Run) -> list[str]:
    found = []
    text = r.stdout + r.stderr
    for value in (COMPOSE_SECRET, REGISTRY_PASSWORD, TOKEN,
                  base64.b64encode(f"deployer:{REGISTRY_PASSWORD}".encode()).decode()):
        if value in text:
            found.append(value)
    return found


@pytest.fixture
def secret_world(cli_world):
    cli_world.write_compose(SECRET_COMPOSE)
    for env in ("dev", "test", "prod"):
        path = cli_world.dir / "environments" / f"{env}.yaml"
        path.write_text(path.read_text().replace(
            "registry: {address: reg.test:5000}",
            "registry: {address: reg.test:5000, username_env: REG_USER_NAME, password_env: REG_PW_VALUE}"))
    return cli_world


def test_no_command_prints_a_secret_with_verbose_and_json(secret_world, orch):
    runs = []
    for args in (["up", "--env", "dev"], ["verify", "--env", "dev"], ["promote", "hello", "--to", "test"],
                 ["promote", "hello", "--to", "prod"], ["promote", "hello", "--to", "prod", "--approve"],
                 ["history", "--env", "prod"], ["config"], ["config", "--env", "prod"], ["ps", "--env", "prod"],
                 ["plan", "--env", "test"], ["lock", "status", "--env", "dev"], ["envs"]):
        for mode in ("--json", "--text"):
            runs.append(orch("--verbose", *args, mode, env=SECRETS))
    for r in runs:
        assert not leaked(r), r
        assert r.code in (0, 3), r
    assert any("orch: debug:" in r.stderr for r in runs)  # --verbose did say more
    assert any("password from $REG_PW_VALUE (set)" in r.stderr for r in runs)  # where it comes from, not what
    config = next(r for r in runs if r.args[1:] == ("config", "--json"))
    assert config.final["project"]["services"]["api"]["environment"]["APP_TOKEN"] == "***"
    assert config.final["project"]["secrets"]["api_key"]["environment"] == "HELLO_SHARED_VALUE"


def test_error_messages_and_debug_logs_do_not_print_secrets(secret_world, orch, monkeypatch):
    from orchestrator.io.registry_client import RegistryAuthError

    # an error message that would carry the password and the secret (say, from a library)
    secret_world.images_error = RegistryAuthError(
        f"registry reg.test:5000 refuses user deployer with password {REGISTRY_PASSWORD} ({COMPOSE_SECRET})",
        fix=f"check {TOKEN}")
    for mode in ("--json", "--text"):
        r = orch("--verbose", "up", "--env", "dev", mode, env=SECRETS)
        assert r.code == 1 and "refuses user deployer with password ***" in r.stderr and not leaked(r), r
    assert check_contract(orch("up", "--env", "dev", env=SECRETS))["error"]["fix"] == "check ***"
    secret_world.images_error = None

    # a library's debug log line under --verbose, and a traceback
    def noisy(*a, **kw):
        auth = base64.b64encode(f"deployer:{REGISTRY_PASSWORD}".encode()).decode()
        logging.getLogger("urllib3.connectionpool").debug("Authorization: Basic %s", auth)
        raise RuntimeError(f"crashed holding {REGISTRY_PASSWORD}")

    monkeypatch.setattr("orchestrator.app.operate.list_containers", noisy)
    r = orch("--verbose", "ps", "--env", "dev", env=SECRETS)
    assert "Authorization: Basic ***" in r.stderr and "crashed holding ***" in r.stderr and "Traceback" in r.stderr
    assert not leaked(r), r
    assert r.final["error"]["kind"] == "InternalError"

    # a failing deploy (its log lines are in the message)
    make_api_fail(secret_world)
    r = orch("--verbose", "up", "--env", "dev", env=SECRETS)
    assert r.code == 1 and check_contract(r)["error"]["kind"] == "DeployError" and not leaked(r), r


def test_the_filter_masks_whole_lines_and_secret_named_variables():
    red = O.Redactor()
    red.add_environ({"GITHUB_TOKEN": "ghp_abcdef123", "ORCH_REGISTRY_PASSWORD": "pw-12345678",
                     "ORCH_REGISTRY_PASSWORD_FILE": "/run/secrets/pw", "HOME": "/root", "SHORT_TOKEN": "abc",
                     "GIT_AUTHOR_EMAIL": "ada@example.com"})
    red.add('quo"te\\back')
    raw = io.StringIO()
    s = O.RedactingStream(raw, red)
    s.write("a ghp_abc")  # split across writes: held until the line ends
    s.write("def123 b\n")
    s.write(json.dumps({"v": 'x quo"te\\back'}) + "\n")
    s.write("pw-12345678 /run/secrets/pw /root abc ada@example.com")
    s.flush()
    assert raw.getvalue() == 'a *** b\n{"v": "x ***"}\n*** /run/secrets/pw /root abc ada@example.com'


# --------------------------------------------------------------------------- examples/ci


STAGES = ["build", "deploy-dev", "verify-dev", "promote-test", "verify-test", "promote-prod"]
EXPECTED = {  # stage -> the orch commands it runs (first words)
    "build": ["build --env dev", "push --env dev"],
    "deploy-dev": ["up --env dev --no-build"],
    "verify-dev": ["verify --env dev"],
    "promote-test": ["promote hello --to test"],
    "verify-test": ["verify --env test"],
    "promote-prod": ["promote hello --to prod --approve", "history --env prod"],
}


def orch_commands(script: str) -> list[list[str]]:
    """The orch command lines in a shell script, as argv (redirections cut off)."""
    out = []
    for line in script.splitlines():
        line = line.strip()
        if line.startswith("orch "):
            words = shlex.split(line.split(">", 1)[0])
            out.append(words[1:])
    return out


def github_stages() -> dict[str, list[list[str]]]:
    wf = yaml.safe_load((CI / "github-actions.yml").read_text())
    jobs = wf["jobs"]
    assert list(jobs) == STAGES
    for before, job in zip(STAGES, STAGES[1:]):
        assert jobs[job]["needs"] == before, job
    assert jobs["promote-prod"]["environment"] == "prod"  # required reviewers: the manual approval
    assert "ORCH_REGISTRY_PASSWORD" in wf["env"] and "secrets." in wf["env"]["ORCH_REGISTRY_PASSWORD"]
    for name, job in jobs.items():
        uploads = [s for s in job["steps"] if "upload-artifact" in str(s.get("uses", ""))]
        assert uploads and uploads[0]["if"] == "always()" and uploads[0]["with"]["path"] == "orch-output/", name
    return {name: [c for s in job["steps"] for c in orch_commands(s.get("run", ""))] for name, job in jobs.items()}


def gitlab_stages() -> dict[str, list[list[str]]]:
    ci = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    assert ci["stages"] == STAGES
    jobs = {k: v for k, v in ci.items() if isinstance(v, dict) and "stage" in v}
    assert [j["stage"] for j in jobs.values()] == STAGES and list(jobs) == STAGES
    prod = jobs["promote-prod"]
    assert prod["when"] == "manual" and prod["allow_failure"] is False and prod["environment"]["name"] == "prod"
    assert ci["default"]["artifacts"]["when"] == "always" and ci["default"]["artifacts"]["paths"] == ["orch-output/"]
    return {name: [c for line in job["script"] for c in orch_commands(line)] for name, job in jobs.items()}


@pytest.mark.parametrize("stages", [github_stages, gitlab_stages], ids=["github", "gitlab"])
def test_the_ci_pipelines_run_the_stages_in_order_with_commands_the_cli_accepts(stages):
    import typer.main

    from orchestrator.cli import app

    found = stages()
    root = typer.main.get_command(app)
    for stage, commands in found.items():
        assert [" ".join(c[:len(e.split())]) for c, e in zip(commands, EXPECTED[stage])] == EXPECTED[stage], stage
        assert len(commands) == len(EXPECTED[stage]), stage
        for argv in commands:
            assert "--json" in argv, argv
            cmd, rest = root, list(argv)
            while hasattr(cmd, "commands"):
                cmd = cmd.commands[rest.pop(0)]
            ctx = cmd.make_context(f"orch {cmd.name}", rest)  # raises on an unknown option or a missing one
            assert ctx.params["json"] is True
    O.reset()


def test_setup_script_prepares_a_github_job_without_printing_the_key(tmp_path):
    """examples/ci/setup-orch.sh as a GitHub job runs it, with python3 standing in (a
    venv whose pip installs nothing and whose orch prints a version): the key lands in
    a 0600 file, the file paths reach later steps through $GITHUB_ENV / $GITHUB_PATH,
    and the key's text is in no output."""
    import stat
    import subprocess

    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3").write_text(textwrap.dedent("""\
        #!/bin/sh
        # python3 -m venv DIR: a venv with a pip that installs nothing and an orch
        [ "$1 $2" = "-m venv" ] || exit 64
        mkdir -p "$3/bin"
        printf '#!/bin/sh\\necho "pip $*" >> "%s/pip.log"\\n' "$3" > "$3/bin/pip"
        printf '#!/bin/sh\\necho "orch, version 0.0-test"\\n' > "$3/bin/orch"
        chmod +x "$3/bin/pip" "$3/bin/orch"
        """))
    (shims / "python3").chmod(0o755)
    job = tmp_path / "job"
    job.mkdir()
    key = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAAtest-key-body\n-----END OPENSSH PRIVATE KEY-----"
    env = {"PATH": f"{shims}:/usr/bin:/bin", "HOME": str(tmp_path), "RUNNER_TEMP": str(tmp_path / "runner"),
           "GITHUB_ENV": str(tmp_path / "github_env"), "GITHUB_PATH": str(tmp_path / "github_path"),
           "ORCH_SSH_PRIVATE_KEY": key, "ORCH_KNOWN_HOSTS": "10.0.0.5 ssh-ed25519 AAAAC3Nz"}
    cp = subprocess.run(["bash", str(CI / "setup-orch.sh")], cwd=job, env=env, capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "orch, version 0.0-test" in cp.stdout
    assert "test-key-body" not in cp.stdout + cp.stderr
    exported = dict(line.split("=", 1) for line in (tmp_path / "github_env").read_text().splitlines())
    key_file = Path(exported["ORCH_SSH_KEY_FILE"])
    assert key_file.read_text() == key + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert Path(exported["ORCH_KNOWN_HOSTS_FILE"]).read_text() == "10.0.0.5 ssh-ed25519 AAAAC3Nz\n"
    assert exported["ORCH_OUT"] == str(job / "orch-output") and (job / "orch-output").is_dir()
    venv_bin = (tmp_path / "github_path").read_text().strip()
    assert Path(venv_bin, "orch").is_file()
    assert f"install --quiet {job}" in Path(venv_bin).parent.joinpath("pip.log").read_text()
    assert (CI / "README.md").is_file()


def test_a_test_environment_without_checks_is_no_dead_end(orch, cli_world, monkeypatch):
    # test has no verify checks; prod's `verified` gate needs a verified release of test.
    envs = cli_world.dir / "environments"
    with_checks = (envs / "test.yaml").read_text()
    head, rest = with_checks.split("verify:\n", 1)
    (envs / "test.yaml").write_text(head + rest[rest.index("overlay:"):])
    assert orch("up", "--env", "dev").code == 0
    assert orch("promote", "hello", "--to", "test").code == 0
    from orchestrator.io import nodes as sessions

    opened = []
    real = sessions.env_sessions
    monkeypatch.setattr("orchestrator.io.nodes.env_sessions",
                        lambda environment, **kw: opened.append(environment.name) or real(environment, **kw))

    r = orch("verify", "--env", "test")  # nothing to verify is bad input, not a pass
    assert r.code == 2 and opened == [], r
    err = r.final["error"]
    assert err["kind"] == "InputError" and "nothing to verify: test has no verify checks" in err["message"]
    assert f"{envs / 'test.yaml'}: verify.checks:" in err["message"] and "prod promotes only verified" in err["message"]
    assert "Fix: add checks under `verify: checks:` in " + str(envs / "test.yaml") in err["message"]
    assert f"`gates.verification: false`) from prod's environment file ({envs / 'prod.yaml'})" in err["message"]
    assert cli_world.history("test").live().verification is None

    r = orch("promote", "hello", "--to", "prod", "--approve")
    assert r.code == 3, r
    err = r.final["error"]
    assert err["details"]["gate"] == "verified" and err["details"]["no_checks"] is True
    assert "it cannot be: test has no verify checks" in err["message"]
    assert f"in test's environment file ({envs / 'test.yaml'})" in err["fix"]
    assert f"`gates.verification: false`) from prod's environment file ({envs / 'prod.yaml'})" in err["fix"]

    (envs / "test.yaml").write_text(with_checks)  # the first fix
    r = orch("verify", "--env", "test")
    assert r.code == 0 and opened == ["test"], r
    assert orch("promote", "hello", "--to", "prod", "--approve").code == 0
