"""Secrets stay out of output and out of the nodes' ledgers (agent.wire.redact's one rule):
a project whose secrets come from .env, a secret file and inline in the Compose file
(environment, a URL, a connection string, command, labels, healthcheck) is deployed to
dev; then every orch output, and the ledger files' bytes read over SSH, hold none of
them, while the container gets the real values."""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest

from .helpers import last_json

pytestmark = pytest.mark.e2e

TAG = uuid.uuid4().hex[:8]
SECRETS = {
    "env": f"envpw-{TAG}",  # .env DB_PASSWORD
    "key": f"sk-{TAG}",  # .env STRIPE_KEY, used under a plain name
    "url": f"urlpw-{TAG}",  # the password of a redis:// URL
    "conn": f"connpw-{TAG}",  # Password= in a connection string
    "cmd": f"cmdpw-{TAG}",  # after --password in command
    "label": f"labeltok-{TAG}",  # a label with a secret name
    "health": f"hckey-{TAG}",  # --api-key= in the healthcheck
    "file": f"filepw-{TAG}",  # a Compose secret's file
}

COMPOSE = """\
services:
  app:
    image: busybox
    init: true
    stop_grace_period: 1s
    command: ["sh", "-c", "exec sleep 3600", "--password", "{cmd}"]
    environment:
      DB_PASSWORD: ${{DB_PASSWORD}}
      PAYMENT: ${{STRIPE_KEY}}
      REDIS_URL: "redis://:{url}@cache:6379/0"
      MSSQL: "Server=db;User Id=sa;Password={conn};"
      MODE: plain-{tag}
    labels: {{com.example.auth-token: "{label}"}}
    healthcheck:
      test: ["CMD", "true", "--api-key={health}"]
      interval: 1s
      timeout: 2s
      retries: 3
    secrets: [pw]
secrets:
  pw: {{file: ./pw.txt}}
"""


@pytest.fixture(scope="module")
def app(orch, lab, tmp_path_factory):
    d = tmp_path_factory.mktemp("secrets")
    (d / "compose.yaml").write_text(textwrap.dedent(COMPOSE.format(tag=TAG, **SECRETS)))
    (d / ".env").write_text(f"DB_PASSWORD={SECRETS['env']}\nSTRIPE_KEY={SECRETS['key']}\n")
    (d / "pw.txt").write_text(SECRETS["file"])
    envs = d / "environments"
    envs.mkdir()
    node = lab.node("dev-1")
    (envs / "dev.yaml").write_text(
        f"name: dev\nnodes:\n  - {{name: dev-1, host: {node.address}, identity_file: {lab.ssh_key}}}\n"
        f"ssh: {{known_hosts: {lab.known_hosts}}}\n"
        f"registry: {{mirror: {lab.registry_mirror}, ca_file: {lab.ca_cert}}}\n")
    project = "e2e-secrets-" + TAG
    base = ["--env", "dev", "--file", str(d / "compose.yaml"), "-p", project]

    def run(command, *rest, check=True, verbose=False):
        return orch(*(["--verbose"] if verbose else []), command, *base, *rest, check=check)

    outputs = [run("up", "--json", verbose=True)]
    assert last_json(outputs[0].stdout)["status"] == "ok"
    run.outputs = outputs
    yield run, project
    run("down", check=False)


def leaked(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


def test_no_output_prints_a_secret(app):
    run, project = app
    outputs = run.outputs + [run("config"), run("config", "--json"), run("plan", "--json"),
                             run("ps", "--json", verbose=True), run("history", "--json"), run("history", "--text")]
    for cp in outputs:
        assert not leaked(cp.stdout + cp.stderr), (cp.args, leaked(cp.stdout + cp.stderr))
    history = last_json(run("history", "--json").stdout)
    assert [r["status"] for r in history["releases"]] == ["live"]
    assert f"plain-{TAG}" in run("config").stdout  # what is not a secret is shown


def test_the_container_gets_the_real_values(app):
    run, _ = app
    out = run("exec", "app", "--", "sh", "-c", "echo $DB_PASSWORD $PAYMENT $REDIS_URL; cat /run/secrets/pw").stdout
    assert SECRETS["env"] in out and SECRETS["key"] in out and SECRETS["url"] in out and SECRETS["file"] in out


def test_the_nodes_ledger_files_hold_no_secret(app, ssh):
    run, project = app
    shell = ssh("dev-1")
    paths = shell.check("ls /var/lib/orch-agent/engines/*/ledger.sqlite3*").split()
    assert paths
    data = shell.check("cat " + " ".join(paths) + " | base64 -w0")
    import base64

    raw = base64.b64decode(data)
    assert project.encode() in raw  # the release is in there...
    assert not [n for n, v in SECRETS.items() if v.encode() in raw]  # ...its secrets are not
    # and what the ledger answers over the agent (orch history) is what is stored: masked
    manifest = json.loads(shell.check(
        "python3 -c \"import sqlite3,sys,glob; "
        "[print(r[0]) for p in glob.glob('/var/lib/orch-agent/engines/*/ledger.sqlite3') "
        f"for r in sqlite3.connect(p).execute('SELECT manifest FROM releases WHERE project=\\'{project}\\'')]\""
    ).splitlines()[0])
    env = manifest["services"]["app"]["environment"]
    assert env["DB_PASSWORD"] == "<redacted>" and env["REDIS_URL"] == "redis://:<redacted>@cache:6379/0"
    assert env["MODE"] == f"plain-{TAG}"
