"""The cgroups node engines put containers in (cgroup-parent /LAB/NODE, cgroupfs driver).

They outlive a killed engine; `lab down` kills what is left in them and removes them.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.lab import mounts, proc


def hierarchies(all_mounts: list[mounts.Mount]) -> list[Path]:
    """Mount points of every cgroup (v1) and cgroup2 hierarchy."""
    return sorted({Path(m.target) for m in all_mounts if m.fstype in ("cgroup", "cgroup2")})


def lab_dirs(parent: str, all_mounts: list[mounts.Mount]) -> list[Path]:
    """Existing cgroup dirs for `parent` (e.g. /orch-lab/dev-1) in every hierarchy."""
    rel = parent.strip("/")
    return [h / rel for h in hierarchies(all_mounts) if (h / rel).is_dir()]


def pids_in(dirs: list[Path]) -> set[int]:
    pids: set[int] = set()
    for d in dirs:
        for root, _subdirs, files in os.walk(d):
            if "cgroup.procs" in files:
                try:
                    text = Path(root, "cgroup.procs").read_text()
                except OSError:
                    continue
                pids.update(int(x) for x in text.split() if x.isdigit())
    return pids


def remove(parent: str) -> list[Path]:
    """Kill anything still in the parent's cgroups, then rmdir them bottom-up."""
    dirs = lab_dirs(parent, mounts.mounts())
    leftovers = pids_in(dirs)
    if leftovers:
        proc.stop(leftovers, timeout=5)
    left = []
    for d in dirs:
        for root, _subdirs, _files in sorted(os.walk(d, topdown=False), key=lambda w: -len(w[0])):
            try:
                os.rmdir(root)
            except OSError:
                if Path(root).exists():
                    left.append(Path(root))
    return left
