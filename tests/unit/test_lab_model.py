"""The lab's spec: names, addresses and paths derived from the options (no root)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from orchestrator.errors import InputError
from orchestrator.lab.info import info_from_spec
from orchestrator.lab.model import (
    DEFAULT_NAME,
    LabPaths,
    LabSpec,
    build_spec,
    default_subnet_for,
    parse_nodes,
    parse_subnet,
    validate_name,
)


def default_spec() -> LabSpec:
    return build_spec("orch-lab", "10.250.0.0/24", "dev=1,test=1,prod=2")


def test_default_addresses_match_the_committed_environments():
    spec = default_spec()
    assert [(n.name, n.address) for n in spec.nodes] == [
        ("dev-1", "10.250.0.11"),
        ("test-1", "10.250.0.21"),
        ("prod-1", "10.250.0.31"),
        ("prod-2", "10.250.0.32"),
    ]
    assert spec.host_address == "10.250.0.1"
    assert spec.registry == "10.250.0.1:5000"
    assert spec.mirror == "10.250.0.1:5001"


def test_addresses_follow_the_subnet():
    spec = build_spec("orch-lab-ci", "10.250.9.0/24", "prod=2,dev=1")
    assert {n.name: n.address for n in spec.nodes} == {
        "prod-1": "10.250.9.31",
        "prod-2": "10.250.9.32",
        "dev-1": "10.250.9.11",
    }
    assert spec.registry == "10.250.9.1:5000"


def test_extra_environments_take_the_next_decades():
    spec = build_spec("orch-lab", "10.250.0.0/24", "dev=1,stage=2,qa=1")
    assert {n.name: n.address for n in spec.nodes} == {
        "dev-1": "10.250.0.11",
        "stage-1": "10.250.0.41",
        "stage-2": "10.250.0.42",
        "qa-1": "10.250.0.51",
    }


def test_more_than_nine_nodes_per_environment_take_the_offsets_from_100():
    spec = build_spec("orch-lab-scale", "10.250.9.0/24", "dev=1,prod=12,test=10")
    addr = {n.name: n.address for n in spec.nodes}
    # the first nine of each environment keep their decade (environments/*.yaml rely on it)
    assert (addr["dev-1"], addr["prod-1"], addr["prod-9"], addr["test-9"]) == (
        "10.250.9.11", "10.250.9.31", "10.250.9.39", "10.250.9.29")
    # the rest from .100 on, in the order the environments were given
    assert [addr[f"prod-{i}"] for i in (10, 11, 12)] == ["10.250.9.100", "10.250.9.101", "10.250.9.102"]
    assert addr["test-10"] == "10.250.9.103"
    assert len(set(addr.values())) == len(addr) == 23


def test_a_big_lab_has_distinct_short_interface_names_and_engine_ranges():
    spec = build_spec("orch-lab-some-long-name", "10.250.8.0/23", "dev=9,test=9,prod=300")
    veths = [spec.veth(n) for n in spec.nodes]
    assert len(set(veths)) == len(veths) == 318
    assert all(len(v) <= 15 and v.startswith(spec.bridge + "-") for v in veths)
    assert spec.veth(spec.node("prod-1")) == spec.bridge + "-31"  # unchanged below .100
    bips = [ipaddress.IPv4Interface(n.bip) for n in spec.nodes]
    assert len({b.network for b in bips}) == len(bips)
    assert all(b.network.subnet_of(ipaddress.IPv4Network("172.28.0.0/14")) for b in bips)


def test_too_many_nodes_for_the_subnet_is_an_input_error():
    build_spec("orch-lab-x", "10.250.9.0/24", "prod=164")  # 9 + .100-.254
    with pytest.raises(InputError) as err:
        build_spec("orch-lab-x", "10.250.9.0/24", "prod=165")
    assert err.value.exit_code == 2 and "--subnet" in err.value.render() and "/23" in err.value.render()


def test_each_node_engine_has_its_own_bridge_range():
    bips = [n.bip for n in default_spec().nodes]
    assert len(set(bips)) == len(bips)
    for bip in bips:
        assert not ipaddress.IPv4Interface(bip).network.overlaps(ipaddress.IPv4Network("10.250.0.0/24"))


@pytest.mark.parametrize(
    "text",
    ["", "dev", "dev=x", "dev=1,dev=2", "dev=501", "Dev=1", "dev=0,prod=0", "averyverylongenv=1"],
)
def test_bad_node_lists_are_input_errors(text):
    with pytest.raises(InputError) as err:
        parse_nodes(text)
    assert err.value.exit_code == 2
    assert "--nodes" in err.value.render()


@pytest.mark.parametrize("text", ["nonsense", "8.8.8.0/24", "127.0.0.0/24", "10.250.0.0/28"])
def test_bad_subnets_are_input_errors(text):
    with pytest.raises(InputError):
        parse_subnet(text)


def test_subnet_is_normalised():
    assert str(parse_subnet("10.250.3.7/24")) == "10.250.3.0/24"


def test_names_are_canonical_and_validated():
    assert validate_name("orch-lab") == "orch-lab"
    assert validate_name("ci") == "orch-lab-ci"
    assert validate_name("orch-lab-ci") == "orch-lab-ci"
    for bad in ("CI", "a--b", "x.y", "-a", "a" * 30):
        with pytest.raises(InputError):
            validate_name(bad)


def test_default_lab_owns_10_250_0_and_others_take_a_free_range():
    assert default_subnet_for(DEFAULT_NAME, []) == "10.250.0.0/24"
    taken = [ipaddress.IPv4Network("10.250.0.0/24"), ipaddress.IPv4Network("10.250.1.0/24")]
    assert default_subnet_for("orch-lab-x", taken) == "10.250.2.0/24"


def test_interface_names_fit_ifnamsiz_and_differ_between_labs():
    a, b = default_spec(), build_spec("orch-lab-some-long-name", "10.250.9.0/24", "prod=9")
    assert a.bridge == "orchlab0"
    for spec in (a, b):
        for name in [spec.bridge] + [spec.veth(n) for n in spec.nodes]:
            assert len(name) <= 15, name
    assert a.bridge != b.bridge
    assert not b.veth(b.nodes[0]).startswith(a.bridge + "-")


def test_netns_names_never_match_another_labs_prefix():
    a, b = default_spec(), build_spec("orch-lab-e2e", "10.250.9.0/24", "dev=1")
    assert a.netns(a.nodes[0]) == "orch-lab.dev-1"
    assert not b.netns(b.nodes[0]).startswith(a.netns_prefix)


def test_paths_per_lab():
    assert LabPaths.for_name("orch-lab").state == Path("/var/lib/orch-lab")
    p = LabPaths.for_name("orch-lab-e2e")
    assert p.state == Path("/var/lib/orch-lab-e2e") and p.run == Path("/run/orch-lab-e2e")
    assert p.cache == Path("/var/cache/orch-lab")  # shared base-image cache
    # unix socket paths must stay below 108 bytes even for long names and nodes
    long = LabPaths.for_name("orch-lab-" + "x" * 15)
    assert len(str(long.exec_root("stage-9")) + "/containerd/containerd.sock.ttrpc") < 108


def test_spec_round_trips_through_json():
    spec = default_spec()
    assert LabSpec.from_json(spec.to_json()) == spec


def test_lab_info_exposes_what_environments_need():
    info = info_from_spec(default_spec())
    assert info.ssh_key == Path("/var/lib/orch-lab/id_ed25519")
    assert info.known_hosts == Path("/var/lib/orch-lab/known_hosts")
    assert info.ca_cert == Path("/var/lib/orch-lab/ca.crt")
    assert info.credentials_file == Path("/var/lib/orch-lab/registry.env")
    assert info.registry == "10.250.0.1:5000" and info.registry_mirror == "10.250.0.1:5001"
    assert info.node("prod-2").address == "10.250.0.32"
    assert [n.name for n in info.nodes_for("prod")] == ["prod-1", "prod-2"]
    assert info.node("dev-1").docker_host == "unix:///run/orch-lab/dev-1/docker.sock"
    assert info.to_json()["nodes"][0]["ssh_port"] == 22


def test_registry_catalog_follows_the_next_page_link(monkeypatch):
    import json as _json

    from orchestrator.lab import registry
    from orchestrator.lab.model import build_spec

    spec = build_spec("orch-lab", "10.250.0.0/24", "dev=1")
    pages = {
        f"https://{spec.registry}/v2/_catalog?n=1000": (["a", "b"], {"Link": '</v2/_catalog?last=b&n=1000>; rel="next"'}),
        f"https://{spec.registry}/v2/_catalog?last=b&n=1000": (["library/busybox"], {}),
    }
    seen = []

    def fake(spec_, url, **kw):
        seen.append(url)
        repos, headers = pages[url]
        return 200, headers, _json.dumps({"repositories": repos}).encode()

    monkeypatch.setattr(registry, "request", fake)
    assert registry.catalog(spec, registry.Credentials("u", "p", "")) == ["a", "b", "library/busybox"]
    assert len(seen) == 2


def test_env_addresses_are_the_environments_lab_nodes(monkeypatch):
    """`orch lab dns set NAME --env prod`: the name resolves to every prod node."""
    from orchestrator.lab import info as lab_info_module

    monkeypatch.setattr(lab_info_module, "lab_info", lambda name=None: info_from_spec(default_spec()))
    assert lab_info_module.env_addresses(None, "prod") == ["10.250.0.31", "10.250.0.32"]
    with pytest.raises(InputError) as err:
        lab_info_module.env_addresses(None, "staging")
    assert "has no node of environment 'staging'" in str(err.value) and err.value.exit_code == 2
