"""Verification: planning checks per node / service, running HTTP and command checks,
the report, and recording it on the live release."""

import sys

import pytest
import requests

from orchestrator.core import verify as V
from orchestrator.io import checks as C
from orchestrator.core.compose import LoadOptions, load_project
from orchestrator.core.environments import parse_environment
from orchestrator.errors import InputError


def env_file(tmp_path, checks):
    path = tmp_path / "prod.yaml"
    path.write_text(
        "name: prod\nnodes:\n  - {name: prod-1, host: 10.250.0.31}\n  - {name: prod-2, host: 10.250.0.32}\n"
        "vars: {health: /health.json}\nverify:\n  on_deploy: true\n  checks:\n" + checks)
    return parse_environment(path)


def project(tmp_path):
    (tmp_path / "compose.yaml").write_text(
        "name: hello\nservices:\n  web: {image: busybox, ports: ['8090:8080']}\n"
        "  api: {image: busybox, ports: ['8091-8092:8081']}\n  worker: {image: busybox}\n")
    return load_project(LoadOptions(working_dir=tmp_path, environ={}))


CHECKS = """\
    - {name: web-home, service: web, http: "http://{{ node.host }}:{{ service.port }}/", contains: hello}
    - {name: api-health, service: api, http: "http://{{ node.host }}:8091{{ vars.health }}", status: 200}
    - {name: once, http: "http://lb.example/{{ env.name }}/{{ release.id }}"}
    - {name: smoke, command: [pytest, -q, smoke/], timeout: 30, retries: 0}
"""


def test_plan_renders_per_node_where_the_service_runs(tmp_path):
    env, p = env_file(tmp_path, CHECKS), project(tmp_path)
    targets = V.plan_checks(env, p, placement={"web": ["prod-1", "prod-2"], "api": ["prod-2"]}, release=7)
    got = [(t.name, t.kind, t.node, t.target) for t in targets]
    assert got == [
        ("web-home", "http", "prod-1", "http://10.250.0.31:8090/"),
        ("web-home", "http", "prod-2", "http://10.250.0.32:8090/"),
        ("api-health", "http", "prod-2", "http://10.250.0.32:8091/health.json"),
        ("once", "http", None, "http://lb.example/prod/7"),
        ("smoke", "command", None, "pytest -q smoke/"),
    ]
    smoke = targets[-1]
    assert smoke.timeout == 30 and smoke.retries == 0
    assert smoke.environ == {
        "ORCH_ENV": "prod", "ORCH_PROJECT": "hello", "ORCH_RELEASE": "7", "ORCH_NODES": "10.250.0.31 10.250.0.32",
        "ORCH_NODE_PROD_1": "10.250.0.31", "ORCH_NODE_PROD_2": "10.250.0.32",
        "ORCH_URL_API": "http://10.250.0.32:8091/", "ORCH_URLS_API": "http://10.250.0.32:8091/",
        "ORCH_URL_WEB": "http://10.250.0.31:8090/", "ORCH_URLS_WEB": "http://10.250.0.31:8090/ http://10.250.0.32:8090/",
    }


def test_without_placement_every_node_is_checked(tmp_path):
    env, p = env_file(tmp_path, CHECKS), project(tmp_path)
    nodes = [t.node for t in V.plan_checks(env, p) if t.name == "api-health"]
    assert nodes == ["prod-1", "prod-2"]


def test_a_service_not_running_anywhere_fails_its_check(tmp_path):
    env, p = env_file(tmp_path, CHECKS), project(tmp_path)
    [t] = [t for t in V.plan_checks(env, p, placement={"web": ["prod-1"]}) if t.name == "api-health"]
    r = C.run_http(t)
    assert not r.ok and "no running container" in r.error


def test_bad_templates_and_unknown_services_are_input_errors(tmp_path):
    p = project(tmp_path)
    with pytest.raises(InputError) as err:
        V.plan_checks(env_file(tmp_path, '    - {name: a, http: "http://{{ nod.host }}/"}\n'), p)
    assert "nod" in err.value.render()
    with pytest.raises(InputError) as err:
        V.plan_checks(env_file(tmp_path, '    - {name: a, service: wbe, http: "http://x/"}\n'), p)
    assert "'wbe'" in err.value.render() and "web" in err.value.render()


class Get:
    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, url, timeout=None):
        self.calls.append((url, timeout))
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a

        class R:
            status_code, text = a

        return R


def target(**kw):
    base = dict(name="web", kind="http", url="http://h/", status=200, contains="hello", timeout=2, retries=2)
    base.update(kw)
    return V.CheckTarget(**base)


