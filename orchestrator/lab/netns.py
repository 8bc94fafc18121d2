"""The lab's network: a host bridge, one netns + veth per node, forwarding and NAT.

Builders return argv lists; `ensure_*`/`remove_*` run them. A node's namespace is
entered with `nsenter --net=/run/netns/NS` (not `ip netns exec`, which remounts /sys
and hides the cgroup mounts dockerd needs).
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import InputError, OrchError, Problem
from orchestrator.lab import proc
from orchestrator.lab.model import LabSpec, NodeSpec

from agent.wire.mesh import DEFAULT_CIDR as MESH_RANGE  # the lab's environments use the default range

NETNS_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_DIR / name


def in_netns(ns: str, argv: list[str], uts: Path | None = None) -> list[str]:
    pre = ["nsenter", f"--net={netns_path(ns)}"]
    if uts is not None:
        pre.append(f"--uts={uts}")
    return pre + ["--"] + list(argv)


# ---- argv builders (pure) -------------------------------------------------------


def bridge_argvs(spec: LabSpec) -> list[list[str]]:
    br = spec.bridge
    return [
        ["ip", "link", "add", br, "type", "bridge"],
        ["ip", "addr", "replace", f"{spec.host_address}/{spec.prefixlen}", "dev", br],
        ["ip", "link", "set", br, "up"],
    ]


def node_mac(address: str) -> str:
    """The node's fixed MAC: locally administered, from its address. A node made again
    (a lab up after its removal) keeps its MAC as a machine would, so the ARP entries the
    host and the other nodes hold for its address stay true; with a fresh random MAC they
    pointed at a gone interface until they aged out (sshd "not answering" for 20 s)."""
    return "02:6c:" + ":".join(f"{int(b):02x}" for b in address.split("."))


def node_net_argvs(spec: LabSpec, node: NodeSpec) -> list[list[str]]:
    """Create the node's netns and veth, address it and route via the host bridge."""
    ns, veth = spec.netns(node), spec.veth(node)

    def inside(*argv: str) -> list[str]:
        return in_netns(ns, list(argv))

    return [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
        ["ip", "link", "set", veth, "master", spec.bridge, "up"],
        inside("ip", "link", "set", "lo", "up"),
        inside("ip", "link", "set", "eth0", "address", node_mac(node.address)),
        inside("ip", "addr", "add", f"{node.address}/{spec.prefixlen}", "dev", "eth0"),
        inside("ip", "link", "set", "eth0", "up"),
        inside("ip", "route", "add", "default", "via", spec.host_address),
    ]


def iptables_rules(spec: LabSpec) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) the host needs; each tagged with the lab's comment.

    Host dockerd sets FORWARD's policy to DROP and br_netfilter sends bridged frames
    through FORWARD, so node<->node and node->outside traffic must be accepted
    explicitly; MASQUERADE lets node containers reach Debian's mirror.
    """
    tag = ["-m", "comment", "--comment", spec.iptables_comment]
    br = spec.bridge
    return [
        ("filter", "FORWARD", ["-i", br, *tag, "-j", "ACCEPT"]),
        (
            "filter",
            "FORWARD",
            ["-o", br, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *tag, "-j", "ACCEPT"],
        ),
        ("nat", "POSTROUTING", ["-s", spec.subnet, "!", "-o", br, *tag, "-j", "MASQUERADE"]),
        # The environments' service meshes (default range) are private to their nodes: this
        # machine is no peer, so it must not send such addresses on along its default route
        # (out of the lab). Last in the list, so inserted at the top: before the ACCEPTs.
        ("filter", "FORWARD", ["-d", MESH_RANGE, *tag, "-j", "REJECT"]),
        ("filter", "OUTPUT", ["-d", MESH_RANGE, *tag, "-j", "REJECT"]),
    ]


def iptables_check_argv(table: str, chain: str, rule: list[str]) -> list[str]:
    return ["iptables", "-w", "-t", table, "-C", chain, *rule]


def iptables_insert_argv(table: str, chain: str, rule: list[str]) -> list[str]:
    # Insert at the top: ahead of anything that could drop lab traffic.
    return ["iptables", "-w", "-t", table, "-I", chain, "1", *rule]


def iptables_delete_argv(table: str, chain: str, rule: list[str]) -> list[str]:
    return ["iptables", "-w", "-t", table, "-D", chain, *rule]


def tagged_rules(save_output: str, comment: str) -> list[list[str]]:
    """Rules from `iptables -S` output carrying exactly the lab's comment, as -D args."""
    out = []
    for line in save_output.splitlines():
        parts = _split_rule(line)
        if len(parts) < 2 or parts[0] != "-A":
            continue
        try:
            i = parts.index("--comment")
        except ValueError:
            continue
        if i + 1 < len(parts) and parts[i + 1] == comment:
            out.append(parts[1:])  # chain + rule
    return out


