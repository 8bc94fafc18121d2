"""Every connection of a command shares one parse of known_hosts (transport.known_hosts.known_hosts):
paramiko's parse is quadratic in the file's lines, and with a hundred nodes parsing it for
each connection cost more CPU than their handshakes. A changed file is parsed again."""

from __future__ import annotations

import paramiko

from orchestrator.io.transport import known_hosts as kh
from orchestrator.io.transport.known_hosts import append_known_host


def _key() -> paramiko.RSAKey:
    return paramiko.RSAKey.generate(1024)


def test_parsed_once_while_unchanged_and_again_after_an_append(tmp_path, monkeypatch):
    path = tmp_path / "known_hosts"
    a, b = _key(), _key()
    for i in range(50):
        append_known_host(path, f"10.0.0.{i}", a)
    parses = []
    real = kh.load_known_hosts
    monkeypatch.setattr(kh, "load_known_hosts", lambda p: parses.append(p) or real(p))

    first = kh.known_hosts(path)
    for _ in range(20):
        assert kh.known_hosts(path) is first
    assert len(parses) == 1
    assert first.lookup("10.0.0.7")["ssh-rsa"] == a

    append_known_host(path, "[10.0.1.1]:2222", b)  # what accept-new (strict_host_keys: false) does
    again = kh.known_hosts(path)
    assert len(parses) == 2 and again.lookup("[10.0.1.1]:2222")["ssh-rsa"] == b


def test_a_missing_file_knows_no_host(tmp_path):
    assert kh.known_hosts(tmp_path / "nope").lookup("10.0.0.1") is None
