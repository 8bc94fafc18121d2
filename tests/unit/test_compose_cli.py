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