def _split_rule(line: str) -> list[str]:
    import shlex

    try:
        return shlex.split(line)
    except ValueError:
        return []


def route_conflicts(routes: list[dict], subnet: str, own_devices: set[str]) -> list[str]:
    """Routes (from `ip -j route`) overlapping the subnet that are not the lab's own."""
    net = ipaddress.IPv4Network(subnet)
    hits = []
    for r in routes:
        dst, dev = r.get("dst", ""), r.get("dev", "")
        if dst in ("default", "") or dev in own_devices:
            continue
        try:
            other = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if net.overlaps(other):
            hits.append(f"{dst} dev {dev}")
    return hits


# ---- inspection -----------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    name: str
    up: bool
    master: str | None
    addresses: tuple[str, ...]  # "10.250.0.1/24"


DUMP_TRIES = 5


def ip_json(argv: list[str], tries: int = DUMP_TRIES) -> list | None:
    """The JSON of an `ip -j ...` listing (None when ip fails). Its stdout only: while
    links come and go (nodes torn down in parallel) iproute2 warns on stderr "Dump was
    interrupted and may be inconsistent." (exit 0); then the listing is read again, and
    after `tries` the last one is used. Output that is not JSON is read again too."""
    data = None
    for attempt in range(tries):
        code, out, err = proc.capture(argv)
        if code != 0:
            return None
        try:
            data = json.loads(out.decode(errors="replace") or "[]")
        except ValueError:
            data = None
        if data is not None and b"interrupted" not in err:
            return data
        time.sleep(0.05 * (attempt + 1))
    return data if data is not None else []


def links(argv_prefix: list[str] | None = None) -> dict[str, Link]:
    items = ip_json([*(argv_prefix or []), "ip", "-j", "addr", "show"])
    if items is None:
        return {}
    out = {}
    for item in items:
        addrs = tuple(
            f"{a['local']}/{a['prefixlen']}" for a in item.get("addr_info", []) if a.get("family") == "inet"
        )
        flags = item.get("flags", [])
        out[item["ifname"]] = Link(
            name=item["ifname"],
            up="UP" in flags,
            master=item.get("master"),
            addresses=addrs,
        )
    return out


def routes() -> list[dict]:
    return ip_json(["ip", "-j", "route", "show"]) or []


def link_exists(name: str) -> bool:
    """In the host's namespace, without listing every link."""
    return os.path.exists(f"/sys/class/net/{name}")


def is_ns_file(path: Path) -> bool:
    """True when path is a bind-mounted namespace (nsfs), not a stale plain file."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def netns_exists(ns: str) -> bool:
    return is_ns_file(netns_path(ns))


def netns_inode(ns: str) -> str | None:
    """The namespace id as /proc/PID/ns/net shows it, e.g. net:[4026532179]."""
    try:
        st = os.stat(netns_path(ns))
    except OSError:
        return None
    return f"net:[{st.st_ino}]"


def lab_netns(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def node_net_ok(spec: LabSpec, node: NodeSpec, host_links: dict[str, Link]) -> list[str]:
    """What is wrong with the node's network (empty list = fine)."""
    ns, veth = spec.netns(node), spec.veth(node)
    if not netns_exists(ns):
        return [f"network namespace {ns} is missing"]
    wrong = []
    hl = host_links.get(veth)
    if hl is None:
        wrong.append(f"veth {veth} is missing")
    elif hl.master != spec.bridge or not hl.up:
        wrong.append(f"veth {veth} is not up on {spec.bridge}")
    inner = links(["nsenter", f"--net={netns_path(ns)}", "--"])
    eth0 = inner.get("eth0")
    if eth0 is None or not eth0.up or f"{node.address}/{spec.prefixlen}" not in eth0.addresses:
        wrong.append(f"eth0 in {ns} lacks {node.address}/{spec.prefixlen}")
    return wrong


