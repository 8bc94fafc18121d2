"""An in-memory stand-in for agent.engine.Engine, for unit tests (here and in the
controller's tests): same methods, no Docker. Behaviour per image reference:

  "run" (default)   starts and keeps running; healthy at once if it has a healthcheck
  "exit:N"          exits with code N right after start
  "unhealthy"       runs, but its healthcheck fails (probe output "probe failed")
  "unhealthy-quiet" runs, but its healthcheck fails with no output (exit code 1)
  "starting"        runs, health stays "starting" forever
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Optional, Tuple

from agent.engine import ContainerInfo
from agent.wire.protocol import CONFLICT, ENGINE, NOT_FOUND, PULL, AgentError

NS = 1_000_000_000


class FakeEngine:
    def __init__(self, images: Optional[List[str]] = None, behaviours: Optional[Dict[str, str]] = None,
                 registry: Optional[List[str]] = None):
        self.images = set(images or [])
        self.registry = set(registry or [])  # references a pull can find
        self.behaviours = dict(behaviours or {})
        self.records: Dict[str, Dict[str, Any]] = {}
        self.nets: Dict[str, Dict[str, Any]] = {}
        self.vols: Dict[str, Dict[str, Any]] = {}
        self.calls: List[Tuple[str, Any]] = []
        self.pull_auth: List[Optional[Dict[str, str]]] = []
        self._ids = itertools.count(1)
        self.id = "FAKE:ENGINE:1"
        self.fail_on: Dict[str, Callable[..., None]] = {}  # method -> hook raising to simulate faults
        self.image_meta: Dict[str, Dict[str, Any]] = {}  # image id -> {id, repo_digests, repo_tags, labels, size}
        self.stats_docs: Dict[str, Dict[str, Any]] = {}  # container name -> the stats document stats() gives

    def _hook(self, method: str, *a: Any) -> None:
        self.calls.append((method, a))
        if method in self.fail_on:
            self.fail_on[method](*a)

    # engine
    def info(self) -> Dict[str, Any]:
        return {"id": self.id, "name": "fake", "version": "0.0-fake", "api_version": "1.41", "os": "fake",
                "arch": "x86_64", "kernel": "", "ncpu": 1, "memory": 0, "root_dir": "", "containers": len(self.records)}

    def engine_id(self) -> str:
        return self.id

    # containers
    def _info(self, rec: Dict[str, Any]) -> ContainerInfo:
        return ContainerInfo(**{k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                                for k, v in rec["info"].items()})

    def containers(self, label_filters: List[str]) -> List[ContainerInfo]:
        def match(labels: Dict[str, str]) -> bool:
            for f in label_filters:
                k, eq, v = f.partition("=")
                if k not in labels or (eq and labels[k] != v):
                    return False
            return True

        out = [self._info(r) for r in self.records.values() if match(r["info"]["labels"])]
        return sorted(out, key=lambda c: (c.project, c.service, c.replica, c.name))

    def listed(self, label_filters: List[str]) -> List[Tuple[str, Dict[str, str]]]:
        return sorted((c.name, dict(c.labels)) for c in self.containers(label_filters))

    def _find(self, ref: str) -> Optional[Dict[str, Any]]:
        for rec in self.records.values():
            if rec["info"]["id"] == ref or rec["info"]["name"] == ref or (len(ref) >= 12 and rec["info"]["id"].startswith(ref)):
                return rec
        return None

    def container(self, ref: str) -> Optional[ContainerInfo]:
        rec = self._find(ref)
        return None if rec is None else self._info(rec)

    def inspect(self, ref: str) -> Optional[Dict[str, Any]]:
        """An Engine API inspect document made from what the container was created with."""
        rec = self._find(ref)
        if rec is None:
            return None
        info, body = rec["info"], rec.get("body") or {}
        return {"Id": info["id"], "Name": "/" + info["name"], "Image": info.get("image_id", ""),
                "State": {"Status": info["state"], "ExitCode": info.get("exit_code", 0),
                          "StartedAt": info.get("started_at", "")},
                "Config": {"Image": info["image"], "Labels": dict(info["labels"]), "Env": list(body.get("Env") or []),
                           "Cmd": list(body.get("Cmd") or []), "Entrypoint": body.get("Entrypoint")},
                "HostConfig": dict(body.get("HostConfig") or {}),
                "NetworkSettings": {"Networks": {n: {} for n in info.get("networks") or []}}}

    def top(self, ref: str) -> Optional[Dict[str, Any]]:
        rec = self._find(ref)
        if rec is None:
            return None
        if rec["info"]["state"] != "running":
            raise AgentError(ENGINE, "top of container %s: container is not running" % ref[:12])
        cmd = " ".join(rec.get("body", {}).get("Cmd") or []) or "sh"
        return {"Titles": ["UID", "PID", "PPID", "CMD"], "Processes": [["root", "101", "100", cmd]]}

    def stats(self, ref: str) -> Optional[Dict[str, Any]]:
        """One stats document: self.stats_docs[name] if set, else a fixed one (cgroup v2:
        25 % of one of two CPUs, 10 MiB of 100 MiB with 2 MiB inactive cache, 1000/2000
        bytes in/out on eth0, 4096 read / 8192 written, 3 pids)."""
        self._hook("stats", ref)
        rec = self._find(ref)
        if rec is None:
            return None
        if rec["info"]["name"] in self.stats_docs:
            return self.stats_docs[rec["info"]["name"]]
        return {"cpu_stats": {"cpu_usage": {"total_usage": 1_500_000_000}, "system_cpu_usage": 20_000_000_000,
                              "online_cpus": 2},
                "precpu_stats": {"cpu_usage": {"total_usage": 1_000_000_000}, "system_cpu_usage": 16_000_000_000},
                "memory_stats": {"usage": 12 * 2 ** 20, "limit": 100 * 2 ** 20, "stats": {"inactive_file": 2 * 2 ** 20}},
                "networks": {"eth0": {"rx_bytes": 1000, "tx_bytes": 2000}},
                "blkio_stats": {"io_service_bytes_recursive": [{"major": 8, "minor": 0, "op": "read", "value": 4096},
                                                               {"major": 8, "minor": 0, "op": "write", "value": 8192}]},
                "pids_stats": {"current": 3}}

    def add_foreign(self, name: str, labels: Optional[Dict[str, str]] = None, state: str = "running") -> str:
        """A container orch did not make (for 'never touch others' tests)."""
        cid = _new_id(next(self._ids))
        self.records[cid] = {"body": {}, "info": dict(
            id=cid, name=name, labels=dict(labels or {}), image="other", image_id="sha256:other", state=state)}
        return cid

    def create(self, name: str, body: Dict[str, Any], extra_networks: List[Tuple[str, List[str]]]) -> str:
        self._hook("create", name, body, extra_networks)
        if self._find(name) is not None:
            raise AgentError(ENGINE, "create container %s: Conflict. The container name is already in use" % name)
        if body["Image"] not in self.images:
            raise AgentError(NOT_FOUND, "create container %s: No such image: %s" % (name, body["Image"]))
        nets = []
        if body.get("HostConfig", {}).get("NetworkMode"):
            nets.append(body["HostConfig"]["NetworkMode"])
        nets += [n for n, _ in extra_networks]
        for n in nets:
            if n not in self.nets:
                raise AgentError(NOT_FOUND, "network %s not found" % n)
        hc = body.get("Healthcheck")
        healthcheck = None
        if hc and hc.get("Test") and hc["Test"][0] != "NONE":
            healthcheck = {"interval": (hc.get("Interval") or 30 * NS) / NS, "timeout": (hc.get("Timeout") or 30 * NS) / NS,
                           "retries": hc.get("Retries") or 3, "start_period": (hc.get("StartPeriod") or 0) / NS}
        cid = _new_id(next(self._ids))
        self.records[cid] = {"body": body, "logs": [], "info": dict(
            id=cid, name=name, labels=dict(body.get("Labels") or {}), image=body["Image"],
            image_id=self._image_id(body["Image"]), state="created",
            healthcheck=healthcheck, networks=sorted(nets),
            binds=sorted([m["Source"] for m in body.get("HostConfig", {}).get("Mounts") or [] if m.get("Type") == "bind"]
                         + [b.split(":")[0] for b in body.get("HostConfig", {}).get("Binds") or []]),
            ports=[{"target": int(k.split("/")[0]), "protocol": k.split("/")[1], "host_ip": b["HostIp"],
                    "published": int(b["HostPort"]) if b["HostPort"] else None}
                   for k, bs in sorted((body.get("HostConfig", {}).get("PortBindings") or {}).items()) for b in bs])}
        return cid

    def start(self, cid: str) -> None:
        self._hook("start", cid)
        rec = self._find(cid)
        if rec is None:
            raise AgentError(NOT_FOUND, "no such container %s" % cid)
        info = rec["info"]
        behaviour = self.behaviours.get(info["image"], "run")
        rec["logs"] = ["starting %s" % info["name"]]
        if behaviour.startswith("exit:"):
            info.update(state="exited", exit_code=int(behaviour[5:]))
            rec["logs"] += ["line %d" % i for i in range(30)] + ["fatal: exiting"]
            return
        info.update(state="running", started_at="now")
        if info.get("healthcheck"):
            info["health"] = {"unhealthy": "unhealthy", "unhealthy-quiet": "unhealthy",
                              "starting": "starting"}.get(behaviour, "healthy")
            if behaviour.startswith("unhealthy"):
                out = "probe failed" if behaviour == "unhealthy" else ""
                info.update(health_log=[out] * 3, health_streak=info["healthcheck"]["retries"], health_exit=1)

    def rename(self, cid: str, name: str) -> None:
        self._hook("rename", cid, name)
        rec = self._find(cid)
        if rec is None:
            raise AgentError(NOT_FOUND, "no such container %s" % cid)
        other = self._find(name)
        if other is not None and other is not rec:
            raise AgentError(CONFLICT, "rename container %s to %s: the name is already in use" % (cid[:12], name))
        rec["info"]["name"] = name

    def stop(self, cid: str, timeout: Optional[float] = None) -> None:
        self._hook("stop", cid)
        rec = self._find(cid)
        if rec is not None and rec["info"]["state"] in ("running", "restarting", "paused"):
            rec["info"].update(state="exited", exit_code=143 if rec["info"].get("exit_code") is None else 0)

    def remove(self, cid: str) -> None:
        self._hook("remove", cid)
        rec = self._find(cid)
        if rec is not None:
            del self.records[rec["info"]["id"]]

    def logs(self, cid: str, tail: int) -> List[str]:
        rec = self._find(cid)
        return [] if rec is None else rec.get("logs", [])[-tail:]

    def stream_logs(self, cid: str, tail: Any, follow: bool, since: Optional[int], timestamps: bool):
        rec = self._find(cid) or {}
        lines = rec.get("logs", [])
        if tail != "all":
            lines = lines[-tail:] if tail else []
        return _Closeable([(ln + "\n").encode() for ln in lines], follow)

    def exec_run(self, cid: str, cmd: List[str], env: Dict[str, str], user: str, workdir: str):
        self._hook("exec", cid, cmd)
        code = int(cmd[1]) if cmd[0] == "exit" else 0
        chunks = [(" ".join(cmd).encode(), None), (None, b"err\n")]
        return iter(chunks), (lambda: code), (lambda: None)

    # networks, volumes
    def networks(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        return [dict(n) for n in sorted(self.nets.values(), key=lambda n: n["name"]) if _match(n["labels"], label_filters)]

    def network(self, name: str) -> Optional[Dict[str, Any]]:
        return dict(self.nets[name]) if name in self.nets else None

    def create_network(self, name: str, driver: str, internal: bool, attachable: bool, labels: Dict[str, str],
                       subnet: str = "", gateway: str = "", options: Optional[Dict[str, str]] = None) -> None:
        self._hook("create_network", name)
        if name in self.nets:
            raise AgentError(CONFLICT, "network %s exists" % name)
        self.nets[name] = {"name": name, "id": "n-" + name, "driver": driver, "labels": dict(labels),
                           "subnets": [subnet] if subnet else [], "internal": internal, "options": dict(options or {})}

    def remove_network(self, name: str) -> None:
        self._hook("remove_network", name)
        self.nets.pop(name, None)

    def volumes(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        return [dict(v) for v in sorted(self.vols.values(), key=lambda v: v["name"]) if _match(v["labels"], label_filters)]

    def volume(self, name: str) -> Optional[Dict[str, Any]]:
        return dict(self.vols[name]) if name in self.vols else None

    def create_volume(self, name: str, driver: str, driver_opts: Dict[str, str], labels: Dict[str, str]) -> None:
        self._hook("create_volume", name)
        self.vols[name] = {"name": name, "driver": driver, "labels": dict(labels)}

    def remove_volume(self, name: str) -> None:
        self._hook("remove_volume", name)
        self.vols.pop(name, None)

    # images
    def image_exists(self, ref: str) -> bool:
        return ref in self.images

    def pull(self, ref: str, auth: Optional[Dict[str, str]], progress: Callable[[Dict[str, Any]], None]) -> None:
        self._hook("pull", ref)
        self.pull_auth.append(auth)
        if ref not in self.registry:
            raise AgentError(PULL, "pull %s: manifest unknown" % ref, {"image": ref})
        progress({"status": "Downloading", "id": "layer1"})
        self.images.add(ref)

    def prune_images(self) -> Dict[str, Any]:
        return {"deleted": 0, "reclaimed": 0}

    def _image_id(self, ref: str) -> str:
        for iid, m in self.image_meta.items():
            if ref in m["repo_digests"] or ref in m["repo_tags"]:
                return iid
        return "sha256:" + "%064x" % abs(hash(ref))

    def add_image(self, ref: str, labels: Optional[Dict[str, str]] = None, size: int = 1000) -> str:
        """An image with labels (for prune_images): ref is repo@sha256:... or repo:tag."""
        iid = "sha256:%064x" % next(self._ids)
        self.images.add(ref)
        self.image_meta[iid] = {"id": iid, "repo_digests": [ref] if "@" in ref else [],
                                "repo_tags": [] if "@" in ref else [ref], "labels": dict(labels or {}), "size": size}
        return iid

    def list_images(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        return [dict(m) for m in self.image_meta.values() if _match(m["labels"], label_filters)]

    def image_users(self) -> List[str]:
        return sorted({r["info"].get("image_id", "") for r in self.records.values() if r["info"].get("image_id")})

    def container_users(self) -> List[Dict[str, Any]]:
        out = []
        for r in sorted(self.records.values(), key=lambda r: r["info"]["name"]):
            mounts = (r["body"].get("HostConfig") or {}).get("Mounts") or []
            out.append({"name": r["info"]["name"], "image_id": r["info"].get("image_id", ""),
                        "volumes": sorted(m["Source"] for m in mounts if m.get("Type") == "volume" and m.get("Source"))})
        return out

    def remove_image(self, image_id: str) -> None:
        self._hook("remove_image", image_id)
        meta = self.image_meta.pop(image_id, None)
        if meta is None:
            raise AgentError(NOT_FOUND, "remove image %s: no such image" % image_id)
        for ref in meta["repo_digests"] + meta["repo_tags"]:
            self.images.discard(ref)


def _new_id(n: int) -> str:
    """Distinct from the first hex digit on, like the engine's (server names use the first 8)."""
    import hashlib

    return hashlib.sha256(b"fake-container-%d" % n).hexdigest()


