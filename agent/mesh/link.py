"""The WireGuard link of one environment on this node: keys, the interface (the kernel's
if it has WireGuard, else wireguard-go), its peers and address. Commands are built as
data (argv lists, the `wg syncconf` text) and run by `ensure`/`remove`.

The private key is made here (`wg genkey`) and stays in a 0600 file: it is never sent to
the controller, printed or put on a command line (`wg syncconf` reads it from a file).
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional

from agent.mesh import procs
from agent.mesh.paths import MeshPaths, write_atomic
from agent.wire.mesh import MeshConfig, node_block
from agent.wire.protocol import AgentError

NOT_READY = "mesh"  # AgentError kind for a node that lacks what the mesh needs
FIX_WG = ("install WireGuard: Debian: apt-get install wireguard-tools, and wireguard-go if the kernel "
          "has no wireguard module (modprobe wireguard fails)")


def tools() -> Dict[str, Optional[str]]:
    return {"wg": procs.which("wg"), "wireguard-go": procs.which("wireguard-go"), "ip": procs.which("ip")}


def kernel_module() -> bool:
    return os.path.isdir("/sys/module/wireguard")


def problems() -> List[str]:
    """What this node lacks for the mesh, each with its fix ('' when nothing)."""
    t = tools()
    out = []
    if not t["ip"]:
        out.append("no `ip` program: apt-get install iproute2")
    if not t["wg"]:
        out.append("no `wg` program: apt-get install wireguard-tools")
    if not kernel_module() and not t["wireguard-go"]:
        out.append("no wireguard kernel module and no wireguard-go: modprobe wireguard (Linux >= 5.6), "
                   "or apt-get install wireguard-go")
    return out


def ensure_key(paths: MeshPaths) -> str:
    """This node's public key, making the key pair on first use."""
    wg = procs.which("wg")
    if not wg:
        raise AgentError(NOT_READY, "this node has no `wg` program", {"fix": FIX_WG})
    if not os.path.exists(paths.private_key):
        cp = procs.run([wg, "genkey"])
        if cp.returncode != 0:
            raise AgentError(NOT_READY, "wg genkey failed: %s" % cp.stdout.strip()[:200], {"fix": FIX_WG})
        write_atomic(paths.private_key, cp.stdout.strip() + "\n", 0o600)
    return public_key(paths) or ""


def public_key(paths: MeshPaths) -> Optional[str]:
    wg = procs.which("wg")
    if not wg or not os.path.exists(paths.private_key):
        return None
    with open(paths.private_key) as fh:
        cp = procs.run([wg, "pubkey"], input_text=fh.read())
    return cp.stdout.strip() if cp.returncode == 0 else None


# Seconds between keepalives to a peer (they keep NAT mappings open and let the peer see a
# dead link early), different at the two ends of a link: the node with the lower slot sends
# every KEEPALIVE seconds, the other every KEEPALIVE_OTHER. With one interval at both ends,
# two nodes whose handshake initiations crossed (both configured at once, as mesh_apply
# does) stay in step: each one's keepalive timer restarts on the other's packet, so they
# initiate together again and cross again, every 5 s, for minutes (measured with
# wireguard-go in the lab: 155 and 385 s). With different intervals the lower end
# initiates alone on its next keepalive: a crossing costs one interval.
KEEPALIVE = 5
KEEPALIVE_OTHER = 7


def keepalive(cfg: MeshConfig, peer_slot: int) -> int:
    return KEEPALIVE if cfg.slot < peer_slot else KEEPALIVE_OTHER


def conf_text(cfg: MeshConfig, private_key: str) -> str:
    """`wg syncconf` input: the whole configuration, so a removed node is dropped; syncconf
    changes only what differs, so the sessions of unchanged peers go on undisturbed (setconf
    would reset them all: a request in flight between two nodes could fail)."""
    lines = ["[Interface]", "PrivateKey = %s" % private_key, "ListenPort = %d" % cfg.port, ""]
    for p in cfg.peers:
        lines += ["[Peer]", "PublicKey = %s" % p.public_key, "Endpoint = %s" % p.endpoint,
                  "AllowedIPs = %s" % node_block(cfg.cidr, p.slot),
                  "PersistentKeepalive = %d" % keepalive(cfg, p.slot), ""]
    return "\n".join(lines)


def address_argvs(cfg: MeshConfig) -> List[List[str]]:
    iface = cfg.interface
    prefix = cfg.cidr.split("/")[1]
    return [
        ["ip", "address", "replace", "%s/%s" % (cfg.address, prefix), "dev", iface],
        ["ip", "link", "set", iface, "mtu", str(cfg.mtu), "up"],
    ]


def exists(iface: str) -> bool:
    # Netlink (ip), not /sys/class/net: /sys shows the network namespace that mounted it,
    # which is not this one on the lab's nodes (nsenter --net) or in a container.
    return procs.run(["ip", "link", "show", "dev", iface], timeout=10).returncode == 0


