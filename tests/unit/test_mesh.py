"""The service mesh without a network: the address plan (agent.wire.mesh), planning
(orchestrator.core.mesh), the node side's commands as data (agent.mesh.*), the agent
operations over FakeEngine + FakeMeshHost, and the mesh step of up/down over fake nodes."""

import ipaddress
import textwrap

import pytest

from agent.context import Context
from agent.fake import FakeEngine, FakeMeshHost
from agent.mesh import firewall, link, records
from agent.mesh.dns import argv as dns_argv
from agent.mesh.paths import MeshPaths
from agent.operations import OPERATIONS
from agent.wire.mesh import (MeshConfig, MeshState, interface_name, net_subnet, node_address, node_block,
                             same_network_match, search_domain)
from agent.wire.protocol import AgentError, BadRequest
from orchestrator.app.deploy import DeployOptions, Deployment
from orchestrator.app.operate import take_down
from orchestrator.core.environments import parse_environment
from orchestrator.core.mesh import MeshSettings, mesh_actions, node_configs, plan_layout, refuse_unmeshed
from orchestrator.core.progress import Progress
from orchestrator.errors import InputError, OrchError
from tests.unit.fakes import SHOP, FakeNode, ws  # noqa: F401

CIDR = "10.208.0.0/12"
KEY_A = "a" * 42 + "A="
KEY_B = "b" * 42 + "A="


# --------------------------------------------------------------------------- the address plan


def test_each_node_gets_a_block_and_each_network_the_same_slot_in_every_block():
    assert str(node_block(CIDR, 0)) == "10.208.0.0/19" and str(node_block(CIDR, 1)) == "10.208.32.0/19"
    assert str(node_block(CIDR, 127)) == "10.223.224.0/19"
    assert node_address(CIDR, 1) == "10.208.32.1"
    assert str(net_subnet(CIDR, 0, 3)) == "10.208.3.0/24" and str(net_subnet(CIDR, 9, 3)) == "10.209.35.0/24"


def _matches(rule: str, ip: str) -> bool:
    addr, mask = rule.split("/")
    m = int(ipaddress.IPv4Address(mask))
    return int(ipaddress.IPv4Address(ip)) & m == int(ipaddress.IPv4Address(addr)) & m


def test_the_same_network_on_any_node_is_one_mask_and_no_other_network_matches_it():
    rule = same_network_match(CIDR, 3)
    for slot in (0, 1, 17, 127):
        assert _matches(rule, str(net_subnet(CIDR, slot, 3).network_address + 7))
        assert not _matches(rule, str(net_subnet(CIDR, slot, 4).network_address + 7))
    assert not _matches(rule, "10.224.3.5")  # outside the range
    assert not _matches(rule, "192.168.3.5")


def test_interface_names_fit_linux_and_are_readable_when_they_can_be():
    assert interface_name("prod") == "orch-prod"
    long = interface_name("a-very-long-environment")
    assert len(long) <= 15 and long.startswith("orch-") and long != interface_name("a-very-long-environmenu")
    assert search_domain(4) == "n4.orch.internal"


def test_mesh_config_round_trips_and_refuses_what_the_agent_must_not_run():
    cfg = {"env": "prod", "node": "p1", "slot": 0, "cidr": CIDR, "port": 51820, "mtu": 1420,
           "peers": [{"node": "p2", "slot": 1, "public_key": KEY_B, "endpoint": "10.0.0.2:51820"}]}
    assert MeshConfig.from_dict(cfg).to_dict() == cfg
    bad = [
        dict(cfg, slot=1),  # two nodes in one slot
        dict(cfg, cidr="10.208.0.0/20"),  # no room for 2 nodes
        dict(cfg, peers=[dict(cfg["peers"][0], public_key="not-a-key")]),
        dict(cfg, peers=[dict(cfg["peers"][0], endpoint="10.0.0.2; rm -rf /")]),
        dict(cfg, peers=[dict(cfg["peers"][0], endpoint="10.0.0.2")]),
        dict(cfg, mtu=100),
        dict(cfg, extra=1),
    ]
    for d in bad:
        with pytest.raises(BadRequest):
            MeshConfig.from_dict(d)


