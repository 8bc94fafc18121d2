"""The lab's resolver: Debian's dnsmasq on the bridge address, answering names under
lab.test from files in a hosts directory, and nothing else.

The ACME server (acme.py) resolves the names it validates through it (pebble
-dnsserver), so an HTTP-01 challenge for shop.lab.test reaches the node(s) the name
is mapped to. A test adds a name with `add_name("shop.lab.test", [node addresses])`:
one hosts-format file per name in /var/lib/orch-lab/dns/hosts, which dnsmasq re-reads
on change (--hostsdir), no restart. Names under lab.test that no file lists are
NXDOMAIN (--local); any other name is refused: dnsmasq has no upstream (--no-resolv),
so nothing outside the lab is ever asked.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import struct
import time
from pathlib import Path

from orchestrator.errors import InputError, OrchError, Problem
from orchestrator.lab import proc
from orchestrator.lab.model import ACME_DOMAIN, DNS_PORT, LabSpec

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
PROBE = f"orch-lab-probe.{ACME_DOMAIN}"  # never added: the resolver answers NXDOMAIN


def dnsmasq_argv(spec: LabSpec) -> list[str]:
    p = spec.paths
    return [
        "dnsmasq",
        "--keep-in-foreground",  # proc.spawn keeps its pid; output to the lab log
        "--conf-file=/dev/null",  # not /etc/dnsmasq.conf (Debian's dnsmasq package)
        f"--pid-file={p.dns_pidfile}",
        f"--listen-address={spec.host_address}",
        f"--port={DNS_PORT}",
        "--bind-interfaces",  # only the bridge address: other labs, the host's resolver
        "--no-resolv",  # no upstream: names it does not know are refused, not forwarded
        "--no-hosts",
        # Its own argument (not --hostsdir=DIR): a path of the lab's own, as
        # down.lab_processes and the e2e leftover checks look for.
        "--hostsdir",
        str(p.dns_hosts_dir),
        f"--local=/{ACME_DOMAIN}/",
        "--local-ttl=1",
        "--log-facility=-",
    ]


def marker(spec: LabSpec) -> str:
    """The argument that tells this lab's dnsmasq from any other (e.g. a mesh one)."""
    return str(spec.paths.dns_hosts_dir)


def check_name(name: str) -> str:
    """A lab name in canonical form (lowercase, no trailing dot), under lab.test."""
    canon = name.strip().lower().rstrip(".")
    labels = canon.split(".")
    if (
        not canon.endswith("." + ACME_DOMAIN)
        or len(canon) > 253
        or not all(_LABEL_RE.match(label) for label in labels)
    ):
        raise InputError(
            Problem(
                f"{name!r} is not a lab name: the lab resolver answers names under {ACME_DOMAIN} only",
                fix=f"use a name like shop.{ACME_DOMAIN} (letters, digits, dashes)",
            )
        )
    return canon


def hosts_text(name: str, addresses: list[str]) -> str:
    """The hosts file of one name: one line per address (dnsmasq answers them all)."""
    import ipaddress

    name = check_name(name)
    if not addresses:
        raise InputError(Problem(f"no address for {name}", fix="give at least one node address"))
    lines = [f"{ipaddress.IPv4Address(a)} {name}" for a in addresses]
    return "# Written by orchestrator.lab.dns.add_name\n" + "\n".join(lines) + "\n"


def record_file(spec: LabSpec, name: str) -> Path:
    return spec.paths.dns_hosts_dir / f"{check_name(name)}.hosts"


# ---- a minimal DNS client (A records over UDP), for checks and tests -------------


def query_packet(name: str, qid: int) -> bytes:
    """A recursive-desired query for the A record of name."""
    header = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    qname = b"".join(bytes([len(x)]) + x.encode() for x in name.rstrip(".").split(".")) + b"\0"
    return header + qname + struct.pack("!HH", 1, 1)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:  # compression pointer: two bytes, ends the name
            return pos + 2
        pos += 1 + length


def parse_response(data: bytes, qid: int) -> tuple[int, list[str]] | None:
    """(rcode, A addresses) of a response to query qid; None if it is not one."""
    if len(data) < 12:
        return None
    rid, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    if rid != qid or not flags & 0x8000:
        return None
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    out = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, rclass, _ttl, rdlen = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rclass == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return flags & 0x000F, out


def resolve(server: str, name: str, timeout: float = 2.0) -> tuple[int, list[str]] | None:
    """Ask server (host:port) for name's A records: (rcode, addresses), None if no answer."""
    host, _, port = server.rpartition(":")
    qid = random.randrange(1, 0xFFFF)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(query_packet(name, qid), (host, int(port)))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data, _ = s.recvfrom(4096)
                got = parse_response(data, qid)
                if got is not None:
                    return got
        except OSError:  # timeout, refused (nothing listening), unreachable
            return None
    return None


