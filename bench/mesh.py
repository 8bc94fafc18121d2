"""The service mesh between two nodes: HTTP latency and TCP throughput on PROD (prod-1 and
prod-2), through WireGuard, against the same containers on one node and against the raw
lab bridge (no mesh).

Project bench-mesh (busybox only), deployed with `orch up` to prod, mesh on (the default
for two nodes):

- `server` on prod-1 (zone a): busybox httpd serving a 1 kB file (published on
  39086 for the bridge's request), and `nc -ll -e dd` sending 200 MB of zeros to every
  connection on port 5001;
- `client-a` on prod-1 and `client-b` on prod-2 (zone b): idle busybox containers.

Each run measures, in this order:

- latency: N sequential `wget` of the 1 kB file, in a loop inside the client (one
  `docker exec` per N requests, so exec's own cost is not counted), each request's time
  taken from the shell's $EPOCHREALTIME before and after it (the shell's builtin echo:
  no process is started for the timing). Paths: same node (client-a -> `server`, by its
  Compose name: Docker's DNS, the bridge); cross node (client-b -> `server`: the mesh's
  DNS, WireGuard); cross node by the server's mesh address (no name lookup); the raw
  bridge (busybox in prod-2's node namespace, `nsenter --net`, -> the published port
  on prod-1's node address: the lab bridge and Docker's port forwarding, no mesh). One
  request's time includes starting busybox wget and httpd's fork, the same on every path.
- throughput: one TCP stream of 200 MB from the server's `nc` to the client's
  `nc | wc -c` (bytes counted: a short transfer fails the run); same node, cross node,
  and the raw bridge: `nc -ll` in prod-1's node namespace to `nc` in prod-2's (both
  busybox, `nsenter --net`, over the lab bridge, no Docker, no mesh).

Reported: latency medians and p95 (cross - same, in ms: the goal is within 1 ms) and
throughput (cross / bridge: the goal is at least half), the WireGuard implementation the
nodes run (the lab's kernel has no wireguard module: wireguard-go in user space), its
CPU time per transfer, and the load average around the measurement.

Host ports 39086 (httpd) and 39087 (the bridge's nc). Project: bench-mesh.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ROOT, Goal, Row, final, lab_env, med, orch, run

PROJECT = "bench-mesh"
HTTP_PORT = 39086  # the server's httpd, published on prod-1 (the bridge's latency)
NC_PORT = 39087  # nc -ll in prod-1's node namespace (the bridge's throughput)
MB = 1_000_000
BLOCK, BLOCKS = 65536, 3200  # 200 MiB (209,715,200 bytes) per transfer
TRANSFER = BLOCK * BLOCKS
REQUESTS = 200  # per path and run
WARMUP = 5
BUSYBOX = "/usr/bin/busybox"  # the host's: the same Debian busybox the lab's image holds
SERVE = f"nc -ll -p {{port}} -e dd if=/dev/zero bs={BLOCK} count={BLOCKS}"

COMPOSE = """\
services:
  server:
    image: busybox
    init: true
    stop_grace_period: 1s
    command:
      - sh
      - -c
      - mkdir -p /www && head -c 1024 /dev/zero > /www/small && (SERVE 2>/dev/null &) && exec httpd -f -p 80 -h /www
    ports:
      - "HTTP_PORT:80"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/small"]
      interval: 1s
      timeout: 2s
      retries: 20
    deploy:
      placement:
        constraints: ["node.labels.zone == a"]
  client-a:
    image: busybox
    init: true
    stop_grace_period: 1s
    command: ["sleep", "86400"]
    deploy:
      placement:
        constraints: ["node.labels.zone == a"]
  client-b:
    image: busybox
    init: true
    stop_grace_period: 1s
    command: ["sleep", "86400"]
    deploy:
      placement:
        constraints: ["node.labels.zone == b"]