# --------------------------------------------------------------------------- the environment file


def env_file(tmp_path, mesh="", nodes=None):
    nodes = nodes or "  - {name: n1, host: 10.0.0.1}\n  - {name: n2, host: 10.0.0.2}\n"
    p = tmp_path / "prod.yaml"
    p.write_text(f"name: prod\nnodes:\n{nodes}{mesh}")
    return p


def test_mesh_defaults_on_with_two_nodes_off_with_one(tmp_path):
    env = parse_environment(env_file(tmp_path))
    assert env.mesh == MeshSettings() and env.mesh_enabled
    one = parse_environment(env_file(tmp_path, nodes="  - {name: n1, host: 10.0.0.1}\n"))
    assert not one.mesh_enabled
    on = parse_environment(env_file(tmp_path, "mesh: {mode: on}\n", nodes="  - {name: n1, host: 10.0.0.1}\n"))
    assert on.mesh_enabled
    off = parse_environment(env_file(tmp_path, "mesh: {mode: off, cidr: 10.64.0.0/16, port: 51000, mtu: 1380}\n"))
    assert not off.mesh_enabled and off.mesh == MeshSettings("off", "10.64.0.0/16", 51000, 1380)


@pytest.mark.parametrize("mesh, key, words", [
    ("mesh: {mode: maybe}\n", "mesh.mode", "not a mesh mode"),
    ("mesh: {cidr: 10.208.0.1/12}\n", "mesh.cidr", "not an IPv4 network"),
    ("mesh: {cidr: 10.208.0.0/20}\n", "mesh.cidr", "room for 0 node"),
    ("mesh: {port: 70000}\n", "mesh.port", "out of range"),
    ("mesh: {mtu: 99}\n", "mesh.mtu", "out of range"),
    ("mesh: {cdir: 10.0.0.0/8}\n", "mesh.cdir", "did you mean 'cidr'"),
])
def test_bad_mesh_settings_are_bad_input_with_line_and_key(tmp_path, mesh, key, words):
    with pytest.raises(InputError) as e:
        parse_environment(env_file(tmp_path, mesh))
    text = e.value.render()
    assert key in text and words in text and "prod.yaml:5" in text, text


def test_a_node_endpoint_must_be_host_and_port(tmp_path):
    ok = parse_environment(env_file(tmp_path, nodes="  - {name: n1, host: 10.0.0.1, endpoint: '203.0.113.7:4500'}\n"
                                                    "  - {name: n2, host: 10.0.0.2, endpoint: '[2001:db8::7]:51820'}\n"))
    assert [n.endpoint for n in ok.nodes] == ["203.0.113.7:4500", "[2001:db8::7]:51820"]
    for bad in ("203.0.113.7", "host:99999", "a b:1", "2001:db8::7:51820"):
        with pytest.raises(InputError) as e:
            parse_environment(env_file(tmp_path, nodes=f"  - {{name: n1, host: 10.0.0.1, endpoint: '{bad}'}}\n"))
        assert "nodes[0].endpoint" in e.value.render() and "HOST:PORT" in e.value.render()


# --------------------------------------------------------------------------- planning


def state(slot=None, key=KEY_A, nets=None, running=True, peers_cfg=None, unmeshed=()):
    cfg = {} if slot is None else {"env": "prod", "node": "x", "slot": slot, "cidr": CIDR, "port": 51820, "mtu": 1420,
                                   "peers": peers_cfg or []}
    return MeshState(env="prod", public_key=key, config=cfg, net_slots=nets or {},
                     running={"link": running, "dns": True, "daemon": True} if cfg else {},
                     unmeshed=list(unmeshed)).to_dict()


def test_slots_are_stable_and_new_ones_take_the_lowest_free():
    observed = {"a": state(1, nets={"shop/default": 2, "other/default": 1}), "b": state(0), "c": state(None, key="")}
    lay = plan_layout(MeshSettings(), ["a", "b", "c"], "shop", ["default", "back"], observed)
    assert lay.node_slots == {"a": 1, "b": 0, "c": 2}
    assert lay.net_slots == {"default": 2, "back": 3}  # kept, then the lowest free (1 and 2 are taken)


