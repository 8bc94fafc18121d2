import hashlib
import io
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from orchestrator.io import agent_bundle
from orchestrator.io.agent_bundle import SHEBANG, build_bundle, build_bytes, bundle_name


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


def test_a_second_build_finds_its_inputs_in_the_index_without_archiving(tmp_path, monkeypatch, built):
    first = build_bundle(tmp_path)
    assert first.path.read_bytes() == built[0]

    def no_archive(*a):
        raise AssertionError("archived again although nothing changed")

    monkeypatch.setattr(agent_bundle, "_archive", no_archive)
    assert build_bundle(tmp_path) == first


def test_changed_agent_code_builds_a_new_bundle_despite_the_index(tmp_path):
    import shutil

    copy = tmp_path / "agent"
    shutil.copytree(Path(agent_bundle._package_dir("agent")), copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = build_bundle(tmp_path / "cache", copy)
    rpc = copy / "rpc.py"
    rpc.write_text(rpc.read_text() + "\n# changed\n")
    after = build_bundle(tmp_path / "cache", copy)
    assert after.sha256 != before.sha256 and after.path.is_file() and before.path.is_file()
    assert zipfile.ZipFile(after.path).read("agent/rpc.py").endswith(b"# changed\n")


@pytest.mark.parametrize("damage", ["bundle removed", "bundle truncated", "index garbled"])
def test_a_damaged_cache_is_rebuilt(tmp_path, damage, built):
    b = build_bundle(tmp_path)
    index = next(tmp_path.glob("index-*.json"))
    if damage == "bundle removed":
        b.path.unlink()
    elif damage == "bundle truncated":
        b.path.write_bytes(b.path.read_bytes()[:100])
    else:
        index.write_text("{not json")
    again = build_bundle(tmp_path)
    assert again.sha256 == b.sha256 and again.path.read_bytes() == built[0]


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


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3, as on a node")
def test_runs_from_an_unpacked_copy_that_keeps_its_bytecode(tmp_path):
    b = build_bundle(tmp_path / "bundles")
    stale = tmp_path / "bundles" / "orch-agent-0000000000000000.d"  # its .pyz was pruned
    (stale / "agent").mkdir(parents=True)

    def version() -> dict:
        out = subprocess.run(["/usr/bin/python3", str(b.path), "version"], capture_output=True, text=True,
                             timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    copy = b.path.with_suffix(".d")
    first = version()
    assert first["runs_from"] == str(copy) and first["bundle"] == b.name
    assert (copy / "agent" / "rpc.py").read_bytes() == zipfile.ZipFile(b.path).read("agent/rpc.py")
    assert list((copy / "agent" / "__pycache__").glob("__main__.*.pyc"))  # Python cached it there
    assert not stale.exists()
    assert version()["runs_from"] == str(copy)


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs the system python3, as on a node")
def test_when_it_cannot_unpack_it_runs_from_the_zip(tmp_path):
    b = build_bundle(tmp_path / "bundles")
    blocker = b.path.with_suffix(".d")
    blocker.write_text("not a folder")  # as a read-only or full state dir would: the unpack fails
    out = subprocess.run(["/usr/bin/python3", str(b.path), "version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["runs_from"] == str(b.path)
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in b.path.parent.iterdir() if ".tmp-" in p.name) == []  # no half unpack left


def test_too_old_python_gets_a_protocol_error(tmp_path):
    old = Path("/root/.pyenv/versions/3.8.18/bin/python")
    if not old.exists():
        pytest.skip("no Python 3.8 here")
    b = build_bundle(tmp_path)
    out = subprocess.run([str(old), str(b.path), "rpc"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    msg = json.loads(out.stdout)
    assert msg["id"] is None and msg["error"]["kind"] == "python" and "too old" in msg["error"]["message"]
