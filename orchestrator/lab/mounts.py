"""Mounts the lab leaves behind (overlay, nsfs, the engines' private binds) and safe removal.

A killed dockerd leaves overlay and bind mounts under its data/exec roots; deleting a
tree with something mounted inside could reach outside it, so every removal unmounts
first and then uses `rm --one-file-system`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.lab import proc


@dataclass(frozen=True)
class Mount:
    target: str
    fstype: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal
    out, i = [], 0
    while i < len(field):
        octal = field[i + 1 : i + 4]
        if field[i] == "\\" and len(octal) == 3 and octal.isdigit():
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mounts.append(Mount(target=_unescape(fields[4]), fstype=right.split()[0]))
    return mounts


def mounts() -> list[Mount]:
    with open("/proc/self/mountinfo") as fh:
        return parse_mountinfo(fh.read())


def under(all_mounts: list[Mount], roots: list[Path]) -> list[str]:
    """Mount targets at or below any of roots, deepest first (the order to unmount)."""
    prefixes = [str(r).rstrip("/") for r in roots]
    hits = {
        m.target
        for m in all_mounts
        if any(m.target == p or m.target.startswith(p + "/") for p in prefixes)
    }
    return sorted(hits, key=lambda t: (-t.count("/"), t))


def umount_argv(target: str) -> list[str]:
    # --lazy: a straggling process must not make `lab down` fail half-way
    return ["umount", "--lazy", target]


def unmount_under(roots: list[Path]) -> list[str]:
    done = []
    # Stacked mounts need several passes; stop when nothing changes.
    for _ in range(5):
        targets = under(mounts(), roots)
        if not targets:
            break
        for t in targets:
            if proc.ok(umount_argv(t)):
                done.append(t)
    return done


def remove_tree(path: Path) -> None:
    """Unmount everything inside path, then delete it without crossing filesystems."""
    if not os.path.lexists(path):
        return
    unmount_under([path])
    proc.run(["rm", "-rf", "--one-file-system", "--", str(path)])