def test_a_full_environment_is_refused_before_anything_changes():
    nets = {f"p{i}/n": i for i in range(1, 32)}
    with pytest.raises(InputError) as e:
        plan_layout(MeshSettings(), ["a"], "shop", ["default"], {"a": state(0, nets=nets)})
    assert "no room for network 'default'" in e.value.render()


class N:
    def __init__(self, name, host):
        self.name, self.host, self.endpoint = name, host, None


NODES = [N("a", "10.0.0.1"), N("b", "10.0.0.2")]


def test_each_node_is_told_every_other_node_as_a_peer():
    lay = plan_layout(MeshSettings(), ["a", "b"], "shop", ["default"], {})
    configs = node_configs("prod", lay, NODES, {"a": KEY_A, "b": KEY_B})
    assert [p.node for p in configs["a"].peers] == ["b"] and configs["a"].peers[0].endpoint == "10.0.0.2:51820"
    assert [p.node for p in configs["b"].peers] == ["a"] and configs["b"].peers[0].public_key == KEY_A


def test_a_converged_mesh_needs_no_action_and_each_difference_names_its_reason():
    lay = plan_layout(MeshSettings(), ["a", "b"], "shop", ["default"], {})
    want = node_configs("prod", lay, NODES, {"a": KEY_A, "b": KEY_B})
    good = {"a": dict(state(0, KEY_A), config=want["a"].to_dict()),
            "b": dict(state(1, KEY_B), config=want["b"].to_dict())}
    assert mesh_actions(lay, NODES, good, "prod") == []
    down = dict(good, b=dict(good["b"], running={"link": False, "dns": True, "daemon": True}))
    assert [(a.node, a.reasons) for a in mesh_actions(lay, NODES, down, "prod")] == [("b", ("restart link",))]
    old = dict(good, a=dict(good["a"], outdated=["daemon"]))  # started by another orch's code
    assert [(a.node, a.reasons) for a in mesh_actions(lay, NODES, old, "prod")] == [("a", ("update daemon",))]
    new = {"a": good["a"], "b": state(None, key="")}
    acts = {a.node: a for a in mesh_actions(lay, NODES, new, "prod")}
    assert acts["b"].join and acts["b"].reasons == ("joins the mesh",)
    assert not acts["a"].join and acts["a"].reasons == ("a new peer",)


def test_networks_made_before_the_mesh_are_refused_with_the_way_out():
    refuse_unmeshed("shop", "prod", {"a": state(0, unmeshed=["other/default"])})  # another project's: fine
    with pytest.raises(OrchError) as e:
        refuse_unmeshed("shop", "prod", {"a": state(0, unmeshed=["shop/default"])})
    assert "default on a" in e.value.message and "orch down -p shop --env prod" in e.value.fix


# --------------------------------------------------------------------------- node side, as data


def test_firewall_admits_only_the_same_network_from_the_mesh():
    text = firewall.restore_text("orch-prod", CIDR, "10.208.0.0/19", "10.208.0.1",
                                 [firewall.LocalNet("br-aaa", 1), firewall.LocalNet("br-bbb", 2, internal=True)])
    lines = text.splitlines()
    assert "-A OM-orch-prod -i orch-prod -o br-aaa -s 10.208.1.0/255.240.31.0 -j ACCEPT" in lines
    assert "-A OM-orch-prod -i orch-prod -o br-bbb -s 10.208.2.0/255.240.31.0 -j ACCEPT" in lines
    assert lines.index("-A OM-orch-prod -i orch-prod -j DROP") > lines.index(
        "-A OM-orch-prod -i orch-prod -o br-bbb -s 10.208.2.0/255.240.31.0 -j ACCEPT")
    # internal: out only to its own network on other nodes; to the host only for DNS
    assert "-A OM-orch-prod -i br-bbb -o orch-prod -d 10.208.2.0/255.240.31.0 -j ACCEPT" in lines
    assert "-A OM-orch-prod -i br-bbb ! -o br-bbb -j DROP" in lines
    assert "-A OMI-orch-prod -i br-bbb -j DROP" in lines
    assert "-A OMI-orch-prod -d 10.208.0.1 -p tcp --dport 51820 ! -i orch-prod -j DROP" in lines  # peers only
    assert "-A OMI-orch-prod -d 10.208.0.1 -p tcp --dport 51821 ! -i orch-prod -j DROP" in lines  # certd: peers only
    assert not any(ln.startswith("-A OM-orch-prod -i br-aaa") and "DROP" in ln for ln in lines)  # not internal
    # direct routing from elsewhere (not the mesh, not a published port) is dropped
    assert lines.index("-A OM-orch-prod -o br-aaa -m conntrack --ctstate DNAT -j RETURN") < lines.index(
        "-A OM-orch-prod -o br-aaa ! -i br-aaa -m conntrack --ctstate NEW -j DROP")
    # mesh -> mesh keeps its source; the node's containers -> elsewhere are masqueraded
    assert "-A OMN-orch-prod -s 10.208.0.0/12 -d 10.208.0.0/12 -j RETURN" in lines
    assert "-A OMN-orch-prod -s 10.208.0.0/19 ! -o br-+ -j MASQUERADE" in lines


