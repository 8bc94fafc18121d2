"""Looking at what runs: the `stats`, `top` and `inspect` requests and their results.

Stdlib only, no I/O, Python 3.9 (the controller and the agent both import it). A request
names a project in an environment, optionally one service and one replica; the agent
answers for the matching containers it runs (io.orch.* labels, not another environment's,
not the kept `-prev` ones). `sample_from_engine` turns one Engine API stats document
(`GET /containers/ID/stats?stream=false`) into the figures `docker stats` shows, and
`mask_inspect` applies agent.wire.redact's rule to an Engine API inspect document.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from agent.wire.protocol import (
    BadRequest,
    check_int,
    check_keys,
    check_list,
    check_name,
    check_object,
    check_project,
    check_str,
    check_str_list,
    require,
)
from agent.wire.redact import MASK, mask_tree


# ----------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class LookRequest:
    """What `stats`, `top` and `inspect` look at: a project's containers in one environment."""

    project: str
    env: str = ""
    service: str = ""  # "": every service
    replica: Optional[int] = None  # None: every replica

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"project": self.project}
        if self.env:
            out["env"] = self.env
        if self.service:
            out["service"] = self.service
        if self.replica is not None:
            out["replica"] = self.replica
        return out

    @classmethod
    def from_dict(cls, args: Dict[str, Any], what: str = "look") -> "LookRequest":
        check_keys(args, ("project", "env", "service", "replica"), what)
        project = check_project(require(args, "project", what))
        env = check_name(args["env"], "env") if args.get("env") else ""
        service = check_name(args["service"], "service") if args.get("service") else ""
        replica = check_int(args["replica"], "replica", 1) if args.get("replica") is not None else None
        if replica is not None and not service:
            raise BadRequest("%s: a replica needs its service" % what)
        return cls(project, env, service, replica)


# ----------------------------------------------------------------------------- results


def _opt_number(value: Any, what: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest("%s must be a number or null" % what)
    return value


@dataclass(frozen=True)
class ContainerRef:
    """Which container an answer is about."""

    name: str
    service: str
    replica: int
    id: str = ""
    state: str = ""

    @classmethod
    def parse(cls, d: Dict[str, Any], what: str) -> "ContainerRef":
        check_object(d, what)
        return cls(check_str(d.get("name", ""), what + ".name"), check_str(d.get("service", ""), what + ".service"),
                   check_int(d.get("replica", 0), what + ".replica", 0), check_str(d.get("id", ""), what + ".id"),
                   check_str(d.get("state", ""), what + ".state"))


@dataclass(frozen=True)
class Sample:
    """One container's figures, as `docker stats` shows them (None: not running, or unknown)."""

    container: ContainerRef
    cpu_percent: Optional[float] = None  # of one CPU: 200.0 is two CPUs busy
    memory_used: Optional[int] = None  # bytes, without the page cache (as docker stats)
    memory_limit: Optional[int] = None
    memory_percent: Optional[float] = None
    net_rx: Optional[int] = None  # bytes, every interface
    net_tx: Optional[int] = None
    block_read: Optional[int] = None  # bytes
    block_write: Optional[int] = None
    pids: Optional[int] = None

    FIGURES = ("cpu_percent", "memory_used", "memory_limit", "memory_percent", "net_rx", "net_tx",
               "block_read", "block_write", "pids")

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self.container)
        out.update({k: getattr(self, k) for k in self.FIGURES})
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Sample":
        check_keys(d, ("name", "service", "replica", "id", "state") + cls.FIGURES, "stats sample")
        return cls(ContainerRef.parse(d, "stats sample"),
                   **{k: _opt_number(d.get(k), "stats sample." + k) for k in cls.FIGURES})


@dataclass(frozen=True)
class Processes:
    """One container's processes (`docker top`): the column titles and one row per process."""

    container: ContainerRef
    titles: List[str] = field(default_factory=list)
    processes: List[List[str]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self.container), titles=list(self.titles), processes=[list(p) for p in self.processes])

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Processes":
        check_keys(d, ("name", "service", "replica", "id", "state", "titles", "processes"), "top")
        return cls(ContainerRef.parse(d, "top"), check_str_list(d.get("titles") or [], "top.titles"),
                   [check_str_list(p, "top.processes[]") for p in check_list(d.get("processes") or [], "top.processes")])


