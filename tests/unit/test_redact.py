"""agent.wire.redact: the one secret rule, and where it applies (output, ledger)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from agent.wire.redact import MASK, REDACTED, find_secrets, first_clear_secret, mask_text, mask_tree, secret_name

SECRET_NAMES = ("DB_PASSWORD", "password", "PGPASSWORD", "API_KEY", "apiKey", "STRIPE_KEY", "SIGNING_KEY",
                "GITHUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "SENTRY_DSN", "REDIS_PASS", "DB_PWD", "BASIC_AUTH",
                "PRIVATE_KEY", "passphrase", "MY_CREDENTIALS", "dbPassword", "client-secret", "x.auth.token")
NOT_SECRET_NAMES = ("MODE", "LOG_LEVEL", "KEYBOARD", "MONKEY", "TURNKEY_HOST", "AUTHOR", "PASSENGER_COUNT",
                    "BYPASS_CACHE", "API_URL", "DB_PASSWORD_FILE", "SECRET_KEY_PATH", "AUTH_USER", "PWD",
                    "OLDPWD", "HOST", "TOKENIZER")


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names(name):
    assert secret_name(name)


@pytest.mark.parametrize("name", NOT_SECRET_NAMES)
def test_names_that_are_not_secrets(name):
    assert not secret_name(name)


@pytest.mark.parametrize("text,masked", [
    ("redis://:pw-redis@cache:6379/0", "redis://:***@cache:6379/0"),
    ("postgres://app:s3cret@db:5432/app", "postgres://app:***@db:5432/app"),
    ("Server=db;Database=app;User Id=sa;Password=Sql-Pw1;", "Server=db;Database=app;User Id=sa;Password=***;"),
    ("host=db user=app pwd=pg-pw dbname=x", "host=db user=app pwd=*** dbname=x"),
    ("DB_PASSWORD=shellpw ./run", "DB_PASSWORD=*** ./run"),
    ("serve --api-key=k-123 --port=80", "serve --api-key=*** --port=80"),
    ("curl -f http://localhost:8080/health?token=t0k&x=1", "curl -f http://localhost:8080/health?token=***&x=1"),
    ("http://host:8080/path node.labels.key==web", "http://host:8080/path node.labels.key==web"),
])
def test_passwords_in_text(text, masked):
    assert mask_text(text) == masked


def test_every_place_of_a_project():
    project = {"name": "p", "services": {"api": {
        "command": ["serve", "--password", "flag-pw", "--db", "postgres://u:url-pw@db/x"],
        "entrypoint": ["sh", "-c", "API_TOKEN=ep-tok exec serve"],
        "environment": {"DB_PASSWORD": "env-pw", "MODE": "prod", "NOTE": "uses known-pw here"},
        "labels": {"com.example.auth-token": "label-tok", "com.example.team": "web"},
        "healthcheck": {"test": ["CMD", "curl", "http://:hc-pw@localhost/"]},
        "x-extra": {"stripe_key": "ext-key"},
        "deploy": {"placement": {"constraints": ["node.labels.key==web"]}},
    }}, "secrets": {"tls": {"content": "PEM-BODY"}, "file": {"file": "/run/x"}},
        "configs": {"conf": {"content": "plain config"}}}
    secrets = ("flag-pw", "url-pw", "ep-tok", "env-pw", "known-pw", "label-tok", "hc-pw", "ext-key", "PEM-BODY")
    masked = mask_tree(project, MASK, known=["known-pw"])
    text = json.dumps(masked)
    assert not [s for s in secrets if s in text]
    api = masked["services"]["api"]
    assert api["command"] == ["serve", "--password", "***", "--db", "postgres://u:***@db/x"]
    assert api["environment"] == {"DB_PASSWORD": "***", "MODE": "prod", "NOTE": "uses *** here"}
    assert api["labels"]["com.example.team"] == "web" and masked["configs"] == project["configs"]
    assert api["deploy"] == project["services"]["api"]["deploy"]
    assert project["services"]["api"]["environment"]["DB_PASSWORD"] == "env-pw"  # the input is untouched
    assert sorted(find_secrets(project)) == sorted(set(secrets) - {"known-pw"})
    assert first_clear_secret(project) == "services.api.command[2]"
    ledger = mask_tree(project, REDACTED, known=["known-pw"])
    assert first_clear_secret(ledger) is None and mask_tree(ledger, REDACTED) == ledger  # idempotent


ENV_SECRETS = {"DB_PASSWORD": "hunter2", "STRIPE_KEY": "sk-live-51", "REDIS_URL": "redis://:redis-pw@cache:6379"}


def test_orch_config_prints_no_secret_from_env(tmp_path):
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in ENV_SECRETS.items()) + "MODE=prod\n")
    (tmp_path / "compose.yaml").write_text(
        "name: demo\nservices:\n  web:\n    image: busybox\n"
        "    command: [sh, -c, 'connect --pass ${DB_PASSWORD}']\n"
        "    environment:\n      DB_PASSWORD: ${DB_PASSWORD}\n      PAYMENT: ${STRIPE_KEY}\n"
        "      REDIS_URL: ${REDIS_URL}\n      MODE: ${MODE}\n")
    for args in (["config", "--text"], ["config", "--json"], ["--verbose", "config", "--json"]):
        proc = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout + proc.stderr
        assert not [v for v in ("hunter2", "sk-live-51", "redis-pw") if v in out], args
        assert "MODE: prod" in out or '"MODE": "prod"' in out
    doc = json.loads(proc.stdout)
    assert doc["project"]["services"]["web"]["environment"]["REDIS_URL"] == "redis://:***@cache:6379"


def test_a_loading_error_does_not_quote_a_secret_from_env(tmp_path):
    """The error comes before the project is loaded (so before the output filter knows it)."""
    (tmp_path / ".env").write_text("DB_PASSWORD=hunter2-env\n")
    (tmp_path / "compose.yaml").write_text("services:\n  web:\n    image: busybox\n    ports: ['${DB_PASSWORD}']\n")
    for args in (["config", "--text"], ["config", "--json"]):
        proc = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 2 and "services.web.ports[0]" in proc.stdout + proc.stderr
        assert "hunter2-env" not in proc.stdout + proc.stderr and "invalid port '***'" in proc.stdout + proc.stderr


def test_a_long_known_value_quoted_in_part_is_masked_too():
    # An error message cuts a long value short ("the string '...'"): the cut quote is
    # masked from its first 16 characters on, in output and in the ledger alike.
    from agent.wire.redact import mask_known
    from orchestrator.cli.output import Redactor
    from orchestrator.core.compose.problems import describe

    secret = "s3cr3t-" + "x9" * 40
    quoted = f"ports: {describe(secret)} is not a port"
    assert secret not in quoted and secret[:20] in quoted  # describe cut it
    assert secret[:16] not in mask_known(quoted, [secret], "***")
    r = Redactor()
    r.add(secret)
    scrubbed = r.scrub(quoted + " and again " + secret[:30] + "...")
    assert secret[:16] not in scrubbed and scrubbed.count("***") == 2
    # ordinary text sharing a short start with the secret stays
    assert mask_known("s3cr3t- is a word", [secret], "***") == "s3cr3t- is a word"