def test_wg_conf_lists_every_peer_with_its_block_and_reads_no_key_from_argv():
    cfg = MeshConfig.from_dict({"env": "prod", "node": "a", "slot": 0, "cidr": CIDR, "port": 51820, "mtu": 1420,
                                "peers": [{"node": "b", "slot": 1, "public_key": KEY_B, "endpoint": "10.0.0.2:51820"}]})
    text = link.conf_text(cfg, "PRIVATE")
    assert "PrivateKey = PRIVATE" in text and "ListenPort = 51820" in text
    assert f"PublicKey = {KEY_B}\nEndpoint = 10.0.0.2:51820\nAllowedIPs = 10.208.32.0/19" in text
    # the two ends of a link keep alive at different intervals (crossed handshakes do not
    # repeat in step): a, the lower slot, every 5 s; b, told of a as its peer, every 7 s
    assert "AllowedIPs = 10.208.32.0/19\nPersistentKeepalive = 5\n" in text
    cfg_b = MeshConfig.from_dict({"env": "prod", "node": "b", "slot": 1, "cidr": CIDR, "port": 51820, "mtu": 1420,
                                  "peers": [{"node": "a", "slot": 0, "public_key": KEY_A,
                                             "endpoint": "10.0.0.1:51820"}]})
    assert "AllowedIPs = 10.208.0.0/19\nPersistentKeepalive = 7\n" in link.conf_text(cfg_b, "PRIVATE")
    assert link.address_argvs(cfg) == [["ip", "address", "replace", "10.208.0.1/12", "dev", "orch-prod"],
                                      ["ip", "link", "set", "orch-prod", "mtu", "1420", "up"]]


def test_wg_dump_and_overlapping_ranges_are_read_from_the_tools_output():
    dump = "priv\tpub\t51820\toff\n" f"{KEY_B}\t(none)\t10.0.0.2:51820\t10.208.32.0/19\t1000\t10\t20\t5\n" \
           f"{KEY_A}\t(none)\t(none)\t10.208.64.0/19\t0\t0\t0\t5\n"
    peers = link.parse_dump(dump, now=1010.0)
    assert peers[0]["handshake_age"] == 10.0 and peers[0]["endpoint"] == "10.0.0.2:51820"
    assert peers[1]["handshake_age"] is None and peers[1]["endpoint"] == ""
    cfg = MeshConfig(env="prod", node="a", slot=0, cidr=CIDR, port=51820, mtu=1420)
    addrs = ("1: lo    inet 127.0.0.1/8 scope host lo\n"
             "5: br-1    inet 10.208.1.1/24 brd 10.208.1.255 scope global br-1\n"  # its own bridge
             "7: orch-dev    inet 10.208.0.1/12 scope global orch-dev\n")  # another environment, same range
    assert link.overlapping(cfg, addrs) == ["orch-dev (10.208.0.1/12)"]


