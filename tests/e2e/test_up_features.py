"""What `orch up` sets up on a node, checked inside the container (`orch exec`) and with
the node's engine: env_file + environment, working_dir, user, extra_hosts, cap_add,
labels, restart policy, resources, networks, named volumes, and secrets / configs
copied to the node (0400 / 0444, root) and mounted at /run/secrets/NAME and /NAME."""

from __future__ import annotations

import json
import os
import textwrap
import uuid

import pytest

from .helpers import last_json

pytestmark = pytest.mark.e2e

COMPOSE = """\
services:
  app:
    image: busybox
    init: true
    stop_grace_period: 1s
    command: ["sh", "-c", "echo started; exec sleep 3600"]
    env_file: [app.env]
    environment: {FROM_COMPOSE: "yes", SHARED: from-compose}
    working_dir: /srv
    extra_hosts: ["gateway.test=10.250.0.1"]
    cap_add: [NET_ADMIN]
    labels: {com.example.tier: test}
    restart: on-failure:2
    deploy:
      resources:
        limits: {memory: 64M, cpus: "0.5"}
    secrets: [pw]
    configs: [{source: conf, target: /etc/app.conf}]
    volumes: [data:/data]
    networks: [front, back]
  nobody:
    image: busybox
    init: true
    stop_grace_period: 1s
    user: "65534"
    command: ["sleep", "3600"]
secrets:
  pw: {file: ./pw.txt}
configs:
  conf: {content: hello-config}
networks:
  front: {}
  back: {}
volumes:
  data: {}
"""


@pytest.fixture(scope="module")
def app(orch, lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("features")
    (d / "compose.yaml").write_text(textwrap.dedent(COMPOSE))
    (d / "app.env").write_text("FROM_FILE=1\nSHARED=from-file\n")
    (d / "pw.txt").write_text("s3cret")
    envs = d / "environments"
    envs.mkdir()
    node = lab.node("dev-1")
    (envs / "dev.yaml").write_text(
        f"name: dev\nnodes:\n  - {{name: dev-1, host: {node.address}, identity_file: {lab.ssh_key}}}\n"
        f"ssh: {{known_hosts: {lab.known_hosts}}}\n"
        # `image: busybox` is pinned to a digest through the lab's Docker Hub mirror
        f"registry: {{mirror: {lab.registry_mirror}, ca_file: {lab.ca_cert}}}\n")
    project = "e2e-feat-" + uuid.uuid4().hex[:6]
    base = ["--env", "dev", "--file", str(d / "compose.yaml"), "-p", project]

    def run(command, *rest, check=True):
        return orch(command, *base, *rest, check=check)

    final = last_json(run("up", "--json").stdout)
    assert final["status"] == "ok"
    run.dir = d
    yield run, project
    run("down", "--volumes", check=False)


def sh(run, service, script):
    cp = run("exec", service, "--", "sh", "-c", script)
    return cp.stdout.strip()


def test_environment_workdir_hosts_and_capabilities(app):
    run, _ = app
    env = sh(run, "app", "env").splitlines()
    assert "FROM_FILE=1" in env and "FROM_COMPOSE=yes" in env and "SHARED=from-compose" in env
    assert sh(run, "app", "pwd") == "/srv"
    assert "10.250.0.1\tgateway.test" in sh(run, "app", "cat /etc/hosts")
    cap_eff = int(sh(run, "app", "grep CapEff /proc/self/status").split()[1], 16)
    assert cap_eff & (1 << 12)  # CAP_NET_ADMIN
    assert sh(run, "nobody", "id -u") == "65534"


def test_secrets_and_configs_are_copied_root_owned_with_their_modes(app):
    run, _ = app
    assert sh(run, "app", "stat -c '%a %u %g' /run/secrets/pw; cat /run/secrets/pw") == "400 0 0\ns3cret"
    assert sh(run, "app", "stat -c '%a %u %g' /etc/app.conf; cat /etc/app.conf") == "444 0 0\nhello-config"


def test_engine_settings_on_the_node(app, ssh):
    _, project = app
    node = ssh("dev-1")
    attrs = json.loads(node.check(f"docker inspect {project}-app-1"))[0]
    host = attrs["HostConfig"]
    assert attrs["Config"]["Labels"]["com.example.tier"] == "test"
    assert attrs["Config"]["Labels"]["io.orch.project"] == project
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert sorted(attrs["NetworkSettings"]["Networks"]) == [f"{project}_back", f"{project}_front"]
    (data,) = [m for m in attrs["Mounts"] if m["Destination"] == "/data"]
    assert data["Type"] == "volume" and data["Name"] == f"{project}_data"


def test_a_changed_secret_gets_a_new_file_and_the_old_one_goes_once_live(app, ssh):
    """Each value has its own file on the node (a kept container mounts its own again);
    once the release is live the versions only kept containers used are removed."""
    run, project = app
    node = ssh("dev-1")

    def source() -> str:
        attrs = json.loads(node.check(f"docker inspect {project}-app-1"))[0]
        (m,) = [m for m in attrs["Mounts"] if m["Destination"] == "/run/secrets/pw"]
        return m["Source"]

    old = source()
    (run.dir / "pw.txt").write_text("n3w")
    assert last_json(run("up", "--json").stdout)["status"] == "ok"
    assert sh(run, "app", "cat /run/secrets/pw") == "n3w"
    new = source()
    assert new != old
    assert node.check(f"ls {os.path.dirname(new)}").split() == [os.path.basename(new)]
