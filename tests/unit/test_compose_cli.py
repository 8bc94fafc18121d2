"""The CLI shows loading errors as located problems, without a traceback, exit 2."""

from __future__ import annotations

import subprocess
import sys


def run(args, cwd):
    return subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_config_error_exit_2_without_traceback(tmp_path):
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    imag: nginx\n")
    proc = run(["config"], tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "compose.yaml:3:5: services.web.imag: unknown key 'imag' in service 'web'; did you mean 'image'?" in proc.stderr


def test_config_json(tmp_path):
    import json

    (tmp_path / "compose.yaml").write_text("name: demo\nservices:\n  web:\n    image: nginx\n")
    proc = run(["config", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["version"] == 1 and doc["status"] == "ok" and doc["command"] == "config"
    data = doc["project"]
    assert data["name"] == "demo" and data["services"]["web"]["image"] == "nginx"


def test_config_refuses_a_dependency_cycle_as_graph_does(tmp_path):
    import json

    (tmp_path / "compose.yaml").write_text(
        "services:\n  a:\n    image: busybox\n    depends_on: [b]\n  b:\n    image: busybox\n    depends_on: [c]\n"
        "  c:\n    image: busybox\n    links: [a]\n")
    errors = []
    for command in ("config", "graph"):
        proc = run([command, "--json"], tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        errors.append(json.loads(proc.stdout.splitlines()[-1])["error"]["problems"])
    assert errors[0] == errors[1]  # the same message as `orch graph`
    [problem] = errors[0]
    assert "dependency cycle detected: a -> b -> c -> a" in problem["message"]
    assert (problem["file"], problem["key"]) == ("compose.yaml", "services.a.depends_on")