def test_records_are_the_serving_replicas_with_their_names_local_first():
    nets = records.mesh_networks([
        {"Name": "shop_back", "Id": "abcdef1234567890", "Labels": {
            "io.orch.env": "prod", "io.orch.project": "shop", "io.orch.name": "back", records.MESH_SLOT: "3"}},
        {"Name": "shop_plain", "Id": "x", "Labels": {"io.orch.env": "prod"}},
        {"Name": "dev_back", "Id": "y", "Labels": {"io.orch.env": "dev", records.MESH_SLOT: "1"}},
    ], "prod")
    assert list(nets) == ["shop_back"] and nets["shop_back"].bridge == "br-abcdef123456"

    def c(cid, name, state="running", status="Up 3 seconds", ip="10.208.3.2"):
        return {"Id": cid, "Names": ["/" + name], "State": state, "Status": status,
                "Labels": {"io.orch.service": "cache"}, "NetworkSettings": {"Networks": {"shop_back": {"IPAddress": ip}}}}

    cs = [c("c1" * 6, "shop-cache-1"), c("c2" * 6, "shop-cache-2", status="Up 1 s (health: starting)", ip="10.208.3.3"),
          c("c3" * 6, "shop-cache-3", status="Up (unhealthy)", ip="10.208.3.4"),
          c("c4" * 6, "shop-cache-1-prev", ip="10.208.3.5"), c("c5" * 6, "shop-cache-4", state="exited", ip="")]
    local = records.local_records(cs, nets, {("c1" * 6, "shop_back"): ["cache", "redis", "c1c1c1c1c1c1"]})
    assert local == [records.Record(3, "10.208.3.2", ("cache", "redis"))]
    remote = [records.Record(3, "10.208.35.2", ("cache",))]
    assert records.hosts_text(local, remote).splitlines()[1:] == [
        "10.208.3.2 cache.n3.orch.internal", "10.208.3.2 redis.n3.orch.internal", "10.208.35.2 cache.n3.orch.internal"]
    # a peer's records are checked, not trusted
    assert records.Record.parse({"k": 3, "ip": "10.208.35.2; x", "names": ["a"]}) is None
    assert records.Record.parse({"k": 3, "ip": "10.208.35.2", "names": ["ok", "bad name", "x\nevil"]}).names == ("ok",)


def test_dnsmasq_answers_only_from_its_hosts_for_the_mesh_domain_on_the_mesh_address():
    argv = dns_argv("/usr/sbin/dnsmasq", MeshPaths("/state/mesh/prod"), "10.208.0.1")
    assert "--listen-address=10.208.0.1" in argv and "--bind-interfaces" in argv
    assert "--local=/orch.internal/" in argv and "--domain-needed" in argv and "--no-hosts" in argv
    assert any(a.startswith("--addn-hosts=/run/orch-mesh/") and a.endswith("/records") for a in argv)


# --------------------------------------------------------------------------- agent operations (fake host)


def ctx(tmp_path, engine=None, host=None):
    return Context(engine_factory=lambda: engine or FakeEngine(), state_dir=str(tmp_path),
                   engine_id=lambda: "E1", mesh_host=host or FakeMeshHost("a"))


def test_join_apply_status_and_leave_on_a_node(tmp_path):
    host, engine = FakeMeshHost("a"), FakeEngine()
    c = ctx(tmp_path, engine, host)
    key = OPERATIONS["mesh_join"](c, {"env": "prod"})["public_key"]
    assert key == host.key and (tmp_path / "engines/E1/mesh/prod/private.key").stat().st_mode & 0o777 == 0o600
    cfg = {"env": "prod", "node": "a", "slot": 0, "cidr": CIDR, "port": 51820, "mtu": 1420,
           "peers": [{"node": "b", "slot": 1, "public_key": KEY_B, "endpoint": "10.0.0.2:51820"}]}
    out = OPERATIONS["mesh_apply"](c, {"config": cfg})
    assert [k for k, _ in host.calls] == ["ensure_key", "ensure_link", "apply_firewall", "ensure_dns", "ensure_daemon"]
    st = MeshState.from_dict(out)
    assert st.healthy and st.config == cfg and st.public_key == key and st.peers[0]["node"] == "b"
    # the project's network keeps the mesh while it exists; without any, the node leaves
    engine.create_network("shop_back", "bridge", False, False, {"io.orch.env": "prod", "io.orch.project": "shop",
                                                                 "io.orch.name": "back", records.MESH_SLOT: "1"})
    assert OPERATIONS["mesh_leave"](c, {"env": "prod", "project": "shop"}) == {"removed": False, "projects": ["shop"]}
    engine.remove_network("shop_back")
    assert OPERATIONS["mesh_leave"](c, {"env": "prod", "project": "shop"})["removed"]
    assert not host.links and not host.daemon and not host.dns and "orch-prod" not in host.firewall