""".replace("SERVE", SERVE.format(port=5001)).replace("HTTP_PORT", str(HTTP_PORT))

LATENCY = ("mesh: HTTP request latency, cross node (prod-2 -> prod-1, by Compose name, WireGuard) vs same node "
           "(prod-1), busybox wget of a 1 kB file, median")
LATENCY_GOAL = Goal("<= +1 ms", 1.0, on="difference")
THROUGHPUT = ("mesh: TCP throughput of one stream (200 MiB, busybox nc), cross node through WireGuard vs the raw "
              "lab bridge between the node namespaces")
THROUGHPUT_GOAL = Goal(">= 0.5x", 0.5, on="ratio", higher_is_better=True)


# ----------------------------------------------------------------------------- pure: scripts and parsing


def latency_script(url: str, n: int = REQUESTS, warmup: int = WARMUP) -> str:
    """A busybox sh loop: `warmup` untimed requests, then n timed ones; prints n + 1
    timestamps ($EPOCHREALTIME, seconds with microseconds), and FAIL for a failed request."""
    get = f"wget -q -O /dev/null '{url}' || echo FAIL"
    return (f"i=0; while [ $i -lt {warmup} ]; do wget -q -O /dev/null '{url}'; i=$((i+1)); done; "
            f"i=0; echo $EPOCHREALTIME; while [ $i -lt {n} ]; do {get}; echo $EPOCHREALTIME; i=$((i+1)); done")


def transfer_script(host: str, port: int) -> str:
    """Read one stream to its end; prints `bytes start end` (start and end: $EPOCHREALTIME)."""
    return f"t0=$EPOCHREALTIME; n=$(nc {host} {port} | wc -c); t1=$EPOCHREALTIME; echo \"$n $t0 $t1\""


def request_times(stdout: str, n: int) -> list[float]:
    """The n request times (ms) from latency_script's output; raises when a request failed
    or the output is not n + 1 timestamps."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    failed = sum(1 for ln in lines if ln == "FAIL")
    if failed:
        raise RuntimeError(f"{failed} of {n} requests failed")
    try:
        stamps = [float(ln) for ln in lines]
    except ValueError:
        raise RuntimeError(f"not a timestamp in the loop's output: {stdout[:300]!r}") from None
    if len(stamps) != n + 1:
        raise RuntimeError(f"expected {n + 1} timestamps, got {len(stamps)}")
    return [(b - a) * 1000.0 for a, b in zip(stamps, stamps[1:])]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank (a value that occurred)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(len * q / 100), at least 1
    return ordered[int(rank) - 1]


def transfer_rate(stdout: str, expected: int = TRANSFER) -> float:
    """MB/s (10^6 bytes) from transfer_script's output; raises unless `expected` bytes arrived."""
    try:
        got_, t0_, t1_ = stdout.split()
        got, t0, t1 = int(got_), float(t0_), float(t1_)
    except ValueError:
        raise RuntimeError(f"not `bytes start end`: {stdout[:300]!r}") from None
    if got != expected:
        raise RuntimeError(f"the transfer delivered {got:,} of {expected:,} bytes")
    if t1 <= t0:
        raise RuntimeError(f"the transfer took no time: {stdout!r}")
    return got / (t1 - t0) / MB


def cpu_seconds(stat: str, ticks: int) -> float:
    """utime + stime of a /proc/PID/stat line, in seconds."""
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / ticks


# ----------------------------------------------------------------------------- the lab


