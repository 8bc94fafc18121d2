"""Read-only container queries straight from the engine's unix socket, stdlib only.

The docker SDK's import (requests, urllib3, charset_normalizer) costs about 0.35 s of
every agent session that uses it. Most sessions only read: `state` for a plan, `ps`, a
no-op `orch up`. Those list and inspect containers through this reader, and pay for
the SDK only when an operation changes something (agent.engine.Engine). The answers
are the Engine API's own JSON, turned into the same ContainerInfo by the same
info_from_inspect, so both paths report a container identically.

Only for DOCKER_HOST=unix://... (or the default socket); TCP/TLS engines use the SDK.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import quote, urlencode

from agent.engine import ContainerInfo, info_from_inspect, listed_from
from agent.wire.protocol import ENGINE, AgentError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class SocketReads:
    """containers(), container(), inspect(), top(), stats(), networks() and volumes() of agent.engine.Engine, over one keep-alive
    HTTP connection to the engine's unix socket."""

    def __init__(self, path: str, timeout: float = 60.0):
        self.path = path
        self.timeout = timeout
        self._conn: Optional[_UnixConnection] = None

    @classmethod
    def from_env(cls, environ: Optional[Dict[str, str]] = None) -> Optional["SocketReads"]:
        host = (os.environ if environ is None else environ).get("DOCKER_HOST") or DEFAULT_SOCKET
        if not host.startswith("unix://"):
            return None
        return cls(host[len("unix://"):])

    def _get(self, what: str, path: str) -> Tuple[int, Any]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = _UnixConnection(self.path, self.timeout)
            try:
                self._conn.request("GET", path, headers={"Host": "docker"})
                resp = self._conn.getresponse()
                body = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the engine closed meanwhile: once more, fresh.
                if attempt == 2 or isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
                    raise AgentError(
                        ENGINE, "cannot reach Docker Engine at %s: %s" % (self.path, exc),
                        {"fix": "start Docker Engine on the node (systemctl start docker) and check DOCKER_HOST"},
                    ) from None
        try:
            data = json.loads(body.decode("utf-8")) if body else None
        except ValueError:
            raise AgentError(ENGINE, "%s: the engine answered %d with something that is not JSON"
                             % (what, resp.status)) from None
        if resp.status >= 400 and resp.status != 404:
            message = data.get("message") if isinstance(data, dict) else None
            raise AgentError(ENGINE, "%s: %s" % (what, message or "HTTP %d" % resp.status))
        return resp.status, data

    def containers(self, label_filters: List[str]) -> List[ContainerInfo]:
        query = urlencode({"all": "1", "filters": json.dumps({"label": list(label_filters)})})
        status, summaries = self._get("list containers", "/containers/json?" + query)
        out = []
        for s in summaries or []:
            info = self.container(s["Id"])
            if info is not None:  # removed between the list and the inspect
                out.append(info)
        return sorted(out, key=lambda c: (c.project, c.service, c.replica, c.name))

    def listed(self, label_filters: List[str]) -> List[Tuple[str, Dict[str, str]]]:
        """(name, labels) from the list alone (agent.engine.Engine.listed)."""
        query = urlencode({"all": "1", "filters": json.dumps({"label": list(label_filters)})})
        return listed_from(self._get("list containers", "/containers/json?" + query)[1])

    def container(self, ref: str) -> Optional[ContainerInfo]:
        status, data = self._get("inspect container %s" % ref, "/containers/%s/json" % quote(ref, safe=""))
        return None if status == 404 else info_from_inspect(data)

    def inspect(self, ref: str) -> Optional[Dict[str, Any]]:
        """The Engine API's inspect document of a container (None: no such container)."""
        status, data = self._get("inspect container %s" % ref, "/containers/%s/json" % quote(ref, safe=""))
        return None if status == 404 else data

    def top(self, ref: str) -> Optional[Dict[str, Any]]:
        """{"Titles": [...], "Processes": [[...], ...]} of a running container (None: no such container)."""
        status, data = self._get("top of container %s" % ref, "/containers/%s/top" % quote(ref, safe=""))
        return None if status == 404 else data

    def stats(self, ref: str) -> Optional[Dict[str, Any]]:
        """One stats document (stream=false: the engine reads twice, about a second apart, so
        precpu_stats is filled). A connection of its own: containers are sampled in parallel."""
        reader = SocketReads(self.path, self.timeout)
        try:
            status, data = reader._get("stats of container %s" % ref,
                                       "/containers/%s/stats?stream=false" % quote(ref, safe=""))
        finally:
            reader.close()
        return None if status == 404 else data

    def networks(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        query = urlencode({"filters": json.dumps({"label": list(label_filters)})})
        status, nets = self._get("list networks", "/networks?" + query)
        return sorted(({"name": n["Name"], "id": n["Id"], "driver": n.get("Driver", ""), "labels": n.get("Labels") or {}}
                       for n in (nets if isinstance(nets, list) else [])), key=lambda n: n["name"])

    def volumes(self, label_filters: List[str]) -> List[Dict[str, Any]]:
        query = urlencode({"filters": json.dumps({"label": list(label_filters)})})
        status, data = self._get("list volumes", "/volumes?" + query)
        return sorted(({"name": v["Name"], "driver": v.get("Driver", ""), "labels": v.get("Labels") or {}}
                       for v in (data if isinstance(data, dict) else {}).get("Volumes") or []),
                      key=lambda v: v["name"])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