def _match(labels: Dict[str, str], label_filters: List[str]) -> bool:
    for f in label_filters:
        k, eq, v = f.partition("=")
        if k not in labels or (eq and labels[k] != v):
            return False
    return True


class _Closeable:
    """Like the SDK's log stream: with follow it blocks after the last chunk until closed."""

    def __init__(self, chunks: List[bytes], follow: bool = False):
        import threading

        self._chunks = chunks
        self._follow = follow
        self._closed = threading.Event()

    def __iter__(self):
        for chunk in self._chunks:
            if self._closed.is_set():
                return
            yield chunk
        if self._follow:
            self._closed.wait()

    def close(self) -> None:
        self._closed.set()


class FakeMeshHost:
    """agent.mesh.host.NodeHost for unit tests: records what the mesh would change on the
    host (link, firewall, DNS, daemon) and changes nothing."""

    def __init__(self, name: str = "node") -> None:
        import base64
        import hashlib

        self.name = name
        self.key = base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()
        self.calls: List[Tuple[str, Any]] = []
        self.links: Dict[str, Any] = {}  # iface -> MeshConfig
        self.firewall: Dict[str, str] = {}
        self.dns = False
        self.daemon = False
        self.missing: List[str] = []  # problems() answers these
        self.refreshed_for: List[tuple] = []  # the peers each refresh_daemon waited for

    def problems(self) -> List[str]:
        return list(self.missing)

    def ensure_key(self, paths: Any) -> str:
        import os

        self.calls.append(("ensure_key", None))
        with open(paths.private_key, "w") as fh:
            fh.write("fake private key of %s\n" % self.name)
        os.chmod(paths.private_key, 0o600)
        return self.key

    def public_key(self, paths: Any) -> Optional[str]:
        return self.key

    def ensure_link(self, cfg: Any, paths: Any) -> str:
        self.calls.append(("ensure_link", cfg))
        self.links[cfg.interface] = cfg
        return "fake"

    def link_up(self, iface: str) -> bool:
        return iface in self.links

    def link_peers(self, iface: str) -> List[Dict[str, Any]]:
        cfg = self.links.get(iface)
        return [{"public_key": p.public_key, "endpoint": p.endpoint, "handshake_age": 1.0}
                for p in (cfg.peers if cfg else [])]

    def remove_link(self, iface: str) -> None:
        self.calls.append(("remove_link", iface))
        self.links.pop(iface, None)

    def apply_firewall(self, iface: str, text: str) -> None:
        self.calls.append(("apply_firewall", iface))
        self.firewall[iface] = text

    def remove_firewall(self, iface: str) -> None:
        self.calls.append(("remove_firewall", iface))
        self.firewall.pop(iface, None)

    def ensure_dns(self, paths: Any, address: str) -> str:
        self.calls.append(("ensure_dns", address))
        self.dns = True
        return ""

    def dns_running(self, paths: Any) -> bool:
        return self.dns

    def dns_current(self, paths: Any, address: str) -> bool:
        return self.dns

    def stop_dns(self, paths: Any) -> None:
        self.calls.append(("stop_dns", None))
        self.dns = False

    def ensure_daemon(self, paths: Any, env: str, restart: bool = False) -> None:
        self.calls.append(("ensure_daemon", restart))
        self.daemon = True

    def daemon_running(self, paths: Any) -> bool:
        return self.daemon

    def daemon_current(self, paths: Any) -> bool:
        return self.daemon

    def refresh_daemon(self, paths: Any, timeout: float = 5.0, need: tuple = ()) -> list:
        self.calls.append(("refresh_daemon", None))
        self.refreshed_for.append(tuple(need))
        return [] if self.daemon else ["daemon"]

    def stop_daemon(self, paths: Any) -> None:
        self.calls.append(("stop_daemon", None))
        self.daemon = False