@dataclass(frozen=True)
class Inspected:
    """One container's Engine API inspect document, secrets masked (`mask_inspect`)."""

    container: ContainerRef
    engine: Dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dict(asdict(self.container), engine=self.engine)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Inspected":
        check_keys(d, ("name", "service", "replica", "id", "state", "engine"), "inspect")
        return cls(ContainerRef.parse(d, "inspect"), check_object(d.get("engine") or {}, "inspect.engine"))


def results_to_dict(items: Iterable[Any]) -> Dict[str, Any]:
    return {"containers": [i.to_dict() for i in items]}


def parse_results(answer: Dict[str, Any], kind: Any) -> List[Any]:
    """An agent's answer ({"containers": [...]}) as a list of `kind` (Sample, Processes, Inspected)."""
    check_object(answer, "answer")
    return [kind.from_dict(check_object(d, "containers[]")) for d in check_list(answer.get("containers") or [],
                                                                                  "containers")]


# ----------------------------------------------------------------------------- pure helpers


def _int(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def sample_from_engine(ref: ContainerRef, stats: Dict[str, Any]) -> Sample:
    """`docker stats`'s figures from one Engine API stats document (cgroup v1 or v2).

    CPU: the container's CPU time over the host's between the previous and this reading,
    times the online CPUs; memory: usage less the inactive page cache; network: the sum
    over interfaces; block I/O: the read and write bytes of every device."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    cpu_percent = None
    total, pre_total = _int((cpu.get("cpu_usage") or {}).get("total_usage")), \
        _int((pre.get("cpu_usage") or {}).get("total_usage"))
    system, pre_system = _int(cpu.get("system_cpu_usage")), _int(pre.get("system_cpu_usage"))
    if None not in (total, pre_total, system, pre_system):
        online = _int(cpu.get("online_cpus")) or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
        cpu_delta, system_delta = total - pre_total, system - pre_system  # type: ignore[operator]
        cpu_percent = round(cpu_delta / system_delta * online * 100.0, 2) if system_delta > 0 and cpu_delta >= 0 \
            else 0.0
    mem = stats.get("memory_stats") or {}
    used, limit = _int(mem.get("usage")), _int(mem.get("limit"))
    if used is not None:
        detail = mem.get("stats") or {}
        cache = _int(detail.get("total_inactive_file"))  # cgroup v1
        if cache is None:
            cache = _int(detail.get("inactive_file"))  # cgroup v2
        if cache is not None and cache < used:
            used -= cache
    mem_percent = round(used / limit * 100.0, 2) if used is not None and limit else None
    nets = stats.get("networks")
    rx = tx = None
    if isinstance(nets, dict):
        rx = sum(_int(n.get("rx_bytes")) or 0 for n in nets.values() if isinstance(n, dict))
        tx = sum(_int(n.get("tx_bytes")) or 0 for n in nets.values() if isinstance(n, dict))
    read = write = None
    blkio = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive")
    if isinstance(blkio, list):
        read = sum(_int(e.get("value")) or 0 for e in blkio if str(e.get("op", "")).lower() == "read")
        write = sum(_int(e.get("value")) or 0 for e in blkio if str(e.get("op", "")).lower() == "write")
    elif "blkio_stats" in stats:
        read = write = 0  # a container that did no block I/O yet has no entries
    pids = _int((stats.get("pids_stats") or {}).get("current"))
    return Sample(ref, cpu_percent, used, limit, mem_percent, rx, tx, read, write, pids)


def mask_inspect(doc: Dict[str, Any], known: Iterable[str] = ()) -> Dict[str, Any]:
    """An inspect document with agent.wire.redact's rule applied: the environment's values
    under secret names (Config.Env's NAME=VALUE), passwords in URLs and NAME=VALUE pairs
    anywhere (command, labels), values under secret names, and every known value."""
    return mask_tree(doc, MASK, known)
