"""The mesh's firewall rules on a node, as data (iptables-restore text), and applying them.

Three chains per environment's interface IF, rebuilt whole on every change (declaring a
chain in `iptables-restore --noflush` input flushes just that chain, atomically):

  filter OM-IF     (jumped to first from DOCKER-USER, which Docker evaluates before its
                    own FORWARD rules)
      replies in either direction pass;
      from IF into the bridge of network k only from network k's subnets on other nodes
      (a bit mask over the mesh range: agent.wire.mesh.same_network_match); published
      ports (DNAT) are left to Docker; anything else new routed to a container address
      from elsewhere (the node's LAN) is dropped, since mesh networks use Docker's gateway
      mode `nat-unprotected` (Docker 28 would otherwise block the mesh's direct routing);
      an `internal` network's bridge reaches only its own network on other nodes;
      anything else from IF is dropped (another network, another project, not ours).
  filter OMI-IF    (from INPUT) an internal network reaches only the node's DNS; the
                    record exchange (the daemon's port) and the certificate daemon's
                    port (CERTD_PORT) only from the link.
  nat    OMN-IF    (first in POSTROUTING) mesh -> mesh is not masqueraded, so the other
                    node sees the real source (the firewall above needs it); mesh ->
                    elsewhere is masqueraded (mesh networks are made with Docker's own
                    masquerading off, as Docker would add its rule above ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from agent.mesh import procs
from agent.wire.mesh import RECORDS_PORT, same_network_match
from agent.wire.tls import CERTD_PORT
from agent.wire.protocol import AgentError

TAG = ["-m", "comment", "--comment", "orch-mesh"]


@dataclass(frozen=True)
class LocalNet:
    bridge: str  # the Docker bridge's interface (br-<id12>)
    k: int  # the network's mesh slot
    internal: bool = False


def chains(iface: str) -> Tuple[str, str, str]:
    return "OM-" + iface, "OMI-" + iface, "OMN-" + iface


def restore_text(iface: str, cidr: str, block: str, address: str, nets: List[LocalNet]) -> str:
    fwd, inp, nat = chains(iface)
    f = ["*filter", ":%s - [0:0]" % fwd, ":%s - [0:0]" % inp]
    f.append("-A %s -i %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % (fwd, iface))
    f.append("-A %s -o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" % (fwd, iface))
    for n in sorted(nets, key=lambda n: (n.k, n.bridge)):
        same = same_network_match(cidr, n.k)
        # published ports (DNAT from the node's address) are Docker's to decide
        f.append("-A %s -o %s -m conntrack --ctstate DNAT -j RETURN" % (fwd, n.bridge))
        f.append("-A %s -i %s -o %s -s %s -j ACCEPT" % (fwd, iface, n.bridge, same))
        # anything else new routed straight to a container address (from the node's LAN,
        # say) is dropped, as Docker >= 28 does for `nat` networks
        f.append("-A %s -o %s ! -i %s -m conntrack --ctstate NEW -j DROP" % (fwd, n.bridge, n.bridge))
        if n.internal:
            f.append("-A %s -i %s -o %s -d %s -j ACCEPT" % (fwd, n.bridge, iface, same))
            f.append("-A %s -i %s ! -o %s -j DROP" % (fwd, n.bridge, n.bridge))
            for proto in ("udp", "tcp"):
                f.append("-A %s -i %s -d %s -p %s --dport 53 -j ACCEPT" % (inp, n.bridge, address, proto))
            f.append("-A %s -i %s -j DROP" % (inp, n.bridge))
    f.append("-A %s -i %s -j DROP" % (fwd, iface))
    # the record exchange is for the peers (through the link), not for containers
    f.append("-A %s -d %s -p tcp --dport %d ! -i %s -j DROP" % (inp, address, RECORDS_PORT, iface))
    # so is the certificate daemon's (agent.certs.daemon: followers pull keys from it)
    f.append("-A %s -d %s -p tcp --dport %d ! -i %s -j DROP" % (inp, address, CERTD_PORT, iface))
    f.append("COMMIT")
    n_ = ["*nat", ":%s - [0:0]" % nat,
          "-A %s -s %s -d %s -j RETURN" % (nat, cidr, cidr),
          "-A %s -s %s ! -o br-+ -j MASQUERADE" % (nat, block),
          "COMMIT"]
    return "\n".join(f + n_) + "\n"


def jump_argvs(iface: str) -> List[Tuple[List[str], List[str]]]:
    """(check argv, insert argv) per jump into our chains."""
    fwd, inp, nat = chains(iface)
    out = []
    for table, parent, chain in (("filter", "DOCKER-USER", fwd), ("filter", "INPUT", inp), ("nat", "POSTROUTING", nat)):
        rule = [parent, "-j", chain] + TAG
        out.append((["iptables", "-w", "-t", table, "-C"] + rule, ["iptables", "-w", "-t", table, "-I"] + rule))
    return out


def apply(iface: str, text: str) -> None:
    ensure_docker_user()
    cp = procs.run(["iptables-restore", "-w", "--noflush"], input_text=text)
    if cp.returncode != 0:
        raise AgentError("mesh", "iptables-restore failed: %s" % cp.stdout.strip()[:400],
                         {"fix": "apt-get install iptables; check `iptables -S` on the node"})
    for check, insert in jump_argvs(iface):
        if procs.run(check).returncode != 0:
            cp = procs.run(insert)
            if cp.returncode != 0:
                raise AgentError("mesh", "`%s` failed: %s" % (" ".join(insert), cp.stdout.strip()[:300]))


def ensure_docker_user() -> None:
    # Docker makes DOCKER-USER when it starts; made here too so the order does not matter.
    if procs.run(["iptables", "-w", "-n", "-L", "DOCKER-USER"]).returncode != 0:
        procs.run(["iptables", "-w", "-N", "DOCKER-USER"])
        procs.run(["iptables", "-w", "-I", "FORWARD", "-j", "DOCKER-USER"])


def remove(iface: str) -> None:
    for check, insert in jump_argvs(iface):
        delete = list(insert)
        delete[delete.index("-I")] = "-D"
        while procs.run(check).returncode == 0:
            if procs.run(delete).returncode != 0:
                break
    fwd, inp, nat = chains(iface)
    for table, chain in (("filter", fwd), ("filter", inp), ("nat", nat)):
        procs.run(["iptables", "-w", "-t", table, "-F", chain])
        procs.run(["iptables", "-w", "-t", table, "-X", chain])
