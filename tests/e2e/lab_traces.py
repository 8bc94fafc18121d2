"""What a lab leaves on the machine, found without orch's code; and the shared lab's
bridge and namespaces, to show a test of another lab leaves them alone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _traces(name: str, bridge: str, extra: tuple = ()) -> dict:
    """Everything of lab `name` this machine still has, found without orch's code
    (`extra`: more paths the lab must not leave behind)."""
    state, run = Path("/var/lib") / name, Path("/run") / name
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(state) + "/" in cmd or str(run) + "/" in cmd:
            procs.append(f"{pid} {cmd[:100]}")
    netns = [n for n in os.listdir("/run/netns") if n.startswith(name + ".")] if Path("/run/netns").exists() else []
    links = [ln for ln in os.listdir("/sys/class/net") if ln == bridge or ln.startswith(bridge + "-")]
    mounts = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if f"/{name}" in ln or f"{name}." in ln]
    rules = [ln for t in ("filter", "nat")
             for ln in subprocess.check_output(["iptables", "-w", "-t", t, "-S"], text=True).splitlines()
             if f"orch-lab:{name}" in ln]
    paths = [str(p) for p in (state, run, Path(f"/run/{name}.lock"), *extra) if p.exists()]
    paths += [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{name}")] + [str(p) for p in Path("/sys/fs/cgroup").glob(name)]
    return {k: v for k, v in dict(procs=procs, netns=netns, links=links, mounts=mounts, rules=rules,
                                  paths=paths).items() if v}


def _default_lab() -> tuple:
    """The shared lab's bridge and namespaces, to show this test leaves them alone."""
    return (Path("/sys/class/net/orchlab0").exists(),
            sorted(n for n in os.listdir("/run/netns") if n.startswith("orch-lab.")) if Path("/run/netns").exists()
            else [])
