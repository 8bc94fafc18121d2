"""The environment's service mesh on the lab's prod (2 nodes), with examples/mesh: an API with
a replica on each node, a cache that publishes nothing (one replica on prod-1, a named
volume), a probe that shares only the front network with the API (docs/networking.md).

Checked as the issue asks: every request to every node succeeds and they share one state;
the cache answers at no node address; only WireGuard travels between the nodes; Compose
networks and environments stay apart across nodes; a lost node is dropped from the names
within 15 s and a re-run converges; a third node joins with `orch up` and is dropped
when removed; `orch nodes check` shows the mesh.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.e2e.helpers import http_get, last_json
from tests.e2e.mesh_diag import in_node, mesh_state

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "mesh"
ENVIRONMENTS = ROOT / "environments"
HIT = re.compile(r"^api (\S+) count (\d+)$")
WG_PORT = 51820


class MeshApp:
    def __init__(self, orch, tmp: Path):
        self.run_orch = orch
        self.dir = tmp / "mesh"
        shutil.copytree(EXAMPLE, self.dir)
        self.project = f"e2e-mesh-{uuid.uuid4().hex[:6]}"
        self.port = random.randint(200, 299) * 100 + 90
        self.vars = {"MESH_API_PORT": str(self.port)}
        self.environments = ENVIRONMENTS

    def orch(self, command: str, *rest: str, check: bool = True, env: dict | None = None,
             environments: Path | None = None, timeout: float = 600):
        return self.run_orch(command, "--env", "prod", "--file", str(self.dir / "compose.yaml"), "-p", self.project,
                             "--environments", str(environments or self.environments), *rest,
                             check=check, env={**self.vars, **(env or {})}, timeout=timeout)

    def hit(self, address: str) -> tuple[str, int]:
        body = http_get(f"http://{address}:{self.port}/cgi-bin/hit")
        m = HIT.match(body)
        assert m, f"{address}: {body!r}\n{mesh_state()}"
        return m.group(1), int(m.group(2))

    def containers(self) -> dict[str, list[dict]]:
        """service -> its containers (name, node), from `orch ps --json`."""
        out: dict[str, list[dict]] = {}
        for c in last_json(self.orch("ps", "--json").stdout)["containers"]:
            out.setdefault(c["service"], []).append(c)
        return out

    def one(self, service: str, node: str) -> str:
        (c,) = [c for c in self.containers()[service] if c["node"] == node]
        return c["name"]


@pytest.fixture(scope="module")
def app(orch, lab, tmp_path_factory):
    a = MeshApp(orch, tmp_path_factory.mktemp("mesh"))
    a.orch("up", "--json")
    yield a
    a.orch("down", "--json", check=False)


def _addresses(lab) -> list[str]:
    return [lab.node("prod-1").address, lab.node("prod-2").address]


def _ip(ssh, node: str, container: str, network: str) -> str:
    return ssh(node).check(
        f"docker inspect -f '{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}' {container}").strip()


def test_every_request_to_every_node_succeeds_and_they_share_one_state(app, lab):
    hosts, counts = set(), []
    for i in range(20):
        host, count = app.hit(_addresses(lab)[i % 2])  # prod-2's API reaches the cache on prod-1 by name
        hosts.add(host)
        counts.append(count)
    assert len(hosts) == 2, hosts  # both replicas answered
    assert counts == list(range(counts[0], counts[0] + 20)), counts  # one counter: one state


def test_the_unpublished_dependency_answers_at_no_node_address(app, lab, ssh):
    for address in _addresses(lab):
        with pytest.raises(OSError):
            socket.create_connection((address, 6379), timeout=2).close()
    # nor at its mesh address from outside the mesh (this machine is not a peer)
    cache_ip = _ip(ssh, "prod-1", app.one("cache", "prod-1"), f"{app.project}_back")
    assert cache_ip.startswith("10.208.")
    with pytest.raises(OSError):
        socket.create_connection((cache_ip, 6379), timeout=2).close()


def _pcap_packets(data: bytes):
    """(ethertype, ip protocol, src port, dst port, payload bytes) of each Ethernet frame."""
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    pos = 24
    while pos + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[pos:pos + 16])
        frame = data[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        ethertype = struct.unpack(">H", frame[12:14])[0]
        if ethertype != 0x0800:
            yield ethertype, None, None, None, frame
            continue
        ihl = (frame[14] & 0x0F) * 4
        proto = frame[23]
        l4 = frame[14 + ihl:]
        sport, dport = struct.unpack(">HH", l4[:4]) if len(l4) >= 4 else (None, None)
        yield ethertype, proto, sport, dport, l4


def test_between_the_nodes_travels_only_wireguard(app, lab, tmp_path):
    assert shutil.which("tcpdump"), "tcpdump is missing (orch lab up installs it)"
    p1, p2 = _addresses(lab)
    pcap = tmp_path / "between-nodes.pcap"
    dump = subprocess.Popen(["tcpdump", "-i", lab.bridge, "-U", "-s", "0", "-w", str(pcap),
                             f"host {p1} and host {p2}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # tcpdump attaches
        for _ in range(20):
            app.hit(p2)  # each one crosses to the cache on prod-1 and back
        time.sleep(1)
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(10)
    data = pcap.read_bytes()
    packets = list(_pcap_packets(data))
    ip = [p for p in packets if p[0] == 0x0800]
    wireguard = [p for p in ip if p[1] == 17 and WG_PORT in (p[2], p[3])]
    assert len(wireguard) >= 40, f"expected the requests' traffic as WireGuard packets, saw {len(wireguard)}"
    other = [(p[1], p[2], p[3]) for p in ip if p not in wireguard]
    assert not other, f"non-WireGuard IP traffic between the nodes: {other[:10]}"
    for marker in (b"cgi-bin/incr", b"Content-Type", b"HTTP/1."):
        assert marker not in data, f"plaintext {marker!r} between the nodes"


def test_compose_networks_and_environments_stay_apart_across_nodes(app, lab, ssh):
    prod1, prod2 = ssh("prod-1"), ssh("prod-2")
    cache_ip = _ip(ssh, "prod-1", app.one("cache", "prod-1"), f"{app.project}_back")
    api2, probe2 = app.one("api", "prod-2"), app.one("probe", "prod-2")
    url = f"http://{cache_ip}:6379/cgi-bin/incr?peek"
    # the API (front + back) on prod-2 reaches the cache on prod-1, by name and by address
    assert prod2.check(f"docker exec {api2} wget -q -O - http://cache:6379/cgi-bin/incr?peek").strip().isdigit()
    assert prod2.check(f"docker exec {api2} wget -q -O - {url}").strip().isdigit()
    # the probe (front only) on prod-2 does not: the name does not resolve, packets are dropped
    status, out, err = prod2.run(f"docker exec {probe2} wget -q -O - http://cache:6379/cgi-bin/incr?peek")
    assert status != 0 and "bad address" in (out + err), (status, out, err)
    status, out, err = prod2.run(f"docker exec {probe2} timeout 4 wget -q -O - {url}")
    assert status != 0, (out, err)
    # nor on its own node: Docker keeps front and back apart there
    probe1 = app.one("probe", "prod-1")
    status, _, _ = prod1.run(f"docker exec {probe1} timeout 4 wget -q -O - {url}")
    assert status != 0
    # dev's containers cannot reach prod's
    status, out, err = ssh("dev-1").run(f"docker run --rm busybox timeout 4 wget -q -O - {url}", timeout=120)
    assert status != 0, (out, err)


def test_nodes_check_shows_the_mesh(app, orch):
    res = orch("nodes", "check", "--env", "prod", "--environments", str(ENVIRONMENTS), "--json")
    nodes = {n["node"]: n for n in last_json(res.stdout)["nodes"]}
    for name, other in (("prod-1", "prod-2"), ("prod-2", "prod-1")):
        mesh = nodes[name]["mesh"]
        assert mesh["joined"] and all(mesh["running"].values()), mesh
        (peer,) = mesh["peers"]
        assert peer["node"] == other and peer["reachable"] and peer["handshake_age"] is not None, peer


def _back_slot(ssh, project: str) -> int:
    out = ssh("prod-1").check(f"docker network inspect -f '{{{{index .Labels \"io.orch.mesh.slot\"}}}}' {project}_back")
    return int(out.strip())


def _resolve(ssh, node: str, container: str, name: str) -> set[str]:
    status, out, _ = ssh(node).run(f"docker exec {container} nslookup {name}")
    return set(re.findall(r"Address: (10\.208\.\d+\.\d+)", out)) if status == 0 else set()


def _netns_pids(program: str, netns: str) -> list[int]:
    inode = Path(f"/run/netns/{netns}").stat().st_ino
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode()).name == program and (d / "ns" / "net").stat().st_ino == inode:
                out.append(int(d.name))
        except OSError:
            continue
    return out


def test_a_cut_link_drops_the_names_and_they_return_without_a_deploy(app, lab, ssh):
    """A network cut (the node and its replicas keep running): the other node stops
    returning its replicas within 15 s, and returns them when the link is back, with no
    `orch up` and no controller."""
    k = _back_slot(ssh, app.project)
    cache1 = app.one("cache", "prod-1")
    api2_ip = _ip(ssh, "prod-2", app.one("api", "prod-2"), f"{app.project}_back")
    name = f"api.n{k}.orch.internal"
    _wait(lambda: api2_ip in _resolve(ssh, "prod-1", cache1, name), 15, f"{name} never resolved to {api2_ip}")
    cut = ["nsenter", "--net=/run/netns/orch-lab.prod-2", "iptables", "-w", "-I", "INPUT", "-p", "udp",
           "--dport", str(WG_PORT), "-j", "DROP"]
    subprocess.run(cut, check=True)
    try:
        t0 = time.monotonic()
        _wait(lambda: api2_ip not in _resolve(ssh, "prod-1", cache1, name), 15,
              f"{name} still resolves to the cut-off node's replica after 15 s")
        print(f"names dropped the cut-off node after {time.monotonic() - t0:.1f} s")
        for _ in range(5):
            app.hit(lab.node("prod-1").address)  # served by the surviving replica and the cache
    finally:
        subprocess.run([*cut[:4], "-D", *cut[5:]], check=True)
    t0 = time.monotonic()
    _wait(lambda: api2_ip in _resolve(ssh, "prod-1", cache1, name), 20,
          f"{name} did not return to the reconnected node's replica")
    print(f"names returned {time.monotonic() - t0:.1f} s after the link")


def _peer(node: str, iface: str) -> dict:
    """The node's one peer on iface, as `wg show dump` has it."""
    (line,) = subprocess.run(in_node(node, ["wg", "show", iface, "dump"]), capture_output=True, text=True,
                             check=True).stdout.splitlines()[1:]
    f = line.split("\t")
    return {"key": f[0], "endpoint": f[2], "allowed": f[3], "handshake": int(f[4]), "keepalive": f[7]}


