"""A fake Docker Engine for the lab's light nodes: one process, one unix socket per node.

Light nodes (`orch lab up --nodes prod=100:light`) have a netns and a real sshd like the
others but no dockerd: their DOCKER_HOST is a socket served here, so the real agent runs
unchanged against an engine that costs next to nothing, and a hundred nodes fit on two
cores (docs/lab.md "Light nodes"). Each socket has its own in-memory engine (own ID,
containers, networks, volumes, images): the Engine API subset the agent uses
(agent/engine.py through the docker SDK, agent/engine_reads.py directly). Containers
run at once and are healthy at once; a pull succeeds at once for any reference. State
is lost when the process stops (`orch lab up` restarts it only when the nodes change).

Stdlib only, run as a file (`python3 fake_engine.py CONFIG`) so that its argv names
the lab's config file: `orch lab down` finds and stops it with the lab's other processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socketserver
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Dict, List, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

API_VERSION = "1.43"
SERVER_VERSION = "24.0.0-orch-lab-fake"
_VERSIONED = re.compile(r"^/v\d+\.\d+(/.*)$")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


def _hex_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode() + uuid.uuid4().bytes).hexdigest()


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def label_match(labels: Dict[str, str], wanted: List[str]) -> bool:
    """The Engine API's label filter: every `key` present, every `key=value` equal."""
    for item in wanted:
        key, sep, value = item.partition("=")
        if key not in labels or (sep and labels[key] != value):
            return False
    return True


def parse_filters(query: Dict[str, List[str]]) -> Dict[str, List[str]]:
    raw = (query.get("filters") or ["{}"])[0]
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        raise ApiError(400, "invalid filter %r" % raw) from None
    out: Dict[str, List[str]] = {}
    for key, value in (data or {}).items():
        # Both forms the API accepts: {"label": ["a=b"]} and {"label": {"a=b": true}}.
        out[key] = list(value) if isinstance(value, list) else [k for k, v in value.items() if v]
    return out


