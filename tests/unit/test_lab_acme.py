"""The lab's ACME server (pebble) and resolver (dnsmasq), as plain data (no root)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.lab import acme, dns, packages, registry, state
from orchestrator.lab.info import info_from_spec
from orchestrator.lab.model import build_spec

SPEC = build_spec("orch-lab", "10.250.0.0/24", "dev=1,test=1,prod=2")
OTHER = build_spec("e2e", "10.250.9.0/24", "dev=1")


def test_pebble_listens_on_the_bridge_with_a_lab_ca_certificate_and_real_challenge_ports():
    cfg = json.loads(acme.render(SPEC))["pebble"]
    assert cfg["listenAddress"] == "10.250.0.1:14000"
    assert cfg["managementListenAddress"] == "10.250.0.1:15000"
    assert cfg["certificate"] == "/var/lib/orch-lab/acme/tls.crt"
    assert cfg["privateKey"] == "/var/lib/orch-lab/acme/tls.key"
    assert (cfg["httpPort"], cfg["tlsPort"]) == (80, 443)
    assert cfg["externalAccountBindingRequired"] is False
    assert json.loads(acme.render(OTHER))["pebble"]["listenAddress"] == "10.250.9.1:14000"


def test_pebble_resolves_through_the_lab_resolver():
    assert acme.pebble_argv(SPEC) == [
        "pebble", "-config", "/var/lib/orch-lab/acme/pebble.json", "-dnsserver", "10.250.0.1:53",
    ]  # fmt: skip


def test_pebble_env_is_deterministic_and_validates_for_real():
    env = acme.PEBBLE_ENV
    assert env["PEBBLE_VA_NOSLEEP"] == "1"
    assert env["PEBBLE_WFE_NONCEREJECT"] == "0"
    assert env["PEBBLE_AUTHZREUSE"] == "0"
    assert "PEBBLE_VA_ALWAYS_VALID" not in env


def test_urls_and_files():
    assert SPEC.acme_directory == "https://10.250.0.1:14000/dir"
    assert acme.root_url(SPEC) == "https://10.250.0.1:15000/roots/0"
    assert SPEC.dns_server == "10.250.0.1:53"
    p = SPEC.paths
    assert p.acme_ca == Path("/var/lib/orch-lab/acme-ca.crt")
    assert p.dns_hosts_dir == Path("/var/lib/orch-lab/dns/hosts")
    assert OTHER.paths.acme_config == Path("/var/lib/orch-lab-e2e/acme/pebble.json")


def test_is_pem_cert():
    assert acme.is_pem_cert("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n")
    assert not acme.is_pem_cert("<html>not found</html>")


def test_resolver_answers_lab_names_only_and_asks_nobody_else():
    argv = dns.dnsmasq_argv(SPEC)
    assert argv[0] == "dnsmasq" and "--keep-in-foreground" in argv
    assert "--listen-address=10.250.0.1" in argv and "--bind-interfaces" in argv
    assert "--port=53" in argv
    assert "--no-resolv" in argv and "--no-hosts" in argv and "--conf-file=/dev/null" in argv
    i = argv.index("--hostsdir")
    assert argv[i + 1] == "/var/lib/orch-lab/dns/hosts"
    assert "--local=/lab.test/" in argv
    assert not any(a.startswith("--server") for a in argv)
    # each lab's resolver is told apart by its hosts dir
    assert dns.marker(SPEC) in argv and dns.marker(OTHER) not in argv


def test_dns_process_is_found_by_its_lab_hosts_dir():
    from orchestrator.lab.proc import Proc

    mine = Proc(10, tuple(dns.dnsmasq_argv(SPEC)), "net:[1]")
    mesh = Proc(11, ("/usr/sbin/dnsmasq", "--hostsdir=/run/orch-mesh/x/hosts"), "net:[1]")
    other = Proc(12, tuple(dns.dnsmasq_argv(OTHER)), "net:[1]")
    assert dns.find([mine, mesh, other], SPEC) == [mine]
    older = Proc(15, ("dnsmasq", "--hostsdir=/var/lib/orch-lab/dns/hosts"), "net:[1]")
    assert dns.find([older], SPEC) == [older]  # found, so restarted with today's arguments
    # `lab down` would stop it even without dns.find: its argv names the lab's state dir
    from orchestrator.lab.down import lab_processes

    assert lab_processes(SPEC, [mine, mesh, other]) == [mine]
    peb = Proc(13, tuple(acme.pebble_argv(SPEC)), "net:[1]")
    assert acme.find([mine, peb, Proc(14, tuple(acme.pebble_argv(OTHER)), "net:[1]")], SPEC) == [peb]


def test_a_name_maps_to_every_given_node_address():
    text = dns.hosts_text("Shop.Lab.Test.", ["10.250.0.31", "10.250.0.32"])
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines == ["10.250.0.31 shop.lab.test", "10.250.0.32 shop.lab.test"]
    assert dns.record_file(SPEC, "shop.lab.test") == Path("/var/lib/orch-lab/dns/hosts/shop.lab.test.hosts")


@pytest.mark.parametrize("bad", ["example.com", "lab.test", "a..lab.test", "-x.lab.test", "a b.lab.test", "x/y.lab.test"])
def test_names_outside_lab_test_are_refused(bad):
    with pytest.raises(InputError):
        dns.check_name(bad)


def test_an_address_is_required_and_must_be_ipv4():
    with pytest.raises(InputError):
        dns.hosts_text("shop.lab.test", [])
    with pytest.raises(ValueError):
        dns.hosts_text("shop.lab.test", ["not-an-ip"])


def _response(qid: int, name: str, addresses: list[str], rcode: int = 0) -> bytes:
    query = dns.query_packet(name, qid)
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(addresses), 0, 0)
    out = header + query[12:]
    for a in addresses:  # name as a pointer to the question (offset 12)
        out += struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + bytes(int(x) for x in a.split("."))
    return out


def test_dns_query_and_answer_round_trip():
    q = dns.query_packet("shop.lab.test", 0x1234)
    assert q[:2] == b"\x12\x34" and b"\x04shop\x03lab\x04test\x00" in q and q.endswith(b"\x00\x01\x00\x01")
    got = dns.parse_response(_response(0x1234, "shop.lab.test", ["10.250.0.31", "10.250.0.32"]), 0x1234)
    assert got == (0, ["10.250.0.31", "10.250.0.32"])
    assert dns.parse_response(_response(7, "x.lab.test", [], rcode=3), 7) == (3, [])  # NXDOMAIN
    assert dns.parse_response(_response(7, "x.lab.test", []), 8) is None  # another query's
    assert dns.parse_response(q, 0x1234) is None  # a query, not a response


def test_lab_env_and_info_name_the_acme_directory_and_cas():
    env = registry.parse_env_file(state.render_lab_env(SPEC))
    assert env["ORCH_LAB_ACME_DIRECTORY"] == "https://10.250.0.1:14000/dir"
    assert env["ORCH_LAB_ACME_CA"] == "/var/lib/orch-lab/acme-ca.crt"
    assert env["ORCH_LAB_DNS"] == "10.250.0.1:53"
    assert env["ORCH_LAB_CA"] == "/var/lib/orch-lab/ca.crt"  # pebble's directory TLS
    info = info_from_spec(SPEC).to_json()
    assert info["acme_directory"] == "https://10.250.0.1:14000/dir"
    assert info["acme_ca"] == "/var/lib/orch-lab/acme-ca.crt"
    assert info["dns_server"] == "10.250.0.1:53"
    assert info["dns_hosts_dir"] == "/var/lib/orch-lab/dns/hosts"
    for key in ("registry", "registry_mirror", "ca_cert", "lab_env", "state_dir", "nodes"):
        assert key in info  # the keys that were there before stay


def test_pebble_is_a_lab_package():
    assert packages.PROGRAMS["pebble"] == "pebble"
    need = packages.missing_packages(lambda p: None if p == "pebble" else "/x", busybox_static=True)
    assert need == ["pebble"]
