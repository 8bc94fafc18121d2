"""`orch lab down`: remove everything the lab created, and nothing else.

Works from the saved spec, and without it (state deleted by hand) from the names the
lab derives from its own name: its netns prefix, bridge, iptables comment, cgroup
parent, state and run directories. Every step runs even when an earlier one failed (a
node that would not stop does not keep the bridge, the iptables rules or the state
behind); the failures are reported together at the end, after checking that nothing
is left. Running it again finishes what is left; on a lab that is gone it does nothing.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from orchestrator.errors import OrchError
from orchestrator.lab import acme, cgroups, dns, engine, images, light, mounts, netns, nodes, proc, registry, state
from orchestrator.lab.model import DEFAULT_SUBNET, LabPaths, LabSpec, validate_name


@dataclass(frozen=True)
class Leftovers:
    processes: list[str]
    netns: list[str]
    links: list[str]
    mounts: list[str]
    paths: list[str]
    rules: list[str] = field(default_factory=list)  # iptables rules with the lab's comment

    def any(self) -> bool:
        return any([self.processes, self.netns, self.links, self.mounts, self.paths, self.rules])

    def describe(self) -> str:
        parts = []
        for label, items in (
            ("processes", self.processes),
            ("network namespaces", self.netns),
            ("interfaces", self.links),
            ("mounts", self.mounts),
            ("paths", self.paths),
            ("iptables rules", self.rules),
        ):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        return "; ".join(parts)


def node_names(spec: LabSpec) -> list[str]:
    """Nodes in the spec plus any the machine still has (netns, state, run dirs)."""
    p = spec.paths
    names = {n.name for n in spec.nodes}
    names.update(ns[len(spec.netns_prefix) :] for ns in netns.lab_netns(spec.netns_prefix))
    for d in (p.state / "nodes", p.run):
        if d.is_dir():
            names.update(e.name for e in d.iterdir() if e.is_dir() and e.name not in ("ns",))
    return sorted(names)


def lab_processes(spec: LabSpec, procs: list[proc.Proc]) -> list[proc.Proc]:
    """Processes whose argv names one of the lab's own files or directories."""
    p = spec.paths
    roots = (str(p.state) + "/", str(p.run) + "/")
    out = []
    for pr in procs:
        if any(a.startswith(roots) or a in (str(p.state), str(p.run)) for a in pr.argv):
            out.append(pr)
        elif any(a.startswith(("--config-file=", "--net=")) and a.split("=", 1)[1].startswith(roots) for a in pr.argv):
            out.append(pr)
    return out


TEARDOWN_WORKERS = 16  # nodes torn down at once (each mostly waits for its engine to stop)


def down(name: str, log=print) -> Leftovers:
    from orchestrator.lab.up import require_root

    require_root("down")
    name = validate_name(name)
    paths = LabPaths.for_name(name)
    failed: list[str] = []

    def step(what: str, fn, *args) -> None:
        """One part of the teardown; a failure is noted and the next part runs."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - reported with the leftovers at the end
            text = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            failed.append(f"{what}: {text.splitlines()[0] if text else type(exc).__name__}")
            log(f"{what}: failed ({failed[-1]}); going on")

    with state.locked(paths, log):
        saved = state.load_spec(paths)
        subnet = saved.subnet if saved else _subnet_from_bridge(name)
        # Without a known subnet the registry address is unknown: skip what needs it
        # rather than guess (a guess could name another lab's registry).
        spec = saved or LabSpec(name=name, subnet=subnet or DEFAULT_SUBNET, nodes=())
        names = node_names(spec)
        for node_name in names:
            log(f"{node_name}: removing")
        if names:  # in parallel: each waits for its engine to stop its containers
            with ThreadPoolExecutor(max_workers=min(len(names), TEARDOWN_WORKERS)) as pool:
                list(pool.map(lambda n: step(f"node {n}", nodes.teardown, spec, n), names))

        procs = proc.process_table()
        for mirror in (False, True):
            step("registry" + (" mirror" if mirror else ""), proc.stop,
                 [r.pid for r in registry.find(procs, spec, mirror=mirror)], 10)
        step("fake engine", light.stop, spec, procs)
        step("light nodes' agent data", light.remove_agent_data, spec, names)
        step("acme", acme.stop, spec, procs)
        step("dns", dns.stop, spec, procs)
        # Anything else still running from the lab's directories (e.g. a stray daemon).
        me = os.getpid()
        step("processes", lambda: proc.stop(
            [pr.pid for pr in lab_processes(spec, proc.process_table()) if pr.pid != me], timeout=5))

        step("iptables rules", netns.remove_forwarding, spec)
        step("bridge", netns.remove_bridge, spec)
        step("registry CA", registry.remove_ca, spec)
        if subnet and engine.ping(engine.HOST_SOCKET):
            step("registry tags", images.remove_registry_tags, spec.registry)
        step("cgroups", cgroups.remove, spec.cgroup_parent)
        step("run directory", mounts.remove_tree, paths.run)
        step("state directory", mounts.remove_tree, paths.state)
        log(f"lab {name} removed" if not failed else f"lab {name}: {len(failed)} step(s) failed")
    paths.lock.unlink(missing_ok=True)
    left = leftovers(spec)
    if left.any() or failed:
        what = "; ".join(failed) + ("; " if failed and left.any() else "") + (
            f"left: {left.describe()}" if left.any() else "nothing left behind")
        raise OrchError(
            f"`orch lab down` could not remove everything of lab {name}: {what}.",
            fix="see what holds them (ps, ip link, iptables -S, findmnt), then run `orch lab down` again",
        )
    return left


def _subnet_from_bridge(name: str) -> str | None:
    probe = LabSpec(name=name, subnet=DEFAULT_SUBNET, nodes=())
    link = netns.links().get(probe.bridge)
    if link and link.addresses:
        import ipaddress

        return str(ipaddress.IPv4Interface(link.addresses[0]).network)
    return None


def leftovers(spec: LabSpec) -> Leftovers:
    p = spec.paths
    procs = proc.process_table()
    found = lab_processes(spec, procs)
    found += registry.find(procs, spec, mirror=False) + registry.find(procs, spec, mirror=True)
    found += acme.find(procs, spec) + dns.find(procs, spec)
    ns = netns.lab_netns(spec.netns_prefix)
    inodes = {netns.netns_inode(n) for n in ns} - {None}
    found += [pr for pr in procs if pr.netns in inodes]
    links = [n for n in netns.links() if n == spec.bridge or n.startswith(f"{spec.bridge}-")]
    mnts = mounts.under(mounts.mounts(), [p.state, p.run]) + [
        m.target for m in mounts.mounts() if m.target.startswith(f"/run/netns/{spec.netns_prefix}")
    ]
    paths = [str(x) for x in (p.state, p.run) if x.exists()]
    paths += [str(d) for d in registry.cert_dirs(spec) if registry.owned_by(d, spec.name)]
    paths += [str(d) for d in cgroups.lab_dirs(spec.cgroup_parent, mounts.mounts())]
    return Leftovers(
        processes=sorted({f"{pr.pid} {' '.join(pr.argv)[:80]}" for pr in found}),
        netns=ns,
        links=links,
        mounts=mnts,
        paths=paths,
        rules=netns.lab_rules(spec),
    )