def answers(spec: LabSpec) -> bool:
    """The resolver is up: it answers (NXDOMAIN) for a lab name nobody added."""
    return resolve(spec.dns_server, PROBE, timeout=1.0) is not None


# ---- effects --------------------------------------------------------------------


def find(procs: list[proc.Proc], spec: LabSpec) -> list[proc.Proc]:
    """This lab's dnsmasq, whatever its other arguments (an older orch's: restarted)."""
    d = marker(spec)
    return [
        p for p in procs
        if os.path.basename(p.argv[0]) == "dnsmasq" and (d in p.argv or f"--hostsdir={d}" in p.argv)
    ]


def ensure(spec: LabSpec, log) -> None:
    """dnsmasq running with exactly the wanted arguments, answering on the bridge."""
    p = spec.paths
    p.dns_hosts_dir.mkdir(parents=True, exist_ok=True)
    for d in (p.dns_dir, p.dns_hosts_dir):  # dnsmasq reads them after dropping root
        os.chmod(d, 0o755)
    want = tuple(dnsmasq_argv(spec))
    running = find(proc.process_table(), spec)
    if running and (any(r.argv != want for r in running) or not answers(spec)):
        proc.stop([r.pid for r in running], timeout=5)
        running = []
    if running:
        return
    from orchestrator.lab.registry import port_holder

    holder = _udp_holder(spec.host_address, DNS_PORT) or port_holder(spec.host_address, DNS_PORT)
    if holder:
        raise OrchError(
            f"port {DNS_PORT} on {spec.host_address} is already in use, so the lab's resolver "
            f"cannot listen there: {holder}",
            fix=f"stop what holds port {DNS_PORT} on the lab bridge, then run `orch lab up` again",
        )
    pid = proc.spawn(list(want), p.log("dns"))
    if not (proc.wait_until(lambda: answers(spec) or not proc.alive(pid), 10) and answers(spec)):
        raise OrchError(
            f"the lab resolver (dnsmasq) did not start on {spec.dns_server}. "
            f"Last lines of {p.log('dns')}:\n{proc.log_excerpt(p.log('dns'))}",
            fix="fix what the log says, then run `orch lab up` again",
        )
    log(f"resolver {spec.dns_server} started (names under {ACME_DOMAIN})")


def _udp_holder(address: str, port: int) -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((address, port))
        return None
    except OSError:
        return f"something holds udp {address}:{port}"
    finally:
        s.close()


def stop(spec: LabSpec, procs: list[proc.Proc]) -> None:
    proc.stop([r.pid for r in find(procs, spec)], timeout=5)


def _spec(lab: str | None) -> LabSpec:
    from orchestrator.lab.info import resolve_name
    from orchestrator.lab.model import LabPaths
    from orchestrator.lab.state import load_spec

    name = resolve_name(lab)
    spec = load_spec(LabPaths.for_name(name))
    if spec is None:
        raise OrchError(f"there is no lab named {name} on this machine.", fix="run `orch lab up`")
    return spec


def add_name(name: str, addresses: list[str], lab: str | None = None, timeout: float = 5) -> str:
    """Make the lab resolver answer name with addresses (replacing what it had); waits
    until it does. Returns the canonical name. Root only (the file is in the lab state)."""
    from orchestrator.lab.state import write_if_changed

    spec = _spec(lab)
    name = check_name(name)
    write_if_changed(record_file(spec, name), hosts_text(name, addresses), 0o644)
    want = sorted(addresses)

    def served() -> bool:
        got = resolve(spec.dns_server, name, timeout=1.0)
        return got is not None and sorted(got[1]) == want

    if not proc.wait_until(served, timeout):
        _reload(spec)  # inotify missed it (e.g. a replaced file): re-read everything
        if not proc.wait_until(served, timeout):
            raise OrchError(
                f"the lab resolver {spec.dns_server} does not answer {name} with {', '.join(want)}.",
                fix="check `orch lab status` (run `orch lab up` to repair the resolver)",
            )
    return name


def remove_name(name: str, lab: str | None = None) -> None:
    """Forget name (dnsmasq keeps deleted files' records until told to re-read: SIGHUP)."""
    spec = _spec(lab)
    record_file(spec, name).unlink(missing_ok=True)
    _reload(spec)


def _reload(spec: LabSpec) -> None:
    for r in find(proc.process_table(), spec):
        try:
            os.kill(r.pid, signal.SIGHUP)
        except ProcessLookupError:
            pass