def test_a_node_without_wireguard_says_what_to_install(tmp_path):
    host = FakeMeshHost("a")
    host.missing = ["no `wg` program: apt-get install wireguard-tools"]
    st = OPERATIONS["mesh_status"](ctx(tmp_path, host=host), {"env": "prod"})
    assert st["problems"] == ["no `wg` program: apt-get install wireguard-tools"]


def test_the_real_link_refuses_without_tools(monkeypatch, tmp_path):
    monkeypatch.setattr("agent.mesh.procs.which", lambda p: None)
    assert any("wireguard-tools" in p for p in link.problems())
    assert any("wireguard-go" in p for p in link.problems()) or link.kernel_module()
    paths = MeshPaths(str(tmp_path))
    with pytest.raises(AgentError) as e:
        link.ensure_key(paths)
    assert "apt-get install wireguard-tools" in e.value.details["fix"]


# --------------------------------------------------------------------------- up and down over fake nodes


def deploy(lab, **opts):
    return Deployment(ws(lab, SHOP), DeployOptions(**opts), Progress(), lab.connector).run()


def test_the_mesh_is_set_up_before_any_container_and_a_rerun_touches_nothing(lab):
    deploy(lab)
    for n in lab.nodes.values():
        ops = n.ops()
        assert ops.index("mesh_join") < ops.index("mesh_apply") < ops.index("rollout")
        n.calls.clear()
        n.mesh_host.calls.clear()
    deploy(lab)
    for n in lab.nodes.values():
        assert n.ops() == ["state"] and n.mesh_host.calls == []


def test_a_node_that_lost_its_link_is_repaired_alone(lab):
    deploy(lab)
    lab.nodes["n2"].mesh_host.links.clear()  # e.g. wireguard-go ended with a reboot
    for n in lab.nodes.values():
        n.calls.clear()
    res = deploy(lab)
    assert [m.node for m in res.plan.mesh] == ["n2"] and res.plan.mesh[0].reasons == ("restart link",)
    assert lab.nodes["n1"].ops("mesh_apply") == [] and len(lab.nodes["n2"].ops("mesh_apply")) == 1


def test_down_leaves_the_mesh_where_no_project_is_left(lab):
    deploy(lab)
    take_down(ws(lab, SHOP), connector=lab.connector)
    for n in lab.nodes.values():
        assert n.ops("mesh_leave") and not n.mesh_host.links and not n.mesh_host.daemon


def test_compose_network_options_reach_the_agent_per_node(lab):
    compose = textwrap.dedent("""\
        name: shop
        services:
          a: {image: busybox, networks: [front, back], deploy: {replicas: 2}}
        networks:
          front: {}
          back: {internal: true}
          outside: {external: true}
    """)
    Deployment(ws(lab, compose), DeployOptions(), Progress(), lab.connector).run()
    specs = {n: [a["spec"] for op, a in lab.nodes[n].calls if op == "rollout"][0] for n in ("n1", "n2")}
    back1, back2 = specs["n1"]["networks"]["back"], specs["n2"]["networks"]["back"]
    assert back1["mesh_slot"] == back2["mesh_slot"] and back1["subnet"] != back2["subnet"]
    assert back1["internal"] is True
    nets = lab.nodes["n2"].engine.nets
    made = nets["shop_back"]
    assert made["internal"] is False and made["labels"][records.MESH_INTERNAL] == "true"  # the mesh enforces it
    assert made["options"]["com.docker.network.bridge.enable_ip_masquerade"] == "false"
    assert made["options"]["com.docker.network.bridge.gateway_mode_ipv4"] == "nat-unprotected"
    assert made["subnets"] == [back2["subnet"]]
    assert set(specs["n2"]["container"]["dns_search"]) == {search_domain(back1["mesh_slot"]),
                                                           search_domain(specs["n2"]["networks"]["front"]["mesh_slot"])}
    assert lab.nodes["n2"].mesh_host.firewall["orch-dev"].count("-j ACCEPT") >= 2