def _create(iface: str, paths: MeshPaths) -> str:
    """Make the interface; returns 'kernel' or 'wireguard-go'."""
    cp = procs.run(["ip", "link", "add", iface, "type", "wireguard"])
    if cp.returncode == 0:
        return "kernel"
    wggo = procs.which("wireguard-go")
    if not wggo:
        raise AgentError(NOT_READY, "cannot create WireGuard interface %s: the kernel has no wireguard "
                         "module (%s) and wireguard-go is not installed" % (iface, cp.stdout.strip()[:120]),
                         {"fix": FIX_WG})
    env = dict(os.environ, LOG_LEVEL="error")
    env.pop("WG_PROCESS_FOREGROUND", None)
    with open(paths.log, "ab") as log:
        import subprocess

        rc = subprocess.run([wggo, iface], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, timeout=20).returncode
    deadline = time.monotonic() + 5
    while not exists(iface) and time.monotonic() < deadline:
        time.sleep(0.05)
    if rc != 0 or not exists(iface):
        raise AgentError(NOT_READY, "wireguard-go could not create %s (exit %d); see %s" % (iface, rc, paths.log),
                         {"fix": "check that /dev/net/tun exists and the agent runs as root"})
    return "wireguard-go"


def overlapping(cfg: MeshConfig, addr_lines: str) -> List[str]:
    """Other interfaces whose addresses fall in cfg's range (`ip -o -4 addr show` output):
    two environments' meshes on one node must not share a range."""
    import ipaddress

    net = ipaddress.IPv4Network(cfg.cidr)
    own = node_block(cfg.cidr, cfg.slot)  # this node's mesh bridges live there
    out = []
    for line in addr_lines.splitlines():
        f = line.split()
        if len(f) < 4 or f[2] != "inet" or f[1] == cfg.interface:
            continue
        try:
            iface_net = ipaddress.IPv4Interface(f[3]).network
        except ValueError:
            continue
        if iface_net.overlaps(net) and not iface_net.subnet_of(own):
            out.append("%s (%s)" % (f[1], f[3]))
    return out


def ensure(cfg: MeshConfig, paths: MeshPaths) -> str:
    """Bring the link to cfg; returns how it runs ('kernel' / 'wireguard-go')."""
    iface = cfg.interface
    clash = overlapping(cfg, procs.run(["ip", "-o", "-4", "addr", "show"]).stdout)
    if clash:
        raise AgentError(NOT_READY, "the mesh range %s of environment %s overlaps %s on this node"
                         % (cfg.cidr, cfg.env, ", ".join(clash)),
                         {"fix": "give the environment another mesh.cidr in its environment file (each "
                                 "environment sharing a node needs its own range)"})
    key = ensure_key(paths)
    if not key:
        raise AgentError(NOT_READY, "could not read this node's WireGuard key", {"fix": FIX_WG})
    kind = "kernel" if exists(iface) and not procs.find(["wireguard-go", iface]) else "wireguard-go"
    if not exists(iface):
        kind = _create(iface, paths)
    with open(paths.private_key) as fh:
        private = fh.read().strip()
    write_atomic(paths.wg_conf, conf_text(cfg, private), 0o600)
    for argv in [["wg", "syncconf", iface, paths.wg_conf]] + address_argvs(cfg):
        cp = procs.run(argv)
        if cp.returncode != 0:
            raise AgentError(NOT_READY, "`%s` failed: %s" % (" ".join(argv[:4]), cp.stdout.strip()[:300]),
                             {"fix": FIX_WG})
    return kind


def remove(iface: str) -> None:
    if exists(iface):
        procs.run(["ip", "link", "delete", iface])
    pids = procs.find(["wireguard-go", iface])
    if pids:
        procs.stop(pids)


def parse_dump(text: str, now: float) -> List[Dict[str, Any]]:
    """`wg show IFACE dump`: one line for the interface, then one per peer."""
    peers = []
    for line in text.splitlines()[1:]:
        f = line.split("\t")
        if len(f) < 8:
            continue
        handshake = int(f[4]) if f[4].isdigit() else 0
        peers.append({"public_key": f[0], "endpoint": "" if f[2] == "(none)" else f[2],
                      "allowed_ips": f[3], "handshake_age": round(now - handshake, 1) if handshake else None,
                      "rx_bytes": int(f[5]) if f[5].isdigit() else 0, "tx_bytes": int(f[6]) if f[6].isdigit() else 0})
    return peers


def show(iface: str) -> List[Dict[str, Any]]:
    if not exists(iface) or not procs.which("wg"):
        return []
    cp = procs.run(["wg", "show", iface, "dump"])
    return parse_dump(cp.stdout, time.time()) if cp.returncode == 0 else []

