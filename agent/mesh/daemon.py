"""The mesh daemon (one per environment on each node): names follow the replicas.

Every TICK seconds it
  1. reads this node's mesh networks and serving replicas from the engine,
  2. re-applies the firewall if the networks changed, and every REAPPLY ticks anyway (a
     Docker restart, another orch's agent or a person may have changed it: agent.mesh.firewall),
  3. serves its own records to the peers (HTTP on its mesh address, so only through the
     encrypted link), and pulls each peer's (timeout PULL_TIMEOUT),
  4. writes the hosts file dnsmasq answers from: its own records, then those of every
     peer heard from within STALE seconds, so a stopped replica or an unreachable node
     stops being returned within STALE + TICK (< 15 s), and returns when it answers,
  5. restarts dnsmasq if it died, and writes status.json (agent `state` reads it).
There is no controller in the loop: the daemon needs only config.json (peers, addresses).

Run as `python3 -m agent.mesh.daemon --dir MESHDIR --env ENV` (agent.mesh.ops starts it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple

from agent.mesh import dns, firewall
from agent.mesh.paths import MeshPaths, write_atomic
from agent.mesh.records import Record, hosts_text, local_records, mesh_networks
from agent.wire.mesh import RECORDS_PORT, MeshConfig, node_block

TICK = 2.0
REAPPLY = 10  # ticks: the firewall is rewritten at least this often (someone else may have changed it)
PULL_TIMEOUT = 1.5
STALE = 8.0
MAX_RECORDS_BYTES = 4 * 1024 * 1024


class Engine:
    """The few engine reads the daemon needs, over the unix socket (stdlib only)."""

    def __init__(self) -> None:
        from agent.engine_reads import SocketReads

        self.reads = SocketReads.from_env()
        self._aliases: Dict[str, Dict[str, List[str]]] = {}

    def get(self, path: str) -> Any:
        if self.reads is None:
            raise RuntimeError("DOCKER_HOST is not a unix socket")
        status, body = self.reads._get("mesh", path)
        if status != 200:
            raise RuntimeError("engine answered %s for %s" % (status, path))
        return body

    def snapshot(self, env: str) -> Tuple[Dict[str, Any], List[Record]]:
        from urllib.parse import quote

        nets = mesh_networks(self.get("/networks"), env)
        flt = quote(json.dumps({"label": ["io.orch.env=%s" % env]}))
        containers = self.get("/containers/json?filters=%s" % flt)
        aliases: Dict[Tuple[str, str], List[str]] = {}
        seen = set()
        for c in containers:
            cid = c.get("Id", "")
            seen.add(cid)
            if cid not in self._aliases:
                try:
                    info = self.get("/containers/%s/json" % cid)
                except RuntimeError:
                    continue
                self._aliases[cid] = {n: list((ep or {}).get("Aliases") or [])
                                      for n, ep in ((info.get("NetworkSettings") or {}).get("Networks") or {}).items()}
            for net, names in self._aliases[cid].items():
                aliases[(cid, net)] = names
        for cid in list(self._aliases):
            if cid not in seen:
                del self._aliases[cid]
        return nets, local_records(containers, nets, aliases)


class State:
    """The node's own records, shared by the loop and the record server. A peer's pull
    gets them fresh (at most FRESH seconds old), so a replica that just became healthy is
    in the first pull after it, not a tick later."""

    FRESH = 0.3

    def __init__(self, engine: Any = None, env: str = "") -> None:
        self.lock = threading.Lock()
        self.local: List[Record] = []
        self.nets: Dict[str, Any] = {}
        self.node = ""
        self.engine, self.env = engine, env
        self.taken = 0.0

    def refresh(self) -> Tuple[Dict[str, Any], List[Record]]:
        with self.lock:
            if self.engine is not None and time.monotonic() - self.taken > self.FRESH:
                self.nets, self.local = self.engine.snapshot(self.env)
                self.taken = time.monotonic()
            return self.nets, self.local


def make_server(address: str, state: State) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/records":
                self.send_error(404)
                return
            try:
                _, local = state.refresh()
            except Exception:  # the engine restarting: what we had
                local = state.local
            body = json.dumps({"node": state.node, "records": [r.to_dict() for r in local]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: Any) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((address, RECORDS_PORT), Handler)
    server.daemon_threads = True
    return server


def pull(address: str) -> List[Record]:
    with urllib.request.urlopen("http://%s:%d/records" % (address, RECORDS_PORT), timeout=PULL_TIMEOUT) as resp:
        raw = resp.read(MAX_RECORDS_BYTES + 1)
    if len(raw) > MAX_RECORDS_BYTES:
        raise ValueError("records too large")
    doc = json.loads(raw)
    return [r for r in (Record.parse(d) for d in doc.get("records") or []) if r is not None]


def owned_by(cidr: str, slot: int, records: List[Record]) -> List[Record]:
    """A peer's records that it can own: addresses in its own block, in the subnet of the
    network slot they name. A peer cannot make a name of another node's or another
    network's resolve to it (WireGuard already keeps its packets to its own block)."""
    import ipaddress

    from agent.wire.mesh import net_subnet

    return [r for r in records if ipaddress.IPv4Address(r.ip) in net_subnet(cidr, slot, r.k)]


