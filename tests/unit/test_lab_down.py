"""`orch lab down` goes through every step even when one fails, reports the failures
together, and reads `ip -j` listings without the warnings iproute2 prints on stderr
(issue 17: a parallel teardown of 24 nodes crashed on "Dump was interrupted" in the
middle of the JSON and left the bridge, iptables rules and state behind). No root: the
machine is faked."""

from __future__ import annotations

import contextlib
import threading

import pytest

from orchestrator.errors import OrchError
from orchestrator.lab import down, netns
from orchestrator.lab.model import build_spec


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """down.down() over a fake machine: every step recorded, none touching the host."""
    spec = build_spec("orch-lab-unit-down", "10.250.77.0/24", "dev=12")
    calls: list[str] = []
    lock = threading.Lock()

    def note(what):
        def fn(*a, **kw):
            with lock:
                calls.append(what)
        return fn

    import orchestrator.lab.up as up_mod

    monkeypatch.setattr(up_mod, "require_root", lambda what: None)
    monkeypatch.setattr(down.state, "locked", lambda paths, log=None: contextlib.nullcontext())
    monkeypatch.setattr(down.state, "load_spec", lambda paths: spec)
    monkeypatch.setattr(down, "node_names", lambda s: [n.name for n in s.nodes])
    monkeypatch.setattr(down.proc, "process_table", lambda: [])
    monkeypatch.setattr(down.proc, "stop", note("stop"))
    monkeypatch.setattr(down.registry, "find", lambda procs, s, mirror: [])
    for mod, name in ((down.acme, "stop"), (down.dns, "stop"), (down.netns, "remove_forwarding"),
                      (down.netns, "remove_bridge"), (down.registry, "remove_ca"), (down.cgroups, "remove"),
                      (down.images, "remove_registry_tags")):
        monkeypatch.setattr(mod, name, note(f"{mod.__name__.rsplit('.', 1)[-1]}.{name}"))
    monkeypatch.setattr(down.engine, "ping", lambda sock: True)
    monkeypatch.setattr(down.mounts, "remove_tree", lambda p: calls.append(f"remove_tree {p.name}"))
    monkeypatch.setattr(down, "leftovers", lambda s: down.Leftovers([], [], [], [], []))
    return spec, calls, monkeypatch


def test_a_node_that_fails_does_not_stop_the_rest_of_the_teardown(machine):
    spec, calls, monkeypatch = machine

    def teardown(s, name):
        if name == "dev-7":
            raise ValueError("Expecting value: line 1 column 1 (char 0)")
        calls.append(f"node {name}")

    monkeypatch.setattr(down.nodes, "teardown", teardown)
    logged = []
    with pytest.raises(OrchError) as err:
        down.down(spec.name, log=logged.append)
    # every other node, then every lab-wide step, ran
    assert sorted(c for c in calls if c.startswith("node ")) == sorted(
        f"node {n.name}" for n in spec.nodes if n.name != "dev-7")
    for step in ("netns.remove_forwarding", "netns.remove_bridge", "registry.remove_ca", "cgroups.remove",
                 f"remove_tree {spec.name}"):
        assert step in calls, step
    assert calls.index("netns.remove_forwarding") > max(i for i, c in enumerate(calls) if c.startswith("node "))
    text = err.value.render()
    assert "node dev-7: ValueError" in text and "nothing left behind" in text and "orch lab down" in text
    assert any("dev-7" in line and "going on" in line for line in logged)


def test_a_clean_teardown_returns_and_a_second_one_is_a_no_op(machine):
    spec, calls, monkeypatch = machine
    monkeypatch.setattr(down.nodes, "teardown", lambda s, name: calls.append(f"node {name}"))
    assert not down.down(spec.name, log=lambda *_: None).any()
    assert len([c for c in calls if c.startswith("node ")]) == 12
    monkeypatch.setattr(down, "node_names", lambda s: [])
    calls.clear()
    assert not down.down(spec.name, log=lambda *_: None).any()
    assert not [c for c in calls if c.startswith("node ")]


def test_leftover_iptables_rules_fail_the_teardown(machine):
    spec, calls, monkeypatch = machine
    monkeypatch.setattr(down.nodes, "teardown", lambda s, name: None)
    monkeypatch.setattr(down, "leftovers", lambda s: down.Leftovers(
        [], [], [], [], [], rules=["-t nat POSTROUTING -s 10.250.77.0/24 -j MASQUERADE"]))
    with pytest.raises(OrchError) as err:
        down.down(spec.name, log=lambda *_: None)
    assert "iptables rules: -t nat POSTROUTING" in err.value.render()


def test_ip_json_ignores_stderr_and_reads_an_interrupted_dump_again(monkeypatch):
    answers = [
        (0, b'[{"ifname": "a"}]', b"Dump was interrupted and may be inconsistent.\n"),
        (0, b'[{"ifname": "a"}, {"if', b""),  # cut short
        (0, b'[{"ifname": "b"}]', b""),
    ]
    seen = []

    def capture(argv, timeout=30):
        seen.append(argv)
        return answers.pop(0)

    monkeypatch.setattr(netns.proc, "capture", capture)
    monkeypatch.setattr(netns.time, "sleep", lambda s: None)
    assert netns.ip_json(["ip", "-j", "addr", "show"]) == [{"ifname": "b"}]
    assert len(seen) == 3
    # still interrupted after every try: the last listing is used rather than none
    answers[:] = [(0, b'[{"ifname": "c"}]', b"Dump was interrupted\n")] * netns.DUMP_TRIES
    assert netns.ip_json(["ip", "-j", "link"]) == [{"ifname": "c"}]
    answers[:] = [(1, b"", b"Cannot open netns\n")]
    assert netns.ip_json(["ip", "-j", "link"]) is None


def test_links_reads_iproute2_json(monkeypatch):
    monkeypatch.setattr(netns.proc, "capture", lambda argv, timeout=30: (0, b'''[
        {"ifname": "orchlab0", "flags": ["BROADCAST", "UP"], "addr_info": [
            {"family": "inet", "local": "10.250.0.1", "prefixlen": 24}, {"family": "inet6", "local": "fe80::1"}]},
        {"ifname": "orchlab0-31", "flags": ["UP"], "master": "orchlab0", "addr_info": []}]''', b""))
    got = netns.links()
    assert got["orchlab0"] == netns.Link("orchlab0", True, None, ("10.250.0.1/24",))
    assert got["orchlab0-31"].master == "orchlab0"
