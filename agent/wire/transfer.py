"""Deploying without a registry: the contract of the node's loopback registry.

Stdlib only, no I/O, Python 3.9 (the controller and the agent both import it).

An environment without `registry:` has its images moved by the controller into a Docker
Distribution registry that the agent runs on the node's loopback (`transfer_start`),
reached from the controller through an SSH forwarded channel. Nodes then pull
`127.0.0.1:TRANSFER_PORT/<project>/<service>@sha256:...` from their own loopback (the
engine trusts 127.0.0.0/8 registries without TLS), so specs, releases and the ledger name
an immutable digest exactly as with a registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

from agent.wire.protocol import check_bool, check_int, check_keys, require

# The loopback port of every node's transfer registry: fixed, so a pinned image names the
# same place on every node (each node has its own loopback).
TRANSFER_PORT = 47055
LOOPBACK_REGISTRY = "127.0.0.1:%d" % TRANSFER_PORT

TRANSFER_START = "transfer_start"
TRANSFER_STATUS = "transfer_status"
TRANSFER_GC = "transfer_gc"
OPERATIONS = (TRANSFER_START, TRANSFER_STATUS, TRANSFER_GC)

# AgentError kind: the node lacks what the transfer needs (Debian's docker-registry).
NOT_READY = "transfer"
REGISTRY_PACKAGE = "docker-registry"


def is_transferred(image: str) -> bool:
    """True for an image reference that lives in the nodes' loopback registries."""
    return image.startswith(LOOPBACK_REGISTRY + "/")


def loopback_ref(repository: str, digest: str) -> str:
    """The pinned reference a node pulls: 127.0.0.1:PORT/<repository>@<digest>."""
    return "%s/%s@%s" % (LOOPBACK_REGISTRY, repository, digest)


def split_ref(image: str) -> tuple:
    """(repository, digest) of a loopback reference made by loopback_ref."""
    rest = image[len(LOOPBACK_REGISTRY) + 1:]
    repository, _, digest = rest.partition("@")
    return repository, digest


@dataclass(frozen=True)
class TransferInfo:
    """The node's transfer registry: `transfer_start`'s and `transfer_status`' answer."""

    running: bool
    installed: bool = True  # docker-registry found on the node
    port: int = TRANSFER_PORT
    started: bool = False  # started by this call (else it was running already)
    free_bytes: int = 0  # free space on the filesystem holding its storage
    stored_bytes: int = 0  # bytes of blobs it holds
    pid: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], what: str = "transfer") -> "TransferInfo":
        check_keys(d, ("running", "installed", "port", "started", "free_bytes", "stored_bytes", "pid"), what)
        return cls(
            running=check_bool(require(d, "running", what), "running"),
            installed=check_bool(d.get("installed", True), "installed"),
            port=check_int(d.get("port", TRANSFER_PORT), "port", 1, 65535),
            started=check_bool(d.get("started", False), "started"),
            free_bytes=check_int(d.get("free_bytes", 0), "free_bytes", 0),
            stored_bytes=check_int(d.get("stored_bytes", 0), "stored_bytes", 0),
            pid=check_int(d.get("pid", 0), "pid", 0),
        )


@dataclass(frozen=True)
class GcResult:
    """`transfer_gc`'s answer: Distribution's garbage collection of the node's loopback
    registry (blobs no manifest references any more), the bytes its blobs took before and after."""

    ran: bool
    bytes_before: int = 0
    bytes_after: int = 0
    seconds: float = 0.0
    read_only: bool = False  # the registry served pulls, read-only, meanwhile (else it was not running)

    @property
    def freed(self) -> int:
        return max(0, self.bytes_before - self.bytes_after)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], what: str = "transfer_gc") -> "GcResult":
        check_keys(d, ("ran", "bytes_before", "bytes_after", "seconds", "read_only"), what)
        seconds = d.get("seconds", 0.0)
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
            raise ValueError("seconds must be a number >= 0")
        return cls(ran=check_bool(require(d, "ran", what), "ran"),
                   bytes_before=check_int(d.get("bytes_before", 0), "bytes_before", 0),
                   bytes_after=check_int(d.get("bytes_after", 0), "bytes_after", 0),
                   seconds=float(seconds), read_only=check_bool(d.get("read_only", False), "read_only"))


def check_request(args: Dict[str, Any], what: str) -> None:
    """The operations take no argument (the port is fixed)."""
    check_keys(args, (), what)


__all__ = ["GcResult", "LOOPBACK_REGISTRY", "NOT_READY", "OPERATIONS", "REGISTRY_PACKAGE", "TRANSFER_GC",
           "TRANSFER_PORT", "TRANSFER_START", "TRANSFER_STATUS", "TransferInfo", "check_request", "is_transferred",
           "loopback_ref", "split_ref"]
