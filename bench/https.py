"""HTTPS through the ingress against plain HTTP through the same ingress, on the lab.

Project bench-https on PROD: `web` (busybox httpd serving a 1 kB file), one replica on
prod-1, behind prod-1's HAProxy twice: on its own plain-HTTP port (PLAIN_PORT, the
ingress as before issue 15) and by host name on 443 with an ACME certificate from the
lab's pebble (`hosts: [NAME]`, `tls: auto`). The load is h2load (nghttp2-client) from
this machine, HTTP/1.1 (--h1), CONNECTIONS keep-alive connections, REQUESTS requests,
once over http://prod-1:PLAIN_PORT and once over https://NAME (--connect-to prod-1:443,
so SNI and Host say NAME). Per run: requests/s, mean request time and mean connect time
(TCP, plus the TLS handshake for HTTPS) from h2load's own report. Both share the
machine's 2 cores with HAProxy, the node's engine and the lab: the ratio is the figure,
not the absolute rate.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from bench.common import ROOT, Goal, Row, final, lab_env, med, orch, run, unavailable

PROJECT = "bench-https"
NAME = "bench-https.lab.test"
PLAIN_PORT = 39090
REQUESTS = 20000
CONNECTIONS = 10
H2LOAD = "h2load"

COMPOSE = f"""\
services:
  web:
    image: busybox
    init: true
    stop_grace_period: 1s
    command: ["sh", "-c", "mkdir -p /www && head -c 1024 /dev/zero > /www/small && exec httpd -f -p 80 -h /www"]
    ports: ["{PLAIN_PORT}:80"]
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1/small"]
      interval: 1s
      timeout: 2s
      retries: 20
    deploy:
      placement: {{constraints: ["node.labels.zone == a"]}}
    x-orch:
      ingress: {{port: {PLAIN_PORT}, hosts: ["{NAME}"], tls: auto, health: /small}}
"""

RPS_GOAL = Goal(">= 0.5x", 0.5, on="ratio", higher_is_better=True)


def parse_h2load(text: str) -> dict[str, float]:
    """requests/s, failed count, mean request and connect times (ms) from h2load's report."""
    out: dict[str, float] = {}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", text)
    if m:
        out["total"], out["succeeded"], out["failed"] = (float(g) for g in m.groups())
    for key, label in (("request_ms", "time for request"), ("connect_ms", "time for connect")):
        m = re.search(label + r":\s+\S+\s+\S+\s+(\S+)", text)
        if m:
            out[key] = _ms(m.group(1))
    return out


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    number, unit = float(m.group(1)), m.group(2)
    return number / 1000 if unit == "us" else number * 1000 if unit == "s" else number


def _h2load(url: str, connect_to: str | None = None) -> dict[str, float]:
    argv = [H2LOAD, "--h1", "-n", str(REQUESTS), "-c", str(CONNECTIONS), url]
    if connect_to:
        argv[1:1] = ["--connect-to", connect_to]
    _, cp = run(argv, timeout=300)
    got = parse_h2load(cp.stdout)
    if got.get("succeeded") != REQUESTS:
        raise RuntimeError(f"h2load {url}: {got} (of {REQUESTS}):\n{cp.stdout[-1500:]}")
    return got


def https(runs: int) -> list[Row]:
    from orchestrator.lab import lab_info
    from orchestrator.lab.dns import add_name, remove_name

    title = f"HTTPS through the ingress vs plain HTTP, requests/s, busybox httpd 1 kB, one node (prod-1), " \
            f"{CONNECTIONS} keep-alive connections"
    if shutil.which(H2LOAD) is None:
        return [unavailable(title, "not available: h2load (apt-get install nghttp2-client)", "req/s", RPS_GOAL)]
    lab = lab_info()
    prod1 = lab.node("prod-1")
    env = lab_env()
    with tempfile.TemporaryDirectory() as tmp:
        app = Path(tmp) / "https"
        (app / "environments").mkdir(parents=True)
        shutil.copy(ROOT / "environments" / "prod.yaml", app / "environments" / "prod.yaml")
        (app / "compose.yaml").write_text(COMPOSE)
        down = orch("down", "--env", "prod", "-p", PROJECT, "--json")
        add_name(NAME, [prod1.address])
        try:
            _, cp = run(orch("up", "--env", "prod", "-p", PROJECT, "--json"), app, env, check=False)
            fin = final(cp.stdout)
            if cp.returncode != 0:
                err = (fin.get("error") or {}).get("message") or cp.stderr[-500:]
                raise RuntimeError(f"`orch up` of {PROJECT} failed (exit {cp.returncode}): {err[:500]}")
            plain, tls = [], []
            for _ in range(runs):
                plain.append(_h2load(f"http://{prod1.address}:{PLAIN_PORT}/small"))
                tls.append(_h2load(f"https://{NAME}/small", connect_to=f"{prod1.address}:443"))
        finally:
            run(down, app, env, check=False)
            remove_name(NAME)

    def col(results: list[dict[str, float]], key: str) -> list[float]:
        return [r[key] for r in results]

    req_diff = med(col(tls, "request_ms")) - med(col(plain, "request_ms"))
    conn_diff = med(col(tls, "connect_ms")) - med(col(plain, "connect_ms"))
    note = (f"on the same HAProxy (the service's own port {PLAIN_PORT}); h2load --h1 -n {REQUESTS} -c {CONNECTIONS} "
            f"from this machine; HTTPS: ECDSA P-256 certificate from the lab's pebble, SNI and Host {NAME}; busybox "
            f"httpd closes every connection, so HAProxy opens one to it per request on both paths (the app, not TLS, "
            f"is the limit here); the load generator, HAProxy and the node share 2 cores")
    return [
        Row(title, "req/s", samples=col(tls, "rps"), baseline=col(plain, "rps"), baseline_name="plain HTTP through the same ingress",
            goal=RPS_GOAL, note=note),
        Row("mean request time (keep-alive), HTTPS vs plain HTTP", "ms", samples=col(tls, "request_ms"),
            baseline=col(plain, "request_ms"), level=1, note=f"HTTPS - HTTP: {req_diff:+.3f} ms per request"),
        Row("mean connection set-up (TCP + TLS handshake), HTTPS vs plain HTTP (TCP)", "ms",
            samples=col(tls, "connect_ms"), baseline=col(plain, "connect_ms"), level=1,
            note=f"HTTPS - HTTP: {conn_diff:+.3f} ms per new connection; h2load's {CONNECTIONS} connections, opened "
                 "together at the start of each run"),
    ]
