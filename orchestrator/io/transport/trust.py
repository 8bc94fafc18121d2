"""`orch nodes trust`: every node's host key scanned (no authentication) and judged against
known_hosts (trusted, unknown, changed), the unknown ones recorded on request."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.io.transport.errors import TransportError
from orchestrator.io.transport.known_hosts import append_known_host, fingerprint, load_known_hosts
from orchestrator.io.transport.ssh import fetch_host_key, parallel
from orchestrator.core.environments import NodeSpec
from orchestrator.io.transport.options import SSHOptions


@dataclass(frozen=True)
class HostKeyStatus:
    node: str
    address: str
    key_type: str
    fingerprint: str
    status: str  # "trusted" (already known) | "added" | "unknown" | "changed" | "error"
    expected: str | None = None  # recorded fingerprint, when changed
    error: str | None = None


def scan_host_key(target: NodeSpec, options: SSHOptions) -> tuple[HostKeyStatus, Any]:
    """The node's key and how it stands against known_hosts ("trusted", "unknown",
    "changed", "error"); records nothing. The key is None on "error"."""
    try:
        key = fetch_host_key(target, options)
    except TransportError as err:
        return HostKeyStatus(target.name, target.address, "", "", "error", error=err.render()), None
    fp = fingerprint(key)
    known = load_known_hosts(options.known_hosts_path).lookup(target.known_hosts_name)
    if known:
        ours = known.get(key.get_name())
        if ours is not None and ours == key:
            return HostKeyStatus(target.name, target.address, key.get_name(), fp, "trusted"), key
        expected = ours if ours is not None else list(known.values())[0]
        return HostKeyStatus(target.name, target.address, key.get_name(), fp, "changed",
                             expected=fingerprint(expected)), key
    return HostKeyStatus(target.name, target.address, key.get_name(), fp, "unknown"), key


def record_host_key(target: NodeSpec, key: Any, options: SSHOptions) -> None:
    append_known_host(options.known_hosts_path, target.known_hosts_name, key)


def scan_host_keys(targets: Iterable[NodeSpec], options: SSHOptions,
                   max_parallel: int = 32) -> list[tuple[HostKeyStatus, Any]]:
    """scan_host_key for every target, in parallel, in the targets' order."""
    targets = list(targets)
    results, errors = parallel(targets, lambda t: scan_host_key(t, options), max_parallel)
    return [results[t.name] if t.name in results
            else (HostKeyStatus(t.name, t.address, "", "", "error", error=str(errors[t.name])), None)
            for t in targets]
