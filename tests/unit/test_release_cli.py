"""`orch up`, `promote` and `rollback` through the CLI over fake nodes (the cli_world fixture):
exit codes (0, 2, 3), the final JSON object, and the lock taken through the agent's own
lock operations on each node's dedicated session."""

import json

from typer.testing import CliRunner

from orchestrator.cli import app


def cli(*args, env=None):
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env=env)


def final(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_up_promote_with_gates_and_rollback(cli_world):
    r = cli("up", "--env", "dev", "--json")
    assert r.exit_code == 0, r.output
    assert final(r)["release_id"] == 1 and final(r)["new_release"] is True

    r = cli("promote", "hello", "--to", "test", "--json")
    assert r.exit_code == 0, r.output
    assert final(r)["source"] == {"env": "dev", "id": 1} and final(r)["lineage"] == "test #1 <- dev #1"

    r = cli("promote", "hello", "--to", "prod", "--json")
    assert r.exit_code == 3
    assert final(r)["error"]["details"]["gate"] == "approved" and "gate 'approved'" in r.stderr

    r = cli("promote", "hello", "--to", "prod", "--json", env={"ORCH_APPROVE": "1"})
    assert r.exit_code == 0, r.output
    assert final(r)["release"]["approval"]["via"] == "ORCH_APPROVE"

    r = cli("rollback", "--env", "prod", "--json")
    assert r.exit_code == 2 and "nothing earlier to roll back to" in r.stderr

    cli_world.version = 2
    assert cli("up", "--env", "dev", "--json").exit_code == 0
    assert cli("promote", "hello", "--to", "test", "--json").exit_code == 0
    assert cli("promote", "hello", "--to", "prod", "--approve", "--json").exit_code == 0
    r = cli("rollback", "--env", "prod", "--json")
    assert r.exit_code == 0, r.output
    doc = final(r)
    assert doc["command"] == "rollback" and doc["release_id"] == 3 and doc["release"]["restores"] == 1
    assert doc["lineage"] == "prod #3 (rollback to #1) <- test #1 <- dev #1"
    assert [(x.id, x.status) for x in cli_world.history("prod").releases] == [
        (3, "live"), (2, "rolled_back"), (1, "superseded")]


def test_text_output_and_a_noop_promotion(cli_world):
    assert cli("up", "--env", "dev").exit_code == 0
    r = cli("promote", "hello", "--to", "test")
    assert r.exit_code == 0
    r = cli("promote", "hello", "--to", "test")
    assert r.exit_code == 0 and "dev #1 is already live in test as test #1; nothing to do." in r.stdout


def test_promote_without_promote_from_is_bad_input(cli_world):
    r = cli("promote", "hello", "--to", "dev", "--json")
    assert r.exit_code == 2 and "has no promote_from" in r.stderr


def test_a_failing_check_after_up_exits_1_with_the_release_live(cli_world):
    cli_world.checks_ok = False
    r = cli("up", "--env", "dev", "--json")
    assert r.exit_code == 1
    doc = final(r)
    assert doc["status"] == "failed" and doc["error"]["kind"] == "VerificationFailed" and doc["release_id"] == 1
    assert cli_world.history("dev").live().verified is False
