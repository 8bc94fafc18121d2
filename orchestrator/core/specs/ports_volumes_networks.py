"""Ports, volumes, networks and extra hosts of a Compose service as its ContainerSpec has
them, with the project-scoped network and volume definitions it uses. Pure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchestrator.core.specs.keys import ServiceChecks


class PortsVolumesNetworks(ServiceChecks):
    """Published ports, mounts (volume, bind, tmpfs), networks (aliases, priority) and
    extra_hosts; what cannot run on a remote node is refused or ignored."""

    def _ports(self) -> tuple[list[dict], list[tuple[str, int, str, int]]]:
        out, published = [], []
        for i, p in enumerate(self.s.ports):
            pub = None
            if p.published not in (None, ""):
                text = str(p.published)
                if "-" in text:
                    lo, _, hi = text.partition("-")
                    if lo != hi:
                        self.refuse(f"ports[{i}]", f"published port range {text} is not supported",
                                    "publish one host port per container port")
                        continue
                    text = lo
                pub = int(text)
            if p.mode and p.mode != "ingress":
                pass  # host mode is what orch does anyway
            entry: dict[str, Any] = {"target": p.target, "protocol": p.protocol or "tcp"}
            if pub is not None:
                entry["published"] = pub
                published.append((p.host_ip or "", pub, p.protocol or "tcp", p.target))
            if p.host_ip:
                entry["host_ip"] = p.host_ip
            out.append(entry)
        return out, published

    def _volumes(self, used: dict[str, dict]) -> list[dict]:
        out = []
        project_dir = str(Path(self.project.working_dir).resolve())
        for i, v in enumerate(self.s.volumes):
            key = f"volumes[{i}]"
            if v.type == "volume":
                entry = {"type": "volume", "target": v.target, "read_only": bool(v.read_only)}
                if v.source:
                    decl = self.project.volumes.get(v.source)
                    if decl is None:
                        self.refuse(key, f"volume {v.source} is not declared", "declare it under top-level volumes:")
                        continue
                    entry["source"] = v.source
                    used[v.source] = _volume_def(self.project.name, v.source, decl)
                if v.nocopy:
                    self.ignore("volumes.nocopy")
                if v.subpath:
                    self.refuse(key, "volume subpath is not supported", "mount the whole volume")
                out.append(entry)
            elif v.type == "bind":
                src = v.source or ""
                if src == project_dir or src.startswith(project_dir + os.sep):
                    self.refuse(key, f"bind mount of {src} (a path on this machine) cannot work on remote nodes",
                                "ship files with configs: (or secrets:), or bind an absolute path that exists "
                                "on every node")
                    continue
                if v.propagation:
                    self.ignore("volumes.bind.propagation")
                if v.selinux:
                    self.ignore("volumes.bind.selinux")
                out.append({"type": "bind", "source": src, "target": v.target, "read_only": bool(v.read_only)})
            elif v.type == "tmpfs":
                if v.tmpfs_size or v.tmpfs_mode:
                    self.ignore("volumes.tmpfs.size")
                out.append({"type": "tmpfs", "target": v.target})
            else:
                self.refuse(key, f"volume type {v.type} is not supported", "use volume, bind or tmpfs")
        for item in _as_list(self.s.other.get("tmpfs")):
            path, _, opts = str(item).partition(":")
            if opts:
                self.ignore("tmpfs.options")
            if path and path not in {m["target"] for m in out}:
                out.append({"type": "tmpfs", "target": path})
        return out

    def _networks(self, used: dict[str, dict]) -> list[dict]:
        entries = []
        for name, cfg in self.s.networks.items():
            decl = self.project.networks.get(name)
            if decl is None:
                self.refuse("networks", f"network {name} is not declared", "declare it under top-level networks:")
                continue
            net = _network_def(self.project.name, name, decl)
            if net is None:
                self.refuse("networks", f"network {name}: driver {decl.driver} is not supported",
                            "use the bridge driver (each node has its own project networks)")
                continue
            for attr in ("driver_opts", "ipam", "enable_ipv6"):
                if getattr(decl, attr):
                    self.ignore(f"networks.{attr}")
            used[name] = net
            aliases, priority = [], 0
            if cfg is not None:
                aliases = list(cfg.aliases)
                priority = cfg.priority or 0
                if cfg.ipv4_address:
                    self.ignore("networks.ipv4_address")
                if cfg.ipv6_address:
                    self.ignore("networks.ipv6_address")
                for k in cfg.other:
                    self.ignore(f"networks.{k}")
            entries.append((-priority, name, {"name": name, "aliases": aliases}))
        for link in self.s.links:
            if ":" in link:
                self.ignore("links.alias")
        return [e for _, _, e in sorted(entries, key=lambda t: (t[0], t[1]))]

    def _host(self, entry: str) -> str:
        host, _, ip = entry.partition("=")
        return f"{host}:{ip}"


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _network_def(project: str, name: str, decl: Any) -> dict | None:
    driver = decl.driver or "bridge"
    if driver != "bridge" and not decl.external:
        return None
    out: dict[str, Any] = {}
    if decl.external:
        out["external"] = True
        if decl.name and decl.name != name:
            out["name"] = decl.name
        return out
    if decl.name and decl.name != f"{project}_{name}":
        out["name"] = decl.name
    out["driver"] = driver
    if decl.internal:
        out["internal"] = True
    if decl.attachable:
        out["attachable"] = True
    if decl.labels:
        out["labels"] = dict(decl.labels)
    return out


def _volume_def(project: str, name: str, decl: Any) -> dict:
    out: dict[str, Any] = {}
    if decl.external:
        out["external"] = True
        if decl.name and decl.name != name:
            out["name"] = decl.name
        return out
    if decl.name and decl.name != f"{project}_{name}":
        out["name"] = decl.name
    if decl.driver:
        out["driver"] = decl.driver
    if decl.driver_opts:
        out["driver_opts"] = dict(decl.driver_opts)
    if decl.labels:
        out["labels"] = dict(decl.labels)
    return out
