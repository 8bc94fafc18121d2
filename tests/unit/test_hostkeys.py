"""Pinned host key fingerprints for `orch nodes trust` (pure)."""

import pytest

from orchestrator.errors import InputError
from orchestrator.core.hostkeys import mismatch_error, mismatches, parse_pins
from orchestrator.core.environments import NodeSpec
from orchestrator.io.transport import HostKeyStatus

A, B = "SHA256:" + "a" * 43, "SHA256:" + "B+/9" * 10 + "xyz"
WEB, DB = NodeSpec("web-1", "10.0.0.1"), NodeSpec("db-1", "10.0.0.2", 2222, jump="admin@bastion:22")
JUMP = DB.jump_target()


def test_pins_by_node_name_and_jump_host_address():
    assert parse_pins([f"web-1={A}", f"bastion={B}"], [JUMP, WEB, DB]) == {"web-1": A, JUMP.name: B}
    assert parse_pins([f"10.0.0.2:2222={A}"], [WEB, DB]) == {"db-1": A}
    assert parse_pins([A], [WEB]) == {"web-1": A}  # bare: one node only
    assert parse_pins([], [WEB, DB]) == {}


@pytest.mark.parametrize("values, says", [
    ([A], "names no node, and there are 2 host keys to check (web-1, db-1)"),
    (["web-1=SHA256:abc"], "is not a SHA256 host key fingerprint"),
    (["web-1=" + A + "="], "is not a SHA256 host key fingerprint"),  # base64 padding: not OpenSSH's form
    ([f"web-2={A}"], "no node or jump host is called 'web-2'"),
    ([f"web-1={A}", f"web-1={B}"], "two different fingerprints for web-1"),
])
def test_bad_pins_are_input_errors_with_a_fix(values, says):
    with pytest.raises(InputError) as err:
        parse_pins(values, [WEB, DB])
    assert err.value.exit_code == 2 and says in err.value.render() and "Fix:" in err.value.render()
    assert "--fingerprint" in err.value.render()


def test_mismatch_names_node_expected_seen_and_fix():
    seen = [HostKeyStatus("web-1", "10.0.0.1:22", "ssh-ed25519", B, "unknown"),
            HostKeyStatus("db-1", "10.0.0.2:2222", "ssh-ed25519", A, "unknown"),
            HostKeyStatus("x-1", "10.0.0.3:22", "", "", "error", error="down")]
    bad = mismatches(seen, {"web-1": A, "db-1": A, "x-1": A})
    assert [(s.node, e) for s, e in bad] == [("web-1", A)]
    err = mismatch_error(bad, "/kh")
    text = err.render()
    assert f"web-1 (10.0.0.1:22) presents ssh-ed25519 {B}, not the expected {A}; nothing was recorded in /kh." in text
    assert "Fix:" in text and err.details["nodes"] == [{"node": "web-1", "expected": A, "seen": B}]