def test_a_dependent_on_another_node_starts_after_its_node_refreshed_the_names(lab):
    deploy(lab)
    n2 = lab.nodes["n2"]
    calls = [(op, (a.get("spec") or {}).get("service")) for op, a in n2.calls]
    # web-2 runs on n2 and depends on api, which runs only on n1
    assert calls.index(("mesh_refresh", None)) < calls.index(("rollout", "web"))
    assert ("refresh_daemon", None) in n2.mesh_host.calls
    # it waits until n2 has heard from n1, where api runs (names and link both work)
    assert [a for op, a in n2.calls if op == "mesh_refresh"] == [{"env": "dev", "peers": ["n1"]}]
    assert n2.mesh_host.refreshed_for[0] == ("n1",)  # (then its own rollout's refresh, for nothing)
    # n1 runs every dependency of its own replicas itself: no refresh asked there
    assert lab.nodes["n1"].ops("mesh_refresh") == []


def test_a_dependent_node_that_has_not_heard_from_its_dependency_node_warns_and_the_deploy_goes_on(lab):
    lab.nodes["n2"].mesh_host.refresh_daemon = lambda paths, timeout=5.0, need=(): list(need)
    progress = Progress()
    Deployment(ws(lab, SHOP), DeployOptions(), progress, lab.connector).run()
    warnings = [e["message"] for e in progress.events if e["event"] == "warning"]
    assert any(w.startswith("n2 has not heard from n1 over the service mesh") for w in warnings), warnings
    assert [a for op, a in lab.nodes["n2"].calls if op == "rollout"]  # web still deployed there


def test_a_dependent_node_whose_name_daemon_does_not_answer_warns(lab):
    lab.nodes["n2"].mesh_host.refresh_daemon = lambda paths, timeout=5.0, need=(): ["daemon"]
    progress = Progress()
    Deployment(ws(lab, SHOP), DeployOptions(), progress, lab.connector).run()
    warnings = [e["message"] for e in progress.events if e["event"] == "warning"]
    assert any(w.startswith("n2: the service mesh's name daemon is not running") for w in warnings), warnings


def test_a_refresh_waits_only_for_needed_peers_the_tick_did_not_pull():
    from agent.mesh.host import unpulled

    status = {"peers": [{"node": "n1", "reachable": True, "error": ""},
                        {"node": "n3", "reachable": True, "error": "<urlopen error timed out>"}]}
    assert unpulled(status, ("n1",)) == []
    assert unpulled(status, ("n1", "n3")) == ["n3"]  # reachable a tick ago is not enough: this tick's pull
    assert unpulled(status, ("n9",)) == []  # not a peer of this mesh: nothing to wait for
    assert unpulled({}, ("n1",)) == []


def test_mesh_refresh_takes_the_needed_peers_and_refuses_bad_ones(tmp_path):
    host = FakeMeshHost("a")
    host.daemon = True
    c = ctx(tmp_path, host=host)
    assert OPERATIONS["mesh_refresh"](c, {"env": "prod", "peers": ["n1", "n2"]}) == {"refreshed": True, "missing": []}
    assert host.refreshed_for == [("n1", "n2")]
    for bad in ("n1", ["../x"], ["n"] * 1001):
        with pytest.raises(BadRequest):
            OPERATIONS["mesh_refresh"](c, {"env": "prod", "peers": bad})


def test_a_peer_can_only_name_addresses_of_its_own_block_and_network():
    from agent.mesh.daemon import owned_by

    recs = [records.Record(3, "10.208.35.2", ("cache",)),  # slot 1's block, network 3: its own
            records.Record(3, "10.208.3.9", ("cache",)),  # slot 0's block: another node's
            records.Record(4, "10.208.35.7", ("db",)),  # its block, but network 3's subnet
            records.Record(4, "10.208.36.7", ("db",))]
    assert [r.ip for r in owned_by(CIDR, 1, recs)] == ["10.208.35.2", "10.208.36.7"]