def _wireguard_go() -> dict[int, str]:
    """pid -> interface of every wireguard-go process serving a prod mesh interface."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"wireguard-go") and len(argv) > 1 and argv[1] == b"orch-prod":
            found[int(d.name)] = argv[1].decode()
    return found


def _wg_cpu(pids) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), ticks)
        except (OSError, IndexError, ValueError):
            pass
    return total


def _wireguard_kind(netns: str) -> str:
    cp = subprocess.run(["nsenter", f"--net={netns}", "ip", "-d", "link", "show", "orch-prod"],
                        capture_output=True, text=True)
    if cp.returncode != 0:
        return "no orch-prod interface"
    if "wireguard" in cp.stdout:
        return "the kernel's WireGuard"
    if " tun " in cp.stdout or "tun type" in cp.stdout:
        return "wireguard-go (user space)"
    return "unknown"


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


class Lab:
    def __init__(self, lab):
        self.prod1, self.prod2 = lab.node("prod-1"), lab.node("prod-2")

    def docker(self, node, *args: str, timeout: float = 120) -> str:
        _, cp = run(["docker", "-H", node.docker_host, *args], timeout=timeout)
        return cp.stdout

    def container(self, node, service: str) -> str:
        names = self.docker(node, "ps", "--filter", f"name=^{PROJECT}-{service}-", "--format", "{{.Names}}").split()
        if len(names) != 1:
            raise RuntimeError(f"expected one {service} container on {node.name}, found {names}")
        return names[0]

    def in_container(self, node, name: str, script: str, timeout: float = 120) -> str:
        return self.docker(node, "exec", name, "sh", "-c", script, timeout=timeout)

    def in_node(self, node, script: str, timeout: float = 120) -> str:
        _, cp = run(["nsenter", f"--net={node.netns}", BUSYBOX, "sh", "-c", script], timeout=timeout)
        return cp.stdout


# ----------------------------------------------------------------------------- the measurement


def mesh(runs: int) -> list[Row]:
    from orchestrator.lab import lab_info

    lab = Lab(lab_info())
    env = lab_env()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "mesh"
        (app / "environments").mkdir(parents=True)
        shutil.copy(ROOT / "environments" / "prod.yaml", app / "environments" / "prod.yaml")
        (app / "compose.yaml").write_text(COMPOSE)
        down = orch("down", "--env", "prod", "-p", PROJECT, "--json")
        run(down, app, env, check=False)
        bridge = None
        try:
            _, cp = run(orch("up", "--env", "prod", "-p", PROJECT, "--json"), app, env, check=False)
            fin = final(cp.stdout)
            if cp.returncode != 0 or fin.get("status") != "ok":
                err = (fin.get("error") or {}).get("message") or (cp.stderr.strip().splitlines() or ["?"])[-1]
                raise RuntimeError(f"`orch up` of {PROJECT} failed (exit {cp.returncode}): {err[:500]}")
            # The bridge's sender: busybox nc in prod-1's node namespace, stopping by itself
            # after 5 minutes at the latest (and killed by its pid below).
            bridge = subprocess.Popen(
                ["nsenter", f"--net={lab.prod1.netns}", BUSYBOX, "timeout", "300", BUSYBOX,
                 *SERVE.format(port=NC_PORT).split()],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return _measure(runs, lab)
        finally:
            if bridge is not None:
                bridge.kill()
                bridge.wait()
            run(down, app, env, check=False)


def _ready(lab: Lab, client: str, node, url: str, within: float = 30.0) -> None:
    """Wait until `url` answers from the client (the mesh's records arrive within seconds)."""
    deadline = time.monotonic() + within
    while True:
        try:
            lab.in_container(node, client, f"wget -q -O /dev/null '{url}'", timeout=10)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} does not answer from {client} on {node.name} within {within:.0f} s")
            time.sleep(0.5)