def test_handshakes_that_cross_settle_within_a_keepalive(app, lab):
    """Both ends of a link configured at the same moment (as mesh_apply does) both start a
    WireGuard handshake and the two cross. With one keepalive interval at both ends they
    stayed in step and crossed again every 5 s, for minutes (155 s and 385 s measured
    with wireguard-go; CI failed a whole module on it). Orch's ends keep alive at
    different intervals (agent.mesh.link.keepalive): the link settles within one."""
    iface = "orch-prod"
    ends = {n: _peer(n, iface) for n in ("prod-1", "prod-2")}
    assert {e["keepalive"] for e in ends.values()} == {"5", "7"}, ends
    removes = [in_node(n, ["wg", "set", iface, "peer", e["key"], "remove"]) for n, e in ends.items()]
    adds = [in_node(n, ["wg", "set", iface, "peer", e["key"], "endpoint", e["endpoint"], "allowed-ips",
                        e["allowed"], "persistent-keepalive", e["keepalive"]]) for n, e in ends.items()]
    times = []
    for _ in range(8):
        assert all(p.wait() == 0 for p in [subprocess.Popen(argv) for argv in removes])
        assert all(p.wait() == 0 for p in [subprocess.Popen(argv) for argv in adds])  # both at once
        t0 = time.monotonic()
        _wait(lambda: all(_peer(n, iface)["handshake"] for n in ends), 12,
              f"no handshake 12 s after both ends were configured at once\n{mesh_state()}")
        times.append(round(time.monotonic() - t0, 1))
    print(f"seconds to a handshake after both ends were configured at once: {times}")
    # and the requests across go through again (prod-2's names return with its next pull)
    _wait(lambda: HIT.match(http_get(f"http://{_addresses(lab)[1]}:{app.port}/cgi-bin/hit")), 10,
          f"prod-2's API does not reach the cache after the link settled\n{mesh_state()}")
    for i in range(4):
        app.hit(_addresses(lab)[i % 2])


