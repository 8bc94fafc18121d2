"""Round trips between the controller and the nodes (`rtt`), measured with 50 ms of latency.

This machine's kernel has no sch_netem (`tc qdisc add ... netem` fails: "Specified qdisc
kind is unknown") and Debian packages no toxiproxy, so the latency comes from a small
delaying TCP proxy (`DelayProxy`, asyncio): every chunk read from one side is written to
the other RTT/2 seconds later, in order, in each direction (50 ms RTT = 25 ms each way);
nothing else is throttled. One runs in each prod node's network namespace (`nsenter
--net=/run/netns/orch-lab.NODE`), listening on PROXY_PORT of the node's own address and
forwarding to its sshd; an environment file of the measurement's own names that port, and
a known_hosts file of its own names the node's key as `[ADDRESS]:PROXY_PORT` (what OpenSSH
and paramiko look up for a port other than 22): the node's real key, still checked
strictly. The node's address is unchanged, so its mesh endpoint, and the mesh, are too.

Measured, on prod (2 nodes), at 0 ms (sshd directly) and 50 ms RTT: a no-op `orch up` and a
one-service change (one service's environment), wall time of the process and the agent
round trips after the connect (`round_trips` of the final object, the busier node); for
shop (5 services) and for generated apps of 5 and 30 busybox services, to show the count
does not grow with the services. Runs where `orch up` waited for another deployer's lock,
or re-applied the environment's mesh another project changed (a shared lab), are not
counted (and are said so).

    python -m bench.netem proxy --listen 10.250.0.31:2250 --to 10.250.0.31:22 --delay-ms 25
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BIN, ROOT, Goal, Row, final, lab_env, orch, run

PROXY_PORT = 2250
DELAY_MS = 25  # each way: 50 ms round trip
PROD = ("prod-1", "prod-2")
LOCK_WAITED = 0.3  # s in the lock phase: another deployer held it, the run is not counted
PORTS = {"WEB_PORT": "39088", "API_PORT": "39089", "DB_PORT": "39090"}  # shop's, away from the other benches


# ----------------------------------------------------------------------------- the proxy


class DelayProxy:
    """TCP proxy that delays every chunk by `delay` seconds in each direction, order kept."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay: float):
        self.listen, self.target, self.delay = listen, target, delay

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def forward() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        task = asyncio.create_task(forward())
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
            await task
        except (ConnectionError, OSError):
            task.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def run(self) -> None:
        server = await asyncio.start_server(self._serve, *self.listen)
        async with server:
            await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.netem")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("proxy", help="a delaying TCP proxy (runs until killed)")
    p.add_argument("--listen", required=True, type=_address)
    p.add_argument("--to", required=True, type=_address)
    p.add_argument("--delay-ms", type=float, default=DELAY_MS, help="added to each direction")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
    asyncio.run(DelayProxy(args.listen, args.to, args.delay_ms / 1000).run())


# ----------------------------------------------------------------------------- the lab side


class Proxies:
    """A DelayProxy in each prod node's network namespace, in front of its sshd."""

    def __init__(self, lab, delay_ms: float = DELAY_MS, port: int = PROXY_PORT):
        self.lab, self.delay_ms, self.port = lab, delay_ms, port
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Proxies":
        try:
            for name in PROD:
                node = self.lab.node(name)
                self.procs.append(subprocess.Popen(
                    ["nsenter", f"--net={node.netns}", str(BIN / "python"), "-m", "bench.netem", "proxy",
                     "--listen", f"{node.address}:{self.port}", "--to", f"{node.address}:{node.ssh_port}",
                     "--delay-ms", str(self.delay_ms)], cwd=ROOT, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL))
            for name in PROD:
                _wait_listening(self.lab.node(name).address, self.port)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:  # only the processes started here, by their pid
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def _wait_listening(host: str, port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"the delaying proxy on {host}:{port} did not start")
            time.sleep(0.1)


def proxied_known_hosts(lab, dest: Path, port: int = PROXY_PORT) -> Path:
    """The lab's known_hosts plus each prod node's own key under `[ADDRESS]:PORT`."""
    lines = Path(lab.known_hosts).read_text().splitlines()
    addresses = {lab.node(n).address for n in PROD}
    extra = [f"[{parts[0]}]:{port} {' '.join(parts[1:])}" for parts in (ln.split() for ln in lines)
             if len(parts) >= 3 and parts[0] in addresses]
    if len(extra) < len(addresses):
        raise RuntimeError(f"{lab.known_hosts} lacks a prod node's key")
    dest.write_text("\n".join(lines + extra) + "\n")
    dest.chmod(0o600)
    return dest