def _measure(runs: int, lab: Lab) -> list[Row]:
    p1, p2 = lab.prod1, lab.prod2
    server = lab.container(p1, "server")
    client_a, client_b = lab.container(p1, "client-a"), lab.container(p2, "client-b")
    nets = json.loads(lab.docker(p1, "inspect", server, "--format", "{{json .NetworkSettings.Networks}}"))
    mesh_ip = next(iter(nets.values()))["IPAddress"]
    wg = _wireguard_kind(p1.netns)
    wg_pids = _wireguard_go()
    by_name, by_ip = "http://server/small", f"http://{mesh_ip}/small"
    bridge_url = f"http://{p1.address}:{HTTP_PORT}/small"
    _ready(lab, client_a, p1, by_name)
    _ready(lab, client_b, p2, by_name)

    paths = {  # latency: where the loop runs, and what it asks
        "same": lambda s: lab.in_container(p1, client_a, s),
        "cross": lambda s: lab.in_container(p2, client_b, s),
        "cross_ip": lambda s: lab.in_container(p2, client_b, s),
        "bridge": lambda s: lab.in_node(p2, s),
    }
    urls = {"same": by_name, "cross": by_name, "cross_ip": by_ip, "bridge": bridge_url}
    medians: dict[str, list[float]] = {k: [] for k in paths}
    p95s: dict[str, list[float]] = {k: [] for k in paths}
    means: dict[str, list[float]] = {k: [] for k in paths}
    rates: dict[str, list[float]] = {"same": [], "cross": [], "bridge": []}
    wg_cpu: list[float] = []
    load_start = _loadavg()
    for _ in range(runs):
        for key, where in paths.items():
            times = request_times(where(latency_script(urls[key])), REQUESTS)
            medians[key].append(statistics.median(times))
            means[key].append(statistics.fmean(times))  # = the loop's wall time / REQUESTS
            p95s[key].append(percentile(times, 95))
        rates["same"].append(transfer_rate(lab.in_container(p1, client_a, transfer_script("server", 5001))))
        cpu0 = _wg_cpu(wg_pids)
        rates["cross"].append(transfer_rate(lab.in_container(p2, client_b, transfer_script("server", 5001))))
        if wg_pids:
            wg_cpu.append(_wg_cpu(wg_pids) - cpu0)
        rates["bridge"].append(transfer_rate(lab.in_node(p2, transfer_script(p1.address, NC_PORT))))
    load = f"load average (1 min) {load_start} at the start, {_loadavg()} at the end, on {os.cpu_count()} cores"

    def ms(key: str, values: dict) -> str:
        return f"{med(values[key]):.2f} ms"

    diff = med(medians["cross"]) - med(medians["same"])
    lookup = med(medians["cross"]) - med(medians["cross_ip"])
    latency = Row(LATENCY, "ms", samples=medians["cross"], baseline=medians["same"],
                  baseline_name="same node: client-a -> server on prod-1, by name (Docker's DNS, one bridge)",
                  goal=LATENCY_GOAL,
                  note=(f"cross - same: {diff:+.2f} ms, of which the name lookup {lookup:+.2f} ms (by the "
                        f"server's mesh address, cross - same is {med(medians['cross_ip']) - med(medians['same']):+.2f}"
                        f" ms): the client asks Docker's embedded DNS for `server.n<k>.orch.internal` first "
                        f"(ndots:1), which forwards it to the node's dnsmasq (one round: docs/networking.md); "
                        f"per run the median of {REQUESTS} sequential "
                        f"requests timed inside the client with $EPOCHREALTIME (each includes starting wget and "
                        f"httpd's fork); WireGuard: {wg}; {load}; "
                        "reproduce: `.venv/bin/python -m bench.run --only mesh` (lab up)"))
    p95 = Row("p95 of the same requests, cross node vs same node", "ms", samples=p95s["cross"],
              baseline=p95s["same"], level=1,
              note=(f"cross - same: {med(p95s['cross']) - med(p95s['same']):+.2f} ms; the means (the loop's wall "
                    f"time / {REQUESTS}): cross {ms('cross', means)}, same {ms('same', means)}, cross by address "
                    f"{ms('cross_ip', means)}, raw bridge {ms('bridge', means)}"))
    vs_bridge = Row("cross node through the mesh, by the server's mesh address (no name lookup), vs the raw lab "
                    "bridge (busybox wget in prod-2's node namespace -> port published on prod-1's address)", "ms",
                    samples=medians["cross_ip"], baseline=medians["bridge"], level=1,
                    note=(f"medians: cross by name {ms('cross', medians)}, by address {ms('cross_ip', medians)}, "
                          f"raw bridge {ms('bridge', medians)} (p95 {ms('bridge', p95s)}), same node "
                          f"{ms('same', medians)}"))
    cpu = (f"; wireguard-go's CPU time per cross-node transfer (both nodes): {med(wg_cpu):.1f} s in "
           f"{TRANSFER / MB / med(rates['cross']):.1f} s: it encrypts in user space, and the machine's "
           f"{os.cpu_count()} cores carry both nodes' wireguard-go, both nc pipelines and whatever else runs, "
           "where the bridge only copies" if wg_cpu else "")
    throughput = Row(THROUGHPUT, "MB/s", samples=rates["cross"], baseline=rates["bridge"],
                     baseline_name=("the raw lab bridge: busybox nc in prod-1's node namespace -> nc | wc -c in "
                                    "prod-2's (nsenter --net; no Docker, no mesh)"),
                     goal=THROUGHPUT_GOAL,
                     note=(f"cross node: server's nc on prod-1 -> client-b's nc | wc -c on prod-2 by name; "
                           f"{TRANSFER:,} bytes per transfer, each counted; MB = 10^6 bytes; WireGuard: {wg}"
                           f"{cpu}; {load}"))
    same = Row("same node (server -> client-a on prod-1, one Docker bridge) vs the raw lab bridge", "MB/s",
               samples=rates["same"], baseline=rates["bridge"], level=1)
    return [latency, p95, vs_bridge, throughput, same]


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps([r.to_json() for r in mesh(int(sys.argv[1]) if len(sys.argv) > 1 else 1)], indent=1))