def _wait(cond, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, message
        time.sleep(0.5)


MESHX = """\
# An environment of the lab's prod nodes with a mesh of its own (another range and port):
# it grows to prod-3 and shrinks back, beside prod's mesh on the same nodes.
name: meshx
nodes:
{nodes}ssh:
  known_hosts: /var/lib/orch-lab/known_hosts
registry:
  address: 10.250.0.1:5000
  mirror: 10.250.0.1:5001
  ca_file: /var/lib/orch-lab/ca.crt
  username_env: ORCH_REGISTRY_USER
  password_env: ORCH_REGISTRY_PASSWORD
  credentials_file: /var/lib/orch-lab/registry.env
mesh: {{cidr: 10.224.0.0/12, port: 51821}}
"""
NODE = ("  - {{name: prod-{i}, host: 10.250.0.3{i}, user: root, identity_file: /var/lib/orch-lab/id_ed25519, "
        "python: /usr/bin/python3, labels: {{zone: {zone}}}}}\n")


def _meshx(tmp: Path, count: int) -> Path:
    d = tmp / f"envs{count}"
    d.mkdir(exist_ok=True)
    nodes = "".join(NODE.format(i=i, zone="abc"[i - 1]) for i in range(1, count + 1))
    (d / "meshx.yaml").write_text(MESHX.format(nodes=nodes))
    return d


SETTLE_S = 5.0


def _every_api_reaches_the_cache(x: MeshApp, nodes_check, addresses: tuple[str, ...]) -> None:
    """Right after a node joined, within SETTLE_S: once (CI, 2026-12-06) prod-2's API,
    unchanged by the join, answered "cache unreachable" right after `up` returned, and it
    did not recur in 40 runs here. A window that short is waited for and reported; a
    longer one fails with the mesh's own view of every node (`orch nodes check`)."""
    t0 = time.monotonic()
    while True:
        bodies = {a: http_get(f"http://{a}:{x.port}/cgi-bin/hit") for a in addresses}
        late = {a: b for a, b in bodies.items() if not HIT.match(b)}
        if not late:
            if time.monotonic() - t0 > 0.5:
                print(f"every API reached the cache {time.monotonic() - t0:.1f} s after up")
            return
        if time.monotonic() - t0 > SETTLE_S:
            raise AssertionError(f"{SETTLE_S:.0f} s after up: {late}; nodes check: {nodes_check()[-4000:]}\n{mesh_state()}")
        time.sleep(0.25)


def test_a_third_node_joins_with_up_and_is_dropped_when_removed(app, orch, lab, ssh, tmp_path):
    # `app` keeps prod's own mesh on prod-1 and prod-2 meanwhile: meshx comes and goes beside it
    orch("lab", "up", "--nodes", "dev=1,test=1,prod=3", env={"ORCH_LAB_NAME": "orch-lab"})
    x = MeshApp(orch, tmp_path)

    def run(command, count, *rest, replicas=None):
        return orch(command, "--env", "meshx", "--file", str(x.dir / "compose.yaml"), "-p", x.project,
                    "--environments", str(_meshx(tmp_path, count)), *rest,
                    env={**x.vars, "MESH_API_REPLICAS": str(replicas or count)})

    try:
        run("up", 2, "--json")
        assert ssh("prod-1").check("wg show orch-meshx peers").split() != []
        run("up", 3, "--json")  # prod-3 joins: a key, a slot, and the new peer on both others
        _every_api_reaches_the_cache(x, lambda: orch("nodes", "check", "--env", "meshx", "--environments",
                                                     str(_meshx(tmp_path, 3)), "--json", check=False).stdout,
                                     ("10.250.0.33", "10.250.0.31", "10.250.0.32"))
        counts = [x.hit(f"10.250.0.3{i}")[1] for i in (3, 1, 2, 3)]  # prod-3's API reaches the cache on prod-1
        assert counts == list(range(counts[0], counts[0] + 4)), counts
        res = orch("nodes", "check", "--env", "meshx", "--environments", str(_meshx(tmp_path, 3)), "--json")
        for n in last_json(res.stdout)["nodes"]:
            peers = n["mesh"]["peers"]
            assert len(peers) == 2 and all(p["reachable"] for p in peers), (n["node"], peers)
        # prod-3 removed: its part goes with down, and the others drop it with the next up
        run("down", 3, "--json")
        run("up", 2, "--json")
        for node in ("prod-1", "prod-2"):
            assert len(ssh(node).check("wg show orch-meshx peers").split()) == 1, node
        assert x.hit("10.250.0.32")[0]
        # the last project of the environment leaves: so does its mesh, and prod's stays
        run("down", 2, "--json")
        for node in ("prod-1", "prod-2"):
            status, _, _ = ssh(node).run("ip link show orch-meshx")
            assert status != 0, f"{node}: orch-meshx still there after the last project left"
            ssh(node).check("ip link show orch-prod")
    finally:
        run("down", 3, "--json")
        # the lab keeps the node list it was last given: name the default one again
        orch("lab", "up", "--nodes", "dev=1,test=1,prod=2", env={"ORCH_LAB_NAME": "orch-lab"})


def test_a_lost_node_leaves_the_names_within_15s_and_a_rerun_converges(app, orch, lab, ssh):
    from orchestrator.lab import dockerd, proc
    from orchestrator.lab.model import LabPaths
    from orchestrator.lab.state import load_spec

    k = _back_slot(ssh, app.project)
    cache1 = app.one("cache", "prod-1")
    api2_ip = _ip(ssh, "prod-2", app.one("api", "prod-2"), f"{app.project}_back")
    name = f"api.n{k}.orch.internal"
    _wait(lambda: api2_ip in _resolve(ssh, "prod-1", cache1, name), 15, f"{name} never resolved to {api2_ip}")
    # prod-2 goes: its engine (and with it its containers) and its end of the mesh
    spec = load_spec(LabPaths.for_name("orch-lab"))
    t0 = time.monotonic()
    dockerd.stop(proc.process_table(), spec, "prod-2", timeout=20)
    for pid in _netns_pids("wireguard-go", "orch-lab.prod-2"):
        subprocess.run(["kill", str(pid)], check=False)
    try:
        _wait(lambda: api2_ip not in _resolve(ssh, "prod-1", cache1, name), 15 - (time.monotonic() - t0),
              f"{name} still resolves to the lost node's replica 15 s after it went")
        print(f"names dropped the lost node after {time.monotonic() - t0:.1f} s")
        for _ in range(10):  # requests a surviving replica can serve succeed meanwhile
            app.hit(lab.node("prod-1").address)
    finally:
        orch("lab", "up", env={"ORCH_LAB_NAME": "orch-lab"})  # prod-2's engine back; its link is not
    plan = last_json(app.orch("plan", "--json").stdout)
    assert [m["node"] for m in plan["plan"]["mesh"]] == ["prod-2"], plan["plan"]["mesh"]
    app.orch("up", "--json")
    counts = [app.hit(a)[1] for a in _addresses(lab) * 3]
    assert counts == list(range(counts[0], counts[0] + 6)), counts
    api2_ip = _ip(ssh, "prod-2", app.one("api", "prod-2"), f"{app.project}_back")
    _wait(lambda: api2_ip in _resolve(ssh, "prod-1", cache1, name), 15, "prod-2's replica did not come back")