def test_http_check_retries_until_it_passes():
    get = Get([requests.exceptions.ConnectionError("[Errno 111] Connection refused"), (503, ""), (200, "hello!")])
    r = C.run_http(target(), get=get, sleep=lambda s: None)
    assert r.ok and r.attempts == 3 and r.status == 200 and get.calls[0] == ("http://h/", 2)


@pytest.mark.parametrize("answer,error", [
    ((500, "x"), "HTTP 500 (expected 200)"),
    ((200, "bye"), "does not contain 'hello'"),
    (requests.exceptions.ConnectTimeout("t"), "no answer within 2s"),
    (requests.exceptions.ConnectionError("Max retries ([Errno 111] Connection refused)"), "connection refused"),
])
def test_http_check_failures_say_why(answer, error):
    r = C.run_http(target(), get=Get([answer]), sleep=lambda s: None)
    assert not r.ok and r.attempts == 3 and error in r.error


def test_command_check_gets_the_exports_and_its_output_is_kept(tmp_path):
    code = "import os,sys; print('env', os.environ['ORCH_ENV']); sys.exit(0 if os.environ['X']=='1' else 4)"
    t = V.CheckTarget(name="smoke", kind="command", argv=(sys.executable, "-c", code), timeout=20, retries=0,
                      environ={"ORCH_ENV": "prod", "X": "1"})
    r = C.run_command(t, cwd=str(tmp_path))
    assert r.ok and r.status == 0 and r.output == ["env prod"]
    bad = C.run_command(V.CheckTarget(**dict(t.__dict__, environ={"ORCH_ENV": "prod", "X": "0"})))
    assert not bad.ok and bad.status == 4 and bad.error == "exited with code 4"
    slow = C.run_command(V.CheckTarget(name="s", kind="command", argv=(sys.executable, "-c", "import time; time.sleep(5)"),
                                       timeout=0.5, retries=0))
    assert not slow.ok and "did not finish within 0.5s" in slow.error
    missing = C.run_command(V.CheckTarget(name="m", kind="command", argv=("no-such-command-xyz",), retries=0))
    assert not missing.ok and "command not found" in missing.error


def test_report_in_plan_order_and_json():
    targets = [target(name="a", node="n1"), target(name="b", node="n2"), target(name="c", kind="command", argv=("x",))]
    seen = []
    report = C.run_checks(targets, env="prod", project="hello", release=7, on_result=seen.append, runners={
        "http": lambda t: V.CheckResult(t.name, "http", t.url, t.name == "a", 1, 0.1, t.node),
        "command": lambda t: V.CheckResult(t.name, "command", t.target, True, 1, 0.1),
    })
    assert [r.name for r in report.results] == ["a", "b", "c"] and len(seen) == 3
    assert not report.ok and report.summary() == "prod: 1 of 3 check(s) failed: b@n2"
    j = report.to_json()
    assert j["release"] == 7 and j["passed"] == 2 and j["total"] == 3 and j["results"][1]["ok"] is False


def test_placement_from_state():
    states = {"prod-2": [{"project": "hello", "service": "web", "state": "running"}],
              "prod-1": [{"project": "hello", "service": "web", "state": "running"},
                         {"project": "hello", "service": "api", "state": "exited"},
                         {"project": "other", "service": "api", "state": "running"}]}
    assert V.placement_from_state(states, "hello") == {"web": ["prod-1", "prod-2"]}


def test_record_verification_writes_on_the_release(tmp_path):
    from orchestrator.core import releases as R

    written = []

    class Ledger:
        def write(self, *rs):
            written.extend(rs)

    rel = R.Release("hello", "prod", 7, "live", {"web": "x@sha256:" + "a" * 64}, {}, "ab" * 32, {}, "t", "t")
    report = V.VerifyReport("prod", "hello", 7, [V.CheckResult("a", "http", "u", True, 1, 0.1)], "s", "f", 0.1)
    V.record_verification(Ledger(), R.History("hello", "prod", [rel]), report)
    assert written[0].verified is True and written[0].verification["total"] == 1


def test_template_errors_use_the_parsers_key_form_with_file_and_line(tmp_path):
    p = project(tmp_path)
    checks = ('    - {name: a, http: "http://x/"}\n'
              '    - name: b\n      service: wbe\n      http: "http://x/"\n'
              '    - {name: c, http: "http://{{ nod.host }}/"}\n')
    with pytest.raises(InputError) as err:
        V.plan_checks(env_file(tmp_path, checks), p)
    unknown, undefined = err.value.problems
    assert unknown.key == "verify.checks[1].service" and unknown.line == 11 and unknown.file.endswith("prod.yaml")
    assert undefined.key == "verify.checks[2].http" and undefined.line == 13