def load_config(paths: MeshPaths) -> Optional[MeshConfig]:
    try:
        with open(paths.config) as fh:
            return MeshConfig.from_dict(json.load(fh))
    except (OSError, ValueError, Exception):
        return None


def run(paths: MeshPaths, env: str, once: bool = False) -> int:
    cfg = load_config(paths)
    if cfg is None:
        print("meshd: no usable %s" % paths.config, file=sys.stderr)
        return 1
    paths.ensure_hosts_dir()
    state = State(Engine(), env)
    state.node = cfg.node
    server = make_server(cfg.address, state)
    threading.Thread(target=server.serve_forever, name="records", daemon=True).start()
    heard: Dict[str, Tuple[float, List[Record]]] = {}  # peer node -> (last success, records)
    last_fw = ""
    ticks = 0
    stopping, wake = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: (stopping.set(), wake.set()))
    # SIGUSR1 (agent `mesh_refresh`): a tick now, e.g. before a deploy starts dependents
    signal.signal(signal.SIGUSR1, lambda *a: wake.set())
    while not stopping.is_set():
        t0, started = time.monotonic(), time.time()
        wake.clear()
        cfg = load_config(paths) or cfg
        problems: List[str] = []
        try:
            nets, local = state.refresh()
        except Exception as exc:  # the engine restarting: keep serving what we had
            problems.append("engine: %s" % exc)
            nets, local = state.nets, state.local
        try:
            if not state.taken:  # no engine answer yet: leave the rules the agent applied
                raise RuntimeError("waiting for the engine")
            text = firewall.restore_text(cfg.interface, cfg.cidr, str(node_block(cfg.cidr, cfg.slot)), cfg.address,
                                         [firewall.LocalNet(n.bridge, n.k, n.internal) for n in nets.values()])
            ticks += 1
            if text != last_fw or ticks % REAPPLY == 0:
                firewall.apply(cfg.interface, text)
                last_fw = text
        except Exception as exc:
            problems.append("firewall: %s" % exc)
            last_fw = ""  # try again next tick
        results: Dict[str, Any] = {}

        def one(peer: Any) -> None:
            from agent.wire.mesh import node_address

            try:
                results[peer.node] = owned_by(cfg.cidr, peer.slot, pull(node_address(cfg.cidr, peer.slot)))
            except Exception as exc:
                results[peer.node] = exc

        threads = [threading.Thread(target=one, args=(p,), daemon=True) for p in cfg.peers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(PULL_TIMEOUT + 1)
        now = time.monotonic()
        peers_status = []
        for p in cfg.peers:
            got = results.get(p.node)
            if isinstance(got, list):
                heard[p.node] = (now, got)
            last = heard.get(p.node)
            fresh = last is not None and now - last[0] <= STALE
            peers_status.append({"node": p.node, "reachable": fresh,
                                 "last_seen_age": None if last is None else round(now - last[0], 1),
                                 "records": len(last[1]) if last else 0,
                                 "error": "" if isinstance(got, list) else str(got)[:200]})
        for node in list(heard):
            if node not in {p.node for p in cfg.peers}:
                del heard[node]
        remote = [r for node, (t, recs) in heard.items() if now - t <= STALE for r in recs]
        changed = write_atomic(paths.hosts, hosts_text(local, remote), 0o644)
        err = dns.ensure(paths, cfg.address)
        if changed and not err:
            dns.reload(paths)
        if err:
            problems.append(err)
        write_atomic(paths.status, json.dumps({"pid": os.getpid(), "code": os.environ.get("ORCH_MESHD_CODE"),
                                               "time": time.time(), "tick_started": started, "peers": peers_status,
                                               "local_records": len(local), "problems": problems}), 0o644)
        if once:
            break
        wake.wait(max(0.0, TICK - (time.monotonic() - t0)))
    server.shutdown()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="meshd")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--env", required=True)
    args = ap.parse_args(argv)
    return run(MeshPaths(args.dir), args.env)


if __name__ == "__main__":
    sys.exit(main())
