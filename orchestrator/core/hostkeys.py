"""Expected host key fingerprints for `orch nodes trust` (pure: no network).

An operator who knows a node's fingerprint (from the node's console or its provisioning:
`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) pins it with `--fingerprint`; the key
the node presents must then match, or nothing at all is recorded. Fingerprints are
OpenSSH's: "SHA256:" and the unpadded base64 of the key's SHA-256 (43 characters).

    pins = parse_pins(["web-1=SHA256:...", ...], targets)    # InputError on bad input
    bad = mismatches(statuses, pins)                         # [(status, expected)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from orchestrator.errors import InputError, Problem

FINGERPRINT_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
OPTION = "--fingerprint"
HOW = "as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` prints it on the node (SHA256:...)"


def _names(target: Any) -> set[str]:
    """What a pin may call a target: its node name, host, or host:port (jump hosts)."""
    return {target.name, target.host, target.address}


def parse_pins(values: Sequence[str], targets: Sequence[Any]) -> dict[str, str]:
    """--fingerprint values -> {target name: fingerprint}. A value is NODE=SHA256:...
    (NODE: a node's name, or a host's address for a jump host), or a bare SHA256:...
    when there is only one host key to check."""
    pins: dict[str, str] = {}
    problems = []
    for value in values:
        name, sep, fp = value.strip().rpartition("=")
        if not FINGERPRINT_RE.fullmatch(fp):
            problems.append(Problem(f"'{value}' is not a SHA256 host key fingerprint", key=OPTION,
                                    fix=f"give NODE=SHA256:<43 characters of base64>, {HOW}."))
            continue
        if not sep:
            if len(targets) != 1:
                problems.append(Problem(f"'{value}' names no node, and there are {len(targets)} host keys to check "
                                        f"({', '.join(t.name for t in targets)})", key=OPTION,
                                        fix=f"write {OPTION} NODE={fp}, once per node."))
                continue
            name = targets[0].name
        matched = [t for t in targets if name in _names(t)]
        if not matched:
            problems.append(Problem(f"no node or jump host is called '{name}'", key=OPTION,
                                    fix=f"use one of: {', '.join(t.name for t in targets)}."))
            continue
        for t in matched:
            if pins.get(t.name, fp) != fp:
                problems.append(Problem(f"two different fingerprints for {t.name}", key=OPTION,
                                        fix="give one per node."))
            pins[t.name] = fp
    if problems:
        raise InputError(problems)
    return pins


def mismatches(statuses: Iterable[Any], pins: dict[str, str]) -> list[tuple[Any, str]]:
    """(status, expected) for every pinned host whose presented key has another fingerprint."""
    return [(s, pins[s.node]) for s in statuses if s.node in pins and s.fingerprint and s.fingerprint != pins[s.node]]


def _file_type(key_type: str) -> str:
    """ssh-ed25519 -> ed25519, ecdsa-sha2-nistp256 -> ecdsa: sshd's host key file names."""
    return "ecdsa" if key_type.startswith("ecdsa") else key_type.removeprefix("ssh-")


def mismatch_error(bad: list[tuple[Any, str]], known_hosts: str) -> InputError:
    problems = [Problem(
        f"{s.node} ({s.address}) presents {s.key_type} {s.fingerprint}, not the expected {expected}; "
        f"nothing was recorded in {known_hosts}.", key=OPTION,
        fix=f"check the expected fingerprint on {s.node} itself: `ssh-keygen -lf` of its {s.key_type} host key "
        f"(/etc/ssh/ssh_host_{_file_type(s.key_type)}_key.pub) prints it. If that differs from what orch "
        "saw, someone may be intercepting the connection: do not trust it.") for s, expected in bad]
    return InputError(problems, details={"nodes": [{"node": s.node, "expected": e, "seen": s.fingerprint}
                                                   for s, e in bad]})