def proxied_env(env_file: Path, dest: Path, known_hosts: Path, lab, port: int = PROXY_PORT) -> Path:
    """environments/prod.yaml with every prod node's SSH through its proxy."""
    text = env_file.read_text()
    for name in PROD:
        address = re.escape(lab.node(name).address)
        text, n = re.subn(rf"(?m)^(\s*)host: {address}\s*$", rf"\g<0>\n\g<1>port: {port}", text)
        if n != 1:
            raise RuntimeError(f"{env_file}: no `host: {lab.node(name).address}` line")
    text, n = re.subn(r"(?m)^(\s*known_hosts:).*$", rf"\g<1> {known_hosts}", text)
    if n != 1:
        raise RuntimeError(f"{env_file}: no ssh.known_hosts line")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "prod.yaml").write_text(text)
    return dest


def many_services(services: int) -> str:
    """A project of `services` busybox services, one replica each, spread over the nodes;
    the last one's environment carries ROUND (the one-service change). The others wait for
    s00, which creates the project's network first: the agents' rollouts of one wave all
    ensure it, and on a mesh-enabled environment (its subnets fixed) those that create it
    at the same moment collide ("Pool overlaps"; see the report)."""
    out = ["services:"]
    for i in range(services):
        out += [f"  s{i:02d}:", "    image: busybox:latest", "    command: [\"sleep\", \"86400\"]", "    init: true",
                "    stop_grace_period: 1s"]
        if i:
            out += ["    depends_on: [s00]"]
        if i == services - 1:
            out += ["    environment: {ROUND: \"${ROUND:-0}\"}"]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- the measurement


class App:
    """One project on prod, deployed once directly, then re-run at 0 and 50 ms."""

    def __init__(self, name: str, folder: Path, envs: Path, change_var: str, env: dict):
        self.name, self.dir, self.envs, self.change_var, self.env = name, folder, envs, change_var, env
        self.round = 0
        self.skipped: list[str] = []

    def up(self, proxied: bool, change: bool = False) -> tuple[float, dict]:
        args = ["up", "--env", "prod", "-p", self.name, "--json"]
        if proxied:
            args += ["--environments", str(self.envs)]
        if change:
            self.round += 1
        env = {**self.env, self.change_var: str(5 + self.round)}
        took, cp = run(orch(*args), self.dir, env)
        return took, final(cp.stdout)

    def sample(self, change: bool, runs: int) -> dict[bool, list[tuple[float, dict]]]:
        """`runs` counted runs at 0 ms and at 50 ms (proxied), alternating, so that the
        shared machine's load weighs on both alike."""
        out: dict[bool, list[tuple[float, dict]]] = {False: [], True: []}
        tries = 0
        while min(len(v) for v in out.values()) < runs and tries < 6 * runs:
            for proxied in (False, True):
                if len(out[proxied]) >= runs:
                    continue
                tries += 1
                took, fin = self.up(proxied, change)
                if fin.get("status") != "ok":
                    raise RuntimeError(f"orch up failed: {json.dumps(fin)[:800]}")
                if (fin.get("timings") or {}).get("lock", 0) > LOCK_WAITED:
                    self.skipped.append("waited for another deployer's lock")
                    continue
                if (fin.get("plan") or {}).get("mesh"):
                    self.skipped.append("re-applied the environment's mesh")
                    continue
                if change and len(fin.get("changed") or []) != 1:
                    raise RuntimeError(f"not a one-service change: {fin.get('changed')}")
                if not change and not fin.get("noop"):
                    raise RuntimeError(f"not a no-op: {json.dumps(fin)[:800]}")
                out[proxied].append((took, fin))
        return out

    def down(self) -> None:
        run(orch("down", "--env", "prod", "-p", self.name, "--volumes", "--json"), self.dir, self.env, check=False)