def split_ref(ref: str) -> Tuple[str, str, str]:
    """'reg:5000/app:1.0@sha256:ab' -> ('reg:5000/app', '1.0', 'sha256:ab')."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1:]
    return name, tag, digest


class Engine:
    """One node's engine state. Every request holds the lock: calls are short."""

    def __init__(self, node: str, engine_id: str, root_dir: str = ""):
        self.node = node
        self.id = engine_id
        self.root_dir = root_dir
        self.lock = threading.Lock()
        self.containers: Dict[str, Dict[str, Any]] = {}  # id -> inspect document
        self.images: Dict[str, Dict[str, Any]] = {}  # id -> inspect document
        self.volumes: Dict[str, Dict[str, Any]] = {}  # name -> document
        self.networks: Dict[str, Dict[str, Any]] = {}  # id -> inspect document
        for name, driver in (("bridge", "bridge"), ("host", "host"), ("none", "null")):
            self._add_network(name, driver, {}, False, False, {}, [])

    # ------------------------------------------------------------------ lookups

    def container(self, ref: str) -> Dict[str, Any]:
        if ref in self.containers:
            return self.containers[ref]
        for c in self.containers.values():
            if c["Name"] == "/" + ref.lstrip("/"):
                return c
        found = [c for cid, c in self.containers.items() if len(ref) >= 4 and cid.startswith(ref)]
        if len(found) == 1:
            return found[0]
        raise ApiError(404, "No such container: %s" % ref)

    def image(self, ref: str) -> Dict[str, Any]:
        bare = ref[len("sha256:"):] if ref.startswith("sha256:") else ref
        name, tag, digest = split_ref(ref)
        tagged = "%s:%s" % (name, tag or "latest")
        for img in self.images.values():
            if img["Id"] in (ref, "sha256:" + bare) or ref in img["RepoDigests"] or tagged in img["RepoTags"]:
                return img
            if digest and "%s@%s" % (name, digest) in img["RepoDigests"]:
                return img
        raise ApiError(404, "No such image: %s" % ref)

    def network(self, ref: str) -> Dict[str, Any]:
        if ref in self.networks:
            return self.networks[ref]
        for n in self.networks.values():
            if n["Name"] == ref:
                return n
        found = [n for nid, n in self.networks.items() if len(ref) >= 4 and nid.startswith(ref)]
        if len(found) == 1:
            return found[0]
        raise ApiError(404, "network %s not found" % ref)

    # ------------------------------------------------------------------ engine

    def info(self) -> Dict[str, Any]:
        running = sum(1 for c in self.containers.values() if c["State"]["Running"])
        return {"ID": self.id, "Name": self.node, "ServerVersion": SERVER_VERSION,
                "OperatingSystem": "orch lab fake engine", "OSType": "linux", "Architecture": "x86_64",
                "KernelVersion": os.uname().release, "NCPU": os.cpu_count() or 1, "MemTotal": 1 << 30,
                "DockerRootDir": self.root_dir, "Containers": len(self.containers),
                "ContainersRunning": running, "ContainersStopped": len(self.containers) - running,
                "Images": len(self.images), "Driver": "fake", "Swarm": {"LocalNodeState": "inactive"}}

    @staticmethod
    def version() -> Dict[str, Any]:
        return {"Version": SERVER_VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": "1.12",
                "Os": "linux", "Arch": "amd64", "KernelVersion": os.uname().release,
                "Components": [{"Name": "Engine", "Version": SERVER_VERSION}]}

    # ------------------------------------------------------------------ containers

    def list_containers(self, query: Dict[str, List[str]]) -> List[Dict[str, Any]]:
        filters = parse_filters(query)
        show_all = (query.get("all") or ["0"])[0] in ("1", "true", "True")
        out = []
        for c in self.containers.values():
            if not show_all and not c["State"]["Running"]:
                continue
            if not label_match(c["Config"]["Labels"], filters.get("label", [])):
                continue
            if any(n not in c["Name"] for n in filters.get("name", [])):
                continue
            if filters.get("id") and not any(c["Id"].startswith(i) for i in filters["id"]):
                continue
            if filters.get("status") and c["State"]["Status"] not in filters["status"]:
                continue
            out.append({"Id": c["Id"], "Names": [c["Name"]], "Image": c["Config"]["Image"], "ImageID": c["Image"],
                        "Command": "", "Created": int(c["_created"]), "Labels": c["Config"]["Labels"],
                        "State": c["State"]["Status"], "Status": c["State"]["Status"], "Mounts": c["Mounts"],
                        "Ports": [], "NetworkSettings": {"Networks": c["NetworkSettings"]["Networks"]}})
        return sorted(out, key=lambda s: -s["Created"])

    def create_container(self, name: str, body: Dict[str, Any]) -> Dict[str, Any]:
        if name and any(c["Name"] == "/" + name for c in self.containers.values()):
            raise ApiError(409, 'Conflict. The container name "/%s" is already in use' % name)
        image = self.image(body.get("Image") or "")
        host = body.get("HostConfig") or {}
        cid = _hex_id(self.id, name)
        name = name or "fake_" + cid[:8]
        mounts = []
        for bind in host.get("Binds") or []:
            src, _, rest = bind.partition(":")
            dst = rest.split(":")[0]
            kind = "bind" if src.startswith("/") else "volume"
            mounts.append({"Type": kind, "Source": src if kind == "bind" else "", "Name": src if kind == "volume" else "",
                           "Destination": dst, "RW": not rest.endswith(":ro")})
        for m in host.get("Mounts") or []:
            kind = m.get("Type", "volume")
            mounts.append({"Type": kind, "Source": m.get("Source", "") if kind == "bind" else "",
                           "Name": m.get("Source", "") if kind == "volume" else "",
                           "Destination": m.get("Target", ""), "RW": not m.get("ReadOnly")})
        for m in mounts:
            if m["Type"] == "volume" and m["Name"] and m["Name"] not in self.volumes:
                self.create_volume({"Name": m["Name"]})
        config = {k: v for k, v in body.items() if k not in ("HostConfig", "NetworkingConfig")}
        for key, default in (("Tty", False), ("OpenStdin", False), ("AttachStdout", False), ("Env", []),
                             ("Cmd", image["Config"].get("Cmd")), ("Entrypoint", None), ("User", "")):
            config.setdefault(key, default)
        config["Labels"] = dict(image["Config"].get("Labels") or {}, **(body.get("Labels") or {}))
        if not config.get("Healthcheck") and image["Config"].get("Healthcheck"):
            config["Healthcheck"] = image["Config"]["Healthcheck"]
        networks: Dict[str, Any] = {}
        mode = host.get("NetworkMode") or "bridge"
        endpoints = ((body.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        for net_name in [mode] + [n for n in endpoints if n != mode]:
            if net_name in ("host", "none") or net_name.startswith("container:"):
                continue
            self._attach(cid, net_name, (endpoints.get(net_name) or {}).get("Aliases") or [], networks)
        now = time.time()
        self.containers[cid] = {
            "Id": cid, "Name": "/" + name, "Created": _now(), "_created": now, "Image": image["Id"],
            "Config": config, "HostConfig": host, "Mounts": mounts, "RestartCount": 0,
            "State": {"Status": "created", "Running": False, "Paused": False, "Restarting": False,
                      "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                      "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
            "NetworkSettings": {"Ports": {}, "Networks": networks},
        }
        return {"Id": cid, "Warnings": []}

    def _attach(self, cid: str, net_ref: str, aliases: List[str], networks: Dict[str, Any]) -> None:
        net = self.network(net_ref)
        networks[net["Name"]] = {"NetworkID": net["Id"], "EndpointID": _hex_id(cid, net["Id"]), "Aliases": aliases,
                                 "IPAddress": "", "Gateway": ""}
        net["Containers"][cid] = {"Name": "", "EndpointID": networks[net["Name"]]["EndpointID"]}

    def connect(self, net_ref: str, body: Dict[str, Any]) -> None:
        c = self.container(body.get("Container") or "")
        aliases = (body.get("EndpointConfig") or {}).get("Aliases") or []
        self._attach(c["Id"], net_ref, aliases, c["NetworkSettings"]["Networks"])

    def start(self, ref: str) -> int:
        c = self.container(ref)
        state = c["State"]
        if state["Running"]:
            return 304
        state.update(Status="running", Running=True, Pid=1, ExitCode=0, StartedAt=_now(),
                     FinishedAt="0001-01-01T00:00:00Z")
        test = (c["Config"].get("Healthcheck") or {}).get("Test") or []
        if test and test[0] != "NONE":  # healthy at once: a probe that passed
            state["Health"] = {"Status": "healthy", "FailingStreak": 0,
                               "Log": [{"Start": _now(), "End": _now(), "ExitCode": 0, "Output": ""}]}
        ports = {}
        for key, bindings in ((c["HostConfig"].get("PortBindings") or {}).items()):
            ports[key] = [{"HostIp": b.get("HostIp") or "0.0.0.0", "HostPort": b.get("HostPort") or ""}
                          for b in bindings or []]
        c["NetworkSettings"]["Ports"] = ports
        return 204

    def stop(self, ref: str) -> int:
        state = self.container(ref)["State"]
        if not state["Running"]:
            return 304
        state.update(Status="exited", Running=False, Pid=0, ExitCode=0, FinishedAt=_now())
        return 204

    def rename(self, ref: str, name: str) -> None:
        c = self.container(ref)
        if any(o["Name"] == "/" + name and o is not c for o in self.containers.values()):
            raise ApiError(409, 'Conflict. The container name "/%s" is already in use' % name)
        c["Name"] = "/" + name

    def remove_container(self, ref: str, force: bool) -> None:
        c = self.container(ref)
        if c["State"]["Running"] and not force:
            raise ApiError(409, "You cannot remove a running container %s. Stop it first or use force" % c["Id"])
        for net in self.networks.values():
            net["Containers"].pop(c["Id"], None)
        del self.containers[c["Id"]]

    # ------------------------------------------------------------------ images

    def pull(self, repo: str, tag: str) -> List[Dict[str, Any]]:
        if tag.startswith("sha256:"):
            ref, digest = "%s@%s" % (repo, tag), tag
        else:
            ref = "%s:%s" % (repo, tag or "latest")
            digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
        try:
            img = self.image(ref)
        except ApiError:
            image_id = "sha256:" + hashlib.sha256(("image " + repo + digest).encode()).hexdigest()
            img = self.images.setdefault(image_id, {
                "Id": image_id, "RepoTags": [], "RepoDigests": [], "Created": _now(), "Size": 4 << 20,
                "Config": {"Labels": {}, "Env": [], "Cmd": ["sh"]}, "Os": "linux", "Architecture": "amd64"})
        if "%s@%s" % (repo, digest) not in img["RepoDigests"]:
            img["RepoDigests"].append("%s@%s" % (repo, digest))
        if not tag.startswith("sha256:") and ref not in img["RepoTags"]:
            img["RepoTags"].append(ref)
        return [{"status": "Pulling from %s" % repo, "id": tag or "latest"},
                {"status": "Digest: %s" % digest},
                {"status": "Status: Downloaded newer image for %s" % ref}]

    def list_images(self, query: Dict[str, List[str]]) -> List[Dict[str, Any]]:
        filters = parse_filters(query)
        out = []
        for img in self.images.values():
            if not label_match(img["Config"].get("Labels") or {}, filters.get("label", [])):
                continue
            if filters.get("dangling") in (["true"], ["1"]) and img["RepoTags"]:
                continue
            out.append({"Id": img["Id"], "RepoTags": img["RepoTags"] or ["<none>:<none>"],
                        "RepoDigests": img["RepoDigests"], "Labels": img["Config"].get("Labels") or {},
                        "Size": img["Size"], "Created": 0, "Containers": -1})
        return out

    def remove_image(self, ref: str, force: bool) -> List[Dict[str, str]]:
        img = self.image(ref)
        if not force and any(c["Image"] == img["Id"] for c in self.containers.values()):
            raise ApiError(409, "conflict: unable to remove image %s: it is used by a container" % ref)
        del self.images[img["Id"]]
        return [{"Untagged": t} for t in img["RepoTags"]] + [{"Deleted": img["Id"]}]

    def prune_images(self) -> Dict[str, Any]:
        used = {c["Image"] for c in self.containers.values()}
        gone = [i for i, img in self.images.items() if not img["RepoTags"] and not img["RepoDigests"] and i not in used]
        for i in gone:
            del self.images[i]
        return {"ImagesDeleted": [{"Deleted": i} for i in gone], "SpaceReclaimed": 0}

    # ------------------------------------------------------------------ networks, volumes

    def _add_network(self, name: str, driver: str, labels: Dict[str, str], internal: bool, attachable: bool,
                     options: Dict[str, str], ipam: List[Dict[str, str]]) -> Dict[str, Any]:
        nid = _hex_id(self.id, "network", name)
        self.networks[nid] = {"Name": name, "Id": nid, "Created": _now(), "Scope": "local", "Driver": driver,
                              "Internal": internal, "Attachable": attachable, "Labels": labels,
                              "Options": options, "IPAM": {"Driver": "default", "Config": ipam}, "Containers": {}}
        return self.networks[nid]

    def create_network(self, body: Dict[str, Any]) -> Dict[str, Any]:
        name = body.get("Name") or ""
        if any(n["Name"] == name for n in self.networks.values()):
            raise ApiError(409, "network with name %s already exists" % name)
        ipam = [{k: v for k, v in c.items() if k in ("Subnet", "Gateway")}
                for c in ((body.get("IPAM") or {}).get("Config") or [])]
        net = self._add_network(name, body.get("Driver") or "bridge", body.get("Labels") or {},
                                bool(body.get("Internal")), bool(body.get("Attachable")), body.get("Options") or {}, ipam)
        return {"Id": net["Id"], "Warning": ""}

    def list_networks(self, query: Dict[str, List[str]]) -> List[Dict[str, Any]]:
        filters = parse_filters(query)
        return [dict(n, Containers={}) for n in self.networks.values()
                if label_match(n["Labels"], filters.get("label", []))
                and all(f in n["Name"] for f in filters.get("name", []))]

    def remove_network(self, ref: str) -> None:
        net = self.network(ref)
        if net["Name"] in ("bridge", "host", "none"):
            raise ApiError(403, "%s is a pre-defined network and cannot be removed" % net["Name"])
        if net["Containers"]:
            raise ApiError(403, "error while removing network: network %s has active endpoints" % net["Name"])
        del self.networks[net["Id"]]

    def create_volume(self, body: Dict[str, Any]) -> Dict[str, Any]:
        name = body.get("Name") or _hex_id(self.id, "volume")
        if name not in self.volumes:
            self.volumes[name] = {"Name": name, "Driver": body.get("Driver") or "local", "CreatedAt": _now(),
                                  "Mountpoint": "/fake/volumes/%s/_data" % name, "Labels": body.get("Labels") or {},
                                  "Options": body.get("DriverOpts") or {}, "Scope": "local"}
        return self.volumes[name]

    def volume(self, name: str) -> Dict[str, Any]:
        if name not in self.volumes:
            raise ApiError(404, "get %s: no such volume" % name)
        return self.volumes[name]

    def list_volumes(self, query: Dict[str, List[str]]) -> Dict[str, Any]:
        filters = parse_filters(query)
        vols = [v for v in self.volumes.values() if label_match(v["Labels"], filters.get("label", []))]
        return {"Volumes": vols, "Warnings": []}

    def remove_volume(self, name: str) -> None:
        self.volume(name)
        if any(m.get("Name") == name for c in self.containers.values() for m in c["Mounts"]):
            raise ApiError(409, "remove %s: volume is in use" % name)
        del self.volumes[name]


# ---------------------------------------------------------------------- the HTTP API

class Stream(list):
    """JSON messages sent one per chunk (Transfer-Encoding: chunked), as a pull's progress."""


def _q(query: Dict[str, List[str]], key: str, default: str = "") -> str:
    return (query.get(key) or [default])[0]


def _true(query: Dict[str, List[str]], key: str) -> bool:
    return _q(query, key).lower() in ("1", "true")


Route = Tuple[str, "re.Pattern[str]", Callable[..., Tuple[int, Any]]]
# (method, path, handler(engine, match, query, body) -> (status, payload)); payload: JSON,
# str (text/plain), None (no body) or Stream.
ROUTES: List[Route] = [
    ("GET", re.compile(r"^/_ping$"), lambda e, m, q, b: (200, "OK")),
    ("HEAD", re.compile(r"^/_ping$"), lambda e, m, q, b: (200, "OK")),
    ("GET", re.compile(r"^/version$"), lambda e, m, q, b: (200, e.version())),
    ("GET", re.compile(r"^/info$"), lambda e, m, q, b: (200, e.info())),
    ("GET", re.compile(r"^/containers/json$"), lambda e, m, q, b: (200, e.list_containers(q))),
    ("POST", re.compile(r"^/containers/create$"), lambda e, m, q, b: (201, e.create_container(_q(q, "name"), b))),
    ("GET", re.compile(r"^/containers/([^/]+)/json$"),
     lambda e, m, q, b: (200, {k: v for k, v in e.container(m[1]).items() if not k.startswith("_")})),
    ("POST", re.compile(r"^/containers/([^/]+)/start$"), lambda e, m, q, b: (e.start(m[1]), None)),
    ("POST", re.compile(r"^/containers/([^/]+)/stop$"), lambda e, m, q, b: (e.stop(m[1]), None)),
    ("POST", re.compile(r"^/containers/([^/]+)/kill$"), lambda e, m, q, b: (e.stop(m[1]) and 204, None)),
    ("POST", re.compile(r"^/containers/([^/]+)/rename$"), lambda e, m, q, b: (e.rename(m[1], _q(q, "name")) or 204, None)),
    ("DELETE", re.compile(r"^/containers/([^/]+)$"),
     lambda e, m, q, b: (e.remove_container(m[1], _true(q, "force")) or 204, None)),
    ("GET", re.compile(r"^/containers/([^/]+)/logs$"), lambda e, m, q, b: (e.container(m[1]) and 200, "")),
    ("GET", re.compile(r"^/containers/([^/]+)/top$"),
     lambda e, m, q, b: (e.container(m[1]) and 200, {"Titles": ["PID", "CMD"], "Processes": []})),
    ("POST", re.compile(r"^/images/create$"), lambda e, m, q, b: (200, Stream(e.pull(_q(q, "fromImage"), _q(q, "tag"))))),
    ("GET", re.compile(r"^/images/json$"), lambda e, m, q, b: (200, e.list_images(q))),
    ("POST", re.compile(r"^/images/prune$"), lambda e, m, q, b: (200, e.prune_images())),
    ("GET", re.compile(r"^/images/(.+)/json$"), lambda e, m, q, b: (200, e.image(m[1]))),
    ("DELETE", re.compile(r"^/images/(.+)$"), lambda e, m, q, b: (200, e.remove_image(m[1], _true(q, "force")))),
    ("GET", re.compile(r"^/networks$"), lambda e, m, q, b: (200, e.list_networks(q))),
    ("POST", re.compile(r"^/networks/create$"), lambda e, m, q, b: (201, e.create_network(b))),
    ("POST", re.compile(r"^/networks/([^/]+)/connect$"), lambda e, m, q, b: (e.connect(m[1], b) or 200, None)),
    ("GET", re.compile(r"^/networks/([^/]+)$"), lambda e, m, q, b: (200, e.network(m[1]))),
    ("DELETE", re.compile(r"^/networks/([^/]+)$"), lambda e, m, q, b: (e.remove_network(m[1]) or 204, None)),
    ("GET", re.compile(r"^/volumes$"), lambda e, m, q, b: (200, e.list_volumes(q))),
    ("POST", re.compile(r"^/volumes/create$"), lambda e, m, q, b: (201, e.create_volume(b))),
    ("GET", re.compile(r"^/volumes/([^/]+)$"), lambda e, m, q, b: (200, e.volume(m[1]))),
    ("DELETE", re.compile(r"^/volumes/([^/]+)$"), lambda e, m, q, b: (e.remove_volume(m[1]) or 204, None)),
]


def handle(engine: Engine, method: str, target: str, body: bytes) -> Tuple[int, Any]:
    """One request -> (status, payload); the transport-free core the unit tests drive."""
    url = urlsplit(target)
    path = unquote(url.path)
    versioned = _VERSIONED.match(path)
    if versioned:
        path = versioned.group(1)
    query = parse_qs(url.query, keep_blank_values=True)
    try:
        data = json.loads(body.decode("utf-8")) if body.strip() else {}
    except ValueError:
        return 400, {"message": "the request body is not JSON"}
    for verb, pattern, fn in ROUTES:
        m = pattern.match(path)
        if m and verb == method:
            try:
                with engine.lock:
                    return fn(engine, m, query, data)
            except ApiError as err:
                return err.status, {"message": err.message}
    return 404, {"message": "page not found: %s %s (not in the lab's fake engine)" % (method, path)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK and agent.engine_reads use it
    server_version = "orch-lab-fake-engine"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        status, payload = handle(self.server.engine, self.command, self.path, body)  # type: ignore[attr-defined]
        if isinstance(payload, Stream):
            self.send_response(status)
            self._headers("application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for msg in payload:
                chunk = (json.dumps(msg) + "\r\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        if payload is None:
            raw, kind = b"", "application/json"
        elif isinstance(payload, str):
            raw, kind = payload.encode(), "text/plain; charset=utf-8"
        else:
            raw, kind = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self._headers(kind)
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD" and status not in (204, 304):
            self.wfile.write(raw)

    def _headers(self, kind: str) -> None:
        self.send_header("Content-Type", kind)
        self.send_header("Api-Version", API_VERSION)
        self.send_header("Docker-Experimental", "false")
        self.send_header("Ostype", "linux")

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if not size:
                self.rfile.readline()
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a unix socket has no client address; the lab keeps no access log


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a connection left open never keeps the process from stopping
    allow_reuse_address = True

    def __init__(self, path: str, engine: Engine):
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a stopped run
        super().__init__(path, Handler)
        os.chmod(path, 0o660)
        self.engine = engine


def engine_id(salt: str, node: str) -> str:
    """An ID per node, shaped like Docker's: the agent keys its data directory by it. The
    salt is the lab's (made when its config is first written): stable across restarts of
    this process, new for a lab made again, like a real engine's."""
    digest = hashlib.sha256(("orch-lab-fake %s %s" % (salt, node)).encode()).hexdigest().upper()
    return ":".join(digest[i:i + 4] for i in range(0, 48, 4))


def serve(config_path: str) -> None:
    """Serve every node in the config ({"lab", "salt", "nodes": [{"name", "socket", "root_dir"}]})
    until SIGTERM or SIGINT."""
    with open(config_path) as f:
        config = json.load(f)
    servers = []
    for node in config["nodes"]:
        srv = Server(node["socket"], Engine(node["name"], engine_id(config["salt"], node["name"]), node.get("root_dir", "")))
        threading.Thread(target=srv.serve_forever, name="serve-" + node["name"], daemon=True).start()
        servers.append(srv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("serving %d fake engines" % len(servers), flush=True)
    while not stop.wait(1):
        pass
    for srv in servers:
        srv.server_close()
        try:
            os.unlink(srv.server_address)  # type: ignore[arg-type]
        except OSError:
            pass


if __name__ == "__main__":
    serve(sys.argv[1])
