"""The local lab, end to end: real nodes, real engines, a real registry (root only)."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .lab_traces import _traces

pytestmark = pytest.mark.e2e

# A second, throw-away lab, so `lab down` is tested without touching the default one.
SCRATCH = "orch-lab-e2e"
SCRATCH_SUBNET = "10.250.9.0/24"


def _https(url: str, *, cafile=None, user=None, password=None, method="GET", headers=None):
    ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    req = urllib.request.Request(url, method=method, headers=headers or {})
    if user:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, resp.headers
    except urllib.error.HTTPError as err:
        return err.code, err.headers


def test_every_node_has_its_own_engine(lab, ssh):
    ids = {}
    for node in lab.nodes:
        shell = ssh(node.name)
        engine_id = shell.check("docker info --format '{{.ID}}'").strip()
        assert engine_id, node.name
        ids[node.name] = engine_id
        assert shell.check("hostname").strip() == node.name
    assert len(set(ids.values())) == len(lab.nodes), ids


def test_each_node_pulls_busybox_through_the_mirror_and_runs_it(lab, ssh):
    from orchestrator.lab import registry
    from orchestrator.lab.state import load_spec
    from orchestrator.lab.model import LabPaths

    spec = load_spec(LabPaths.for_name(lab.name))
    creds = registry.load_credentials(spec)
    lab_digest = registry.manifest_digest(spec, creds, "library/busybox", "latest")
    assert lab_digest

    def pull_and_run(node):
        shell = ssh(node.name)
        shell.check("docker pull -q busybox")
        digests = shell.check("docker image inspect busybox --format '{{json .RepoDigests}}'")
        out = shell.check("docker run --rm busybox echo ok")
        return node.name, json.loads(digests), out.strip()

    with ThreadPoolExecutor(len(lab.nodes)) as pool:
        for name, digests, out in pool.map(pull_and_run, lab.nodes):
            assert out == "ok", name
            # The bytes are the lab's own busybox, resolved through the mirror.
            assert any(d.endswith(lab_digest) for d in digests), (name, digests, lab_digest)


def test_published_port_answers_only_at_its_node(lab, ssh):
    prod1, prod2 = ssh("prod-1"), ssh("prod-2")
    name, port = "orch-e2e-web", 18080
    prod1.run(f"docker rm -f {name}")
    prod1.check(
        f"docker run -d --name {name} -p {port}:80 busybox "
        "sh -c 'mkdir -p /www && echo hello-from-prod-1 > /www/index.html && exec httpd -f -p 80 -h /www'"
    )
    try:
        body, error = None, None
        deadline = time.monotonic() + 120  # a wait for httpd to listen, not a speed check
        while time.monotonic() < deadline:
            try:
                url = f"http://{lab.node('prod-1').address}:{port}/"
                with urllib.request.urlopen(url, timeout=3) as resp:
                    body = resp.read().decode().strip()
                break
            except OSError as err:
                error = err
                time.sleep(0.3)
        assert body == "hello-from-prod-1", f"no answer from prod-1:{port} within 120 s (last error: {error})"
        with pytest.raises(OSError):
            socket.create_connection((lab.node("prod-2").address, port), timeout=3).close()
        # Nodes share the kernel and nothing else: prod-2's engine does not see it.
        assert name not in prod2.check("docker ps -a --format '{{.Names}}'").split()
    finally:
        prod1.run(f"docker rm -f {name}")


def test_registry_requires_credentials_and_tls(lab):
    user, password = lab.registry_credentials()
    base = f"https://{lab.registry}/v2"
    # Anonymous: refused, for reads and pushes alike.
    assert _https(f"{base}/", cafile=lab.ca_cert)[0] == 401
    assert _https(f"{base}/e2e/anon/blobs/uploads/", cafile=lab.ca_cert, method="POST")[0] == 401
    # Authenticated: an upload session opens.
    status, _ = _https(
        f"{base}/e2e/auth/blobs/uploads/", cafile=lab.ca_cert, user=user, password=password, method="POST"
    )
    assert status == 202, status
    # TLS from the lab CA: a client that does not trust it refuses the connection.
    with pytest.raises(urllib.error.URLError) as err:
        _https(f"{base}/")
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    # The mirror is anonymous but read-only.
    mirror = f"https://{lab.registry_mirror}/v2"
    assert _https(f"{mirror}/", cafile=lab.ca_cert)[0] == 200
    assert _https(f"{mirror}/e2e/anon/blobs/uploads/", cafile=lab.ca_cert, method="POST")[0] != 202


def test_docker_push_needs_login(lab):
    user, password = lab.registry_credentials()
    ref = f"{lab.registry}/e2e/busybox:{os.getpid()}"
    subprocess.run(["docker", "tag", "busybox:latest", ref], check=True)
    try:
        with tempfile.TemporaryDirectory() as cfg:
            anon = subprocess.run(["docker", "--config", cfg, "push", ref], capture_output=True, text=True)
            assert anon.returncode != 0
            assert "basic auth" in anon.stderr + anon.stdout or "unauthorized" in (anon.stderr + anon.stdout).lower()
            subprocess.run(
                ["docker", "--config", cfg, "login", "-u", user, "--password-stdin", lab.registry],
                input=password, capture_output=True, text=True, check=True,
            )
            pushed = subprocess.run(["docker", "--config", cfg, "push", ref], capture_output=True, text=True)
            assert pushed.returncode == 0, pushed.stderr
    finally:
        subprocess.run(["docker", "rmi", ref], capture_output=True)


def test_node_containers_reach_debians_mirror(lab, ssh):
    out = ssh("dev-1").check(
        "docker run --rm busybox wget -q -O - http://deb.debian.org/debian/dists/bookworm/Release | head -3",
        timeout=120,
    )
    assert "Debian" in out


def test_second_up_changes_nothing_and_status_is_healthy(lab, orch):
    run_orch = orch
    cp = run_orch("lab", "up", env={"ORCH_LAB_NAME": lab.name})
    # Already up: it only checks. Every action `lab up` takes (installing packages, the
    # bridge, starting or restarting an engine, sshd or the registry, importing or pushing
    # an image, resetting a node) says so on stderr; the only line left is the last one.
    # (No wall-clock bound: speed is measured in bench/.)
    lines = [ln for ln in cp.stderr.splitlines()
             if ln.strip() and ln != "lab: another `orch lab` command is working on this lab; waiting for it"]
    done = rf"lab: lab {re.escape(lab.name)} is up \([0-9.]+ s\)"
    assert len(lines) == 1 and re.fullmatch(done, lines[0]), cp.stderr
    assert json.loads(cp.stdout)["status"] == "ok"
    st = json.loads(run_orch("lab", "status", "--json").stdout)
    assert st["healthy"], st["issues"]
    assert [n["name"] for n in st["nodes"]] == [n.name for n in lab.nodes]
    assert all(n["sshd_up"] and n["engine_up"] and n["engine_version"] for n in st["nodes"])
    assert {"library/busybox", "library/debian"} <= set(st["registry"]["repositories"])


def test_scratch_lab_recovers_from_a_killed_session_and_goes_down_without_a_trace(lab, orch):
    run_orch = orch
    from orchestrator.lab import lab_info

    run_orch("lab", "up", "--name", SCRATCH, "--subnet", SCRATCH_SUBNET, "--nodes", "dev=1")
    info = lab_info(SCRATCH)
    node = info.nodes[0]
    docker = ["docker", "-H", node.docker_host]
    # A running container with a published port: mounts, cgroups, a proxy process.
    subprocess.run(docker + ["run", "-d", "-p", "18081:80", "busybox", "httpd", "-f", "-p", "80"], check=True, capture_output=True)

    root_before = info.acme_ca.read_text()

    # A killed session: the node's engine and sshd die, and the ACME server; the bridge is gone.
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(info.state_dir / "nodes") in cmd and ("dockerd" in cmd or "sshd" in cmd):
            os.kill(int(pid), signal.SIGKILL)
        if str(info.state_dir / "acme") in cmd and cmd.startswith("pebble "):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "link", "delete", info.bridge], check=True)
    time.sleep(0.5)
    st = run_orch("lab", "status", "--name", SCRATCH, "--json", check=False)
    assert st.returncode == 1 and json.loads(st.stdout)["issues"]

    run_orch("lab", "up", "--name", SCRATCH)
    st = json.loads(run_orch("lab", "status", "--name", SCRATCH, "--json").stdout)
    assert st["healthy"], st["issues"]
    # pebble makes a new root at each start: `lab up` fetched the new one.
    assert st["acme"]["up"] and st["acme"]["ca_current"] and st["acme"]["dns_up"]
    assert info.acme_ca.read_text() != root_before

    assert info.state_dir == Path("/var/lib") / SCRATCH  # where lab_traces looks
    certs = (Path(f"/etc/docker/certs.d/{info.registry}"),)
    assert _traces(SCRATCH, info.bridge, certs)
    run_orch("lab", "down", "--name", SCRATCH)
    assert _traces(SCRATCH, info.bridge, certs) == {}
    assert not Path(f"/etc/docker/certs.d/{info.registry_mirror}").exists()
    # The default lab is untouched.
    st = json.loads(run_orch("lab", "status", "--json").stdout)
    assert st["healthy"], st["issues"]
