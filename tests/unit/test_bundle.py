import hashlib
import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from orchestrator import agent_bundle
from orchestrator.agent_bundle import SHEBANG, build_bundle, build_bytes, bundle_name


@pytest.fixture(scope="module")
def built():
    return build_bytes()


def test_build_is_deterministic(built):
    data, manifest = built
    again, manifest2 = build_bytes()
    assert data == again and manifest == manifest2


def test_does_not_depend_on_file_times(tmp_path, built):
    import shutil

    src = Path(agent_bundle._package_dir("agent"))
    copy = tmp_path / "agent"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for p in copy.rglob("*"):
        os.utime(p, (1_700_000_000, 1_700_000_000))
    assert build_bytes(copy)[0] == built[0]


def test_contents(built):
    data, manifest = built
    assert data.startswith(SHEBANG)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        infos = zf.infolist()
        assert names == sorted(names)
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        assert "__main__.py" in names and "agent/rpc.py" in names and "docker/api/client.py" in names
        assert "certifi/cacert.pem" in names and "charset_normalizer/md.py" in names
        assert not [n for n in names if n.endswith((".so", ".pyc", ".pyd")) or "__pycache__" in n]
        assert json.loads(zf.read("orch-agent.json")) == manifest
    assert set(manifest["dependencies"]) == {"docker", "requests", "urllib3", "idna", "charset-normalizer", "certifi",
                                              "jinja2", "markupsafe"}
    assert tuple(manifest["min_python"]) >= (3, 9)


def test_named_by_hash_and_cached(tmp_path):
    b = build_bundle(tmp_path)
    data = b.path.read_bytes()
    assert b.sha256 == hashlib.sha256(data).hexdigest()
    assert b.name == bundle_name(b.sha256) and b.name.startswith("orch-agent-") and len(b.digest) == 16
    mtime = b.path.stat().st_mtime_ns
    assert build_bundle(tmp_path).path.stat().st_mtime_ns == mtime  # cached: not rewritten


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3, as on a node")
def test_runs_on_the_node_python(tmp_path):
    b = build_bundle(tmp_path)
    out = subprocess.run(["/usr/bin/python3", str(b.path), "version"], capture_output=True, text=True, timeout=60)
    info = json.loads(out.stdout)
    assert info["bundle"] == b.name and info["protocol"] == 1
    # the docker SDK imports from inside the zip with the node's python
    code = "import sys; sys.path.insert(0, sys.argv[1]); import docker; print(docker.__file__)"
    out = subprocess.run(["/usr/bin/python3", "-c", code, str(b.path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and str(b.path) in out.stdout


def test_too_old_python_gets_a_protocol_error(tmp_path):
    old = Path("/root/.pyenv/versions/3.8.18/bin/python")
    if not old.exists():
        pytest.skip("no Python 3.8 here")
    b = build_bundle(tmp_path)
    out = subprocess.run([str(old), str(b.path), "rpc"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    msg = json.loads(out.stdout)
    assert msg["id"] is None and msg["error"]["kind"] == "python" and "too old" in msg["error"]["message"]