# ---- effects --------------------------------------------------------------------


def check_subnet_free(spec: LabSpec) -> None:
    conflicts = route_conflicts(routes(), spec.subnet, {spec.bridge})
    if conflicts:
        raise InputError(
            Problem(
                f"subnet {spec.subnet} collides with existing route(s): {', '.join(conflicts)}",
                key="--subnet",
                fix="pick a free private range with --subnet (e.g. 10.250.7.0/24), "
                "or remove the conflicting interface",
            )
        )


def ensure_bridge(spec: LabSpec, log) -> None:
    current = links().get(spec.bridge)
    want = f"{spec.host_address}/{spec.prefixlen}"
    if current and current.up and current.addresses == (want,):
        return
    if current is None:
        check_subnet_free(spec)
        proc.run(bridge_argvs(spec)[0])
    elif current.addresses and current.addresses != (want,):
        proc.run(["ip", "addr", "flush", "dev", spec.bridge])
    for argv in bridge_argvs(spec)[1:]:
        proc.run(argv)
    log(f"bridge {spec.bridge} {want}")


def ensure_forwarding(spec: LabSpec) -> None:
    # Global switch; host dockerd turns it on too, so it is left on at `lab down`.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    for table, chain, rule in iptables_rules(spec):
        if not proc.ok(iptables_check_argv(table, chain, rule)):
            proc.run(iptables_insert_argv(table, chain, rule))


def forwarding_problems(spec: LabSpec) -> list[str]:
    wrong = []
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        wrong.append("IP forwarding is off on the host")
    for table, chain, rule in iptables_rules(spec):
        if not proc.ok(iptables_check_argv(table, chain, rule)):
            wrong.append(f"iptables rule missing: -t {table} {chain} {' '.join(rule)}")
    return wrong


def remove_forwarding(spec: LabSpec) -> None:
    for table in ("filter", "nat"):
        cp = proc.run(["iptables", "-w", "-t", table, "-S"], check=False)
        for rule in tagged_rules(cp.stdout, spec.iptables_comment):
            proc.run(["iptables", "-w", "-t", table, "-D", *rule], check=False)


def lab_rules(spec: LabSpec) -> list[str]:
    """The iptables rules carrying the lab's comment, as `-t TABLE CHAIN ...` lines."""
    out = []
    for table in ("filter", "nat"):
        code, stdout, _ = proc.capture(["iptables", "-w", "-t", table, "-S"])
        if code == 0:
            out += [f"-t {table} {' '.join(r)}" for r in tagged_rules(stdout.decode(errors="replace"),
                                                                       spec.iptables_comment)]
    return out


def create_node_net(spec: LabSpec, node: NodeSpec) -> None:
    try:
        for argv in node_net_argvs(spec, node):
            proc.run(argv)
    except proc.CommandFailed as err:
        if "netns" in err.argv[:3] and "add" in err.argv[:3]:
            raise OrchError(
                f"could not create network namespace {spec.netns(node)}: {err.output.strip()}",
                fix="the lab needs network namespaces (a Linux kernel with CONFIG_NET_NS, "
                "root, and not inside an unprivileged container)",
            ) from None
        raise


def remove_node_net(spec: LabSpec, node_name: str, veth: str | None) -> None:
    ns = f"{spec.netns_prefix}{node_name}"
    if netns_path(ns).exists():
        proc.run(["ip", "netns", "delete", ns], check=False)
        if netns_path(ns).exists():  # a stale file without a mount behind it
            try:
                netns_path(ns).unlink()
            except OSError:
                pass
    if veth and link_exists(veth):
        proc.run(["ip", "link", "delete", veth], check=False)


def remove_bridge(spec: LabSpec) -> None:
    all_links = links()
    # Host-side veths whose netns is gone linger only if something still holds them.
    for name in all_links:
        if name.startswith(f"{spec.bridge}-"):
            proc.run(["ip", "link", "delete", name], check=False)
    if spec.bridge in all_links:
        proc.run(["ip", "link", "delete", spec.bridge], check=False)
