"""The up / plan / down / ps / logs / exec commands over fake nodes (see test_deploy)."""

import json
import textwrap

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.unit.fakes import ENV, SHOP, FakeNode


@pytest.fixture
def project(tmp_path, monkeypatch):
    nodes = {n: FakeNode(n, tmp_path / "state" / n) for n in ("n1", "n2")}

    def connector(environment, progress, project=None, spare_sessions=0):
        return {n.name: nodes[n.name] for n in environment.nodes}

    monkeypatch.setattr("orchestrator.io.nodes.ssh_connect", connector)
    monkeypatch.setattr("orchestrator.io.images.prepare_images", fake_prepare_images)
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(SHOP))
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "dev.yaml").write_text(ENV.format(name="dev"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    return nodes


def fake_prepare_images(project, env, **kw):
    """No registry here: every image stays as written (the fake nodes know them by name)."""
    from orchestrator.io.images import ImageSet
    from orchestrator.core.images import VersionInfo

    return ImageSet(VersionInfo("v1", "override"), {n: s.image for n, s in project.services.items() if s.image})


def cli(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def last_json(out):
    return json.loads(out.strip().splitlines()[-1])


def test_up_without_a_tty_prints_json_lines_and_a_final_object(project):
    r = cli("up", "--env", "dev")
    assert r.exit_code == 0, r.output
    lines = [json.loads(ln) for ln in r.stdout.strip().splitlines()]
    assert len(lines) > 1 and all("event" in ln for ln in lines[:-1])
    final = lines[-1]
    assert final["status"] == "ok" and final["version"] == 1 and final["changed"]
    again = last_json(cli("up", "--env", "dev", "--json").stdout)
    assert again["noop"] is True and again["changed"] == []


def test_plan_prints_text_and_json(project):
    r = cli("plan", "--env", "dev", "--text")
    assert r.exit_code == 0 and "create (new)" in r.stdout and "6 to create" in r.stdout
    data = last_json(cli("plan", "--env", "dev", "--json").stdout)
    assert data["plan"]["summary"]["create"] == 6
    assert all(n.ops("rollout") == [] for n in project.values())


def test_failed_up_exits_1_with_a_failed_final_object(project, tmp_path):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(SHOP).replace("image: job", "image: fail"))
    r = cli("up", "--env", "dev", "--json")
    assert r.exit_code == 1
    final = last_json(r.stdout)
    assert final["status"] == "failed" and final["error"]["details"]["service"] == "migrate"
    assert "exited with code 3" in r.stderr


def test_bad_input_exits_2(project, tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  a: {image: busybox, ipc: host}\n")
    r = cli("up", "--env", "dev", "--json")
    assert r.exit_code == 2 and last_json(r.stdout)["error"]["exit_code"] == 2


def test_down_ps_logs_exec(project):
    cli("up", "--env", "dev")
    ps = last_json(cli("ps", "--env", "dev", "--json").stdout)
    assert {(c["service"], c["replica"], c["node"]) for c in ps["containers"]} >= {("web", 1, "n1"), ("web", 2, "n2")}
    table = cli("ps", "--env", "dev", "--text").stdout
    assert table.splitlines()[0].split() == ["SERVICE", "REPLICA", "NODE", "STATE", "HEALTH", "IMAGE", "PORTS",
                                             "UPTIME"]
    logs = cli("logs", "--env", "dev", "web", "--tail", "5", "--text").stdout
    assert "web-2@n2 | starting shop-web-2" in logs
    r = cli("exec", "--env", "dev", "web", "--replica", "2", "--", "exit", "4")
    assert r.exit_code == 4
    bad = CliRunner().invoke(app, ["logs", "--env", "dev", "nope"])
    assert type(bad.exception).__name__ == "InputError" and bad.exception.exit_code == 2
    down = cli("down", "--env", "dev")
    assert down.exit_code == 0 and last_json(down.stdout)["status"] == "ok"
    assert not project["n1"].engine.records and not project["n2"].engine.records


def test_help_stays_fast_and_lazy():
    import subprocess
    import sys

    code = ("import sys, orchestrator.cli; "
            "print(','.join(m for m in ('paramiko', 'rich.live', 'networkx', 'orchestrator.app.deploy', 'jinja2') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