def after_connect(fin: dict) -> int:
    """The busier node's agent round trips after the connect."""
    trips = fin.get("round_trips") or {}
    return max((n["after_connect"]["round_trips"] for n in trips.values()), default=-1)


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _phases(samples: list[tuple[float, dict]]) -> str:
    keys = ("connect", "lock", "ledger", "observe", "plan", "images", "apply")
    meds = {k: _med([(f.get("timings") or {}).get(k, 0.0) for _, f in samples]) for k in keys}
    return ", ".join(f"{k} {v:.2f}s" for k, v in meds.items() if v >= 0.005)


def rtt(runs: int) -> list[Row]:
    from bench.deploy import shop_copy
    from orchestrator.lab import lab_info

    lab = lab_info()
    env = lab_env(**PORTS)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-rtt-") as tmp:
        tmp = Path(tmp)
        known = proxied_known_hosts(lab, tmp / "known_hosts")
        shop = shop_copy(tmp)
        apps = [App("bench-rtt-shop", shop, proxied_env(shop / "environments" / "prod.yaml", tmp / "envs-shop",
                                                         known, lab), "WORKER_INTERVAL", env)]
        for n in (5, 30):
            d = tmp / f"many{n}"
            d.mkdir()
            (d / "compose.yaml").write_text(many_services(n))
            shutil.copytree(ROOT / "environments", d / "environments")
            apps.append(App(f"bench-rtt-{n}", d, proxied_env(d / "environments" / "prod.yaml", tmp / f"envs-{n}",
                                                              known, lab), "ROUND", env))
        got: dict[tuple[str, bool, bool], list[tuple[float, dict]]] = {}
        try:
            with Proxies(lab):  # 0 ms goes to sshd directly, beside them
                for app in apps:
                    app.up(False)  # from nothing, untimed
                    for change in (False, True):
                        for proxied, samples in app.sample(change, runs).items():
                            got[(app.name, proxied, change)] = samples
        finally:
            for app in apps:
                app.down()
        rows += _rows(apps, got)
    return rows


def _rows(apps: list[App], got: dict) -> list[Row]:
    shop, five, forty = apps
    rows = []
    for change, what in ((False, "no-op"), (True, "one-service change (one service's environment)")):
        direct, slow = got[(shop.name, False, change)], got[(shop.name, True, change)]
        wall = Row(f"`orch up` {what}, shop on prod (2 nodes): 50 ms RTT vs 0 ms", "s",
                   samples=[t for t, _ in slow], baseline=[t for t, _ in direct],
                   baseline_name="the same at 0 ms (sshd directly, no proxy)")
        wall.note = (f"wall time of the process; 50 ms RTT by a delaying proxy in each node's namespace (25 ms each "
                     f"way; bench/netem.py). Phases at 50 ms: {_phases(slow)}; at 0 ms: {_phases(direct)}")
        trips = Row(f"agent round trips after the connect, {what}, shop, the busier node", "RT",
                    samples=[after_connect(f) for _, f in slow + direct], level=1,
                    goal=Goal("<= 2" if not change else "<= 8", 2 if not change else 8))
        reqs = [max(n["after_connect"]["requests"] for n in f["round_trips"].values()) for _, f in slow + direct]
        trips.note = (f"requests after the connect: {_med(reqs):.0f} (median); requests pipelined together cost one "
                      "round trip; `round_trips` of the final object")
        rows += [wall, trips]
    for change, what in ((False, "no-op"), (True, "one-service change")):
        few, many = got[(five.name, True, change)], got[(forty.name, True, change)]
        trips = Row(f"agent round trips after the connect, {what}: 30 services vs 5 (prod, 50 ms RTT)", "RT",
                    samples=[after_connect(f) for _, f in many], baseline=[after_connect(f) for _, f in few],
                    baseline_name="the same app with 5 services", goal=Goal("<= 1x (does not grow)", 1.0, on="ratio"))
        wall = Row(f"`orch up` {what}, 30 busybox services vs 5, prod, 50 ms RTT", "s", level=1,
                   samples=[t for t, _ in many], baseline=[t for t, _ in few],
                   baseline_name="5 services")
        wall.note = f"phases, 30 services: {_phases(many)}; 5 services: {_phases(few)}"
        rows += [trips, wall]
    skipped = [s for a in apps for s in a.skipped]
    if skipped:
        rows[0].note += f"; {len(skipped)} run(s) of the measurement not counted: " + ", ".join(sorted(set(skipped)))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
