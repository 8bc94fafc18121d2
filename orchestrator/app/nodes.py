"""`orch nodes check` and `orch nodes trust`: every requirement of each node of an
environment checked (reachable, host key, auth, python3, Docker Engine, agent, disk,
ingress), and host keys scanned and recorded (orchestrator.io.transport)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.core.compose.units import human_size

LOW_DISK = 1 << 30  # below 1 GiB free, pulls and logs will soon fail


def load_nodes(env: str, environments: Any) -> tuple[Any, list, Any]:
    """(Environment, its nodes as transport targets, the SSH options)."""
    from orchestrator.core.environments import load_environment
    from orchestrator.io.transport import options_from_env

    environment = load_environment(env, environments_dir=environments)
    return environment, list(environment.nodes), options_from_env(environment)


@dataclass
class NodeCheck:
    node: str
    address: str
    reachable: bool | None = None
    auth: bool | None = None
    host_key: str = ""  # trusted | unknown | changed ("" when not reached)
    python: str | None = None
    docker: str | None = None
    agent: str | None = None
    bundle: str | None = None
    disk_free: int | None = None
    # The node's HAProxy ingress (agent ingress_status): installed, version, running,
    # frontends [{project, service, port, status, servers_up, servers}]; None: not asked.
    ingress: dict | None = None
    # The environment's service mesh on this node (agent mesh_status): running parts and each
    # peer (handshake age, records arriving); None: the mesh is off or not asked.
    mesh: dict | None = None
    # The environment's certificates on this node (agent tls_certs) when it routes host names
    # with TLS: certd {role, running, last_error}, certs [{host, source, fingerprint, not_after}].
    certs: dict | None = None
    # Without a registry: the node's transfer registry (agent transfer_status: installed,
    # running, free and stored bytes); None: the environment has a registry.
    transfer: dict | None = None
    problems: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, err: Any) -> None:
        message = getattr(err, "message", None) or str(err)
        self.problems.append({"message": message, "fix": getattr(err, "fix", None) or ""})

    def to_json(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        return out


def check_node(target: Any, options: Any, bundle: Any, mesh_env: str = "", certs_env: str = "",
               transfer: bool = False) -> NodeCheck:
    """Every requirement of one node, in order; stops at the first that blocks the rest."""
    from orchestrator.io import transport as T

    result = NodeCheck(target.name, target.address)
    try:
        conn = T.connect(target, options)
    except T.HostUnreachable as err:
        result.reachable = False
        err.fix = err.fix or "check the node's host/port in the environment file, that it is up and sshd runs."
        result.problem(err)
        return result
    except (T.UnknownHostKey, T.HostKeyChanged) as err:
        result.reachable = True
        result.host_key = "unknown" if isinstance(err, T.UnknownHostKey) else "changed"
        result.problem(err)
        return result
    except T.TransportError as err:
        result.reachable = True
        result.auth = False
        result.problem(err)
        return result
    result.reachable, result.auth, result.host_key = True, True, "trusted"
    try:
        result.python = ".".join(map(str, T.python_version(conn)))
        session = T.AgentSession.open(conn, bundle)
        try:
            result.agent = session.hello.get("agent_version")
            result.bundle = session.hello.get("bundle")
            info = session.call("info")
            try:
                ingress = session.call("ingress_status") if info.get("engine") else None
            except T.AgentError:
                ingress = None  # its state is kept per engine: nothing to say without one
            if transfer and info.get("engine"):  # its storage is kept per engine
                judge_transfer(result, session.call("transfer_status"))
            tls = None
            if certs_env and any((f.get("route") or {}).get("tls") and f.get("env") == certs_env
                                 for f in (ingress or {}).get("frontends") or []):
                try:
                    tls = session.call("tls_certs", {"env": certs_env})
                except T.AgentError as err:
                    result.problem(err)
            mesh = None
            if mesh_env and info.get("engine"):
                try:
                    mesh = session.call("mesh_status", {"env": mesh_env})
                except T.AgentError as err:
                    result.problem(err)
        finally:
            session.close()
        if mesh is not None:
            judge_mesh(result, mesh)
        if tls is not None:
            judge_certs(result, tls)
        result.ingress = None if ingress is None else {
            "installed": ingress.get("installed"), "version": ingress.get("version"),
            "running": ingress.get("running"), "pid": ingress.get("pid"),
            "frontends": [{"project": f["project"], "service": f["service"], "port": f["port"]["published"],
                           "status": f["status"], "servers": len(f["servers"]),
                           "servers_up": sum(1 for x in f["servers"] if x["status"] == "UP")}
                          for f in ingress.get("frontends") or []]}
        for text in (ingress or {}).get("problems") or []:
            result.problem(T.NodeRequirementError(
                f"ingress: {text}",
                fix="re-run `orch up` for the project (it starts HAProxy again and syncs its servers); "
                "a missing HAProxy: apt-get install haproxy on the node"))
        if info.get("engine"):
            result.docker = info["engine"].get("version")
        else:
            result.problem(T.NodeRequirementError(
                f"Docker Engine is not usable: {info.get('engine_error')}",
                fix="install Docker Engine (Debian: apt-get install docker.io), start it, and make it reachable "
                "for the SSH user (DOCKER_HOST or the docker group).",
            ))
        disks = info.get("disk") or {}
        disk = disks.get("docker_root") or disks.get("state_dir")
        if disk:
            result.disk_free = disk["free"]
            if disk["free"] < LOW_DISK:
                result.problem(T.NodeRequirementError(
                    f"only {human_size(disk['free'])} free on the node's disk",
                    fix="free some space (docker system prune, or orch's prune) or grow the disk.",
                ))
    except T.TransportError as err:
        result.problem(err)
    except T.AgentError as err:
        result.problem(err)
    finally:
        conn.close()
    return result


def judge_transfer(result: NodeCheck, status: dict) -> None:
    """An environment without a registry: the node needs Debian's docker-registry."""
    from orchestrator.io import transport as T

    result.transfer = {k: status.get(k) for k in ("installed", "running", "free_bytes", "stored_bytes")}
    if not status.get("installed"):
        result.problem(T.NodeRequirementError(
            "docker-registry (Docker Distribution) is not installed: the environment has no registry, so images "
            "reach the node through a registry on its loopback", fix="apt-get install docker-registry"))


MESH_FIX = {
    "link": "run `orch up` for a project of the environment: it brings the WireGuard link back "
            "(wireguard-go's interface ends with its process, e.g. after a reboot)",
    "dns": "run `orch up` for a project of the environment: it starts the mesh's dnsmasq again",
    "daemon": "run `orch up` for a project of the environment: it starts the mesh daemon again",
}


def judge_mesh(result: NodeCheck, mesh: dict) -> None:
    """The mesh part of a node's check: what the node lacks (with the fix the agent gives),
    what is not running, and peers whose records do not arrive."""
    from orchestrator.io import transport as T

    result.mesh = {"joined": bool(mesh.get("public_key")), "running": dict(mesh.get("running") or {}),
                   "outdated": list(mesh.get("outdated") or []),
                   "peers": [{k: p.get(k) for k in ("node", "endpoint", "handshake_age", "reachable",
                                                    "last_seen_age")} for p in mesh.get("peers") or []]}
    for text in mesh.get("problems") or []:
        message, _, fix = str(text).partition(": ")
        result.problem(T.NodeRequirementError(f"mesh: {message}", fix=fix or None))
    for part, up in sorted((mesh.get("running") or {}).items()):
        if not up:
            result.problem(T.NodeRequirementError(f"mesh: the {part} is not running", fix=MESH_FIX.get(part)))
    for p in mesh.get("peers") or []:
        if not p.get("reachable"):
            seen = p.get("last_seen_age")
            result.problem(T.NodeRequirementError(
                f"mesh: peer {p.get('node')} ({p.get('endpoint')}) is not reachable"
                + (f" (last heard {seen:.0f} s ago)" if isinstance(seen, (int, float)) else " (never heard)"),
                fix=f"check that {p.get('node')} is up and that UDP port {p.get('endpoint', ':').rsplit(':', 1)[-1]} "
                    f"is open between the nodes (both ways); `orch nodes check` on its environment shows its side"))


CERT_WARNING_DAYS = 7


def judge_certs(result: NodeCheck, answer: dict) -> None:
    """The certificates part of a node's check: its certificate daemon not running or
    failing, a certificate expiring within CERT_WARNING_DAYS, what the node lacks."""
    from datetime import datetime, timezone

    from orchestrator.core.edge_plan import _parse
    from orchestrator.io import transport as T

    certd = answer.get("certd") or {}
    result.certs = {"certd": {k: certd.get(k) for k in ("role", "running", "last_error", "next_check")}
                    if certd.get("role") else None,
                    "certs": [{k: c.get(k) for k in ("host", "source", "fingerprint", "not_after", "issuer", "loaded")}
                              for c in answer.get("certs") or []]}
    for text in answer.get("problems") or []:  # what the node lacks (python3-acme, openssl), with the fix
        message, _, fix = str(text).partition(": ")
        result.problem(T.NodeRequirementError(f"certificates: {text}", fix=fix or "apt-get install python3-acme openssl"))
    if certd.get("role") and not certd.get("running"):
        result.problem(T.NodeRequirementError(
            f"certificates: the certificate daemon ({certd['role']}) is not running",
            fix="run `orch certs renew --env ENV` or `orch up` for a project of the environment: it starts it again; "
                "an issuer needs python3-acme (apt-get install python3-acme openssl)"))
    if certd.get("last_error"):
        result.problem(T.NodeRequirementError(f"certificates: the certificate daemon failed: {certd['last_error']}",
                                              fix="see the CA's message; `orch certs renew --env ENV` retries"))
    now = datetime.now(timezone.utc)
    for c in answer.get("certs") or []:
        try:
            left = (_parse(c.get("not_after") or "") - now).total_seconds() / 86400
        except ValueError:
            continue
        if left <= CERT_WARNING_DAYS:
            result.problem(T.NodeRequirementError(
                f"certificates: {c.get('host')} ({c.get('source')}) "
                + (f"expired on {c.get('not_after')}" if left < 0 else f"expires in {max(0, int(left))} day(s)"),
                fix="automatic: `orch certs renew --env ENV` (see `orch certs`); from files: give a new certificate "
                    "and run `orch up`"))


def compare_followers(checks: list[NodeCheck]) -> None:
    """A follower serving another certificate than the issuer's, for one of its host names."""
    from orchestrator.io import transport as T

    def fps(c: NodeCheck) -> dict[str, str]:
        return {x["host"]: x["fingerprint"] for x in (c.certs or {}).get("certs") or [] if x.get("source") == "auto"}

    issuer = next((c for c in checks if ((c.certs or {}).get("certd") or {}).get("role") == "issuer"), None)
    if issuer is None:
        return
    ref = fps(issuer)
    for c in checks:
        if c is issuer or ((c.certs or {}).get("certd") or {}).get("role") != "follower":
            continue
        for host, fp in sorted(fps(c).items()):
            if host in ref and fp != ref[host]:
                c.problem(T.NodeRequirementError(
                    f"certificates: {host} differs from the issuer's ({issuer.node}): {fp[:16]} here, "
                    f"{ref[host][:16]} there",
                    fix="the follower fetches every 30 s; if it stays, check the mesh between the two nodes and run "
                        "`orch certs renew --env ENV`"))


def check_nodes(targets: list, options: Any, mesh_env: str = "", certs_env: str = "",
                transfer: bool = False) -> list[NodeCheck]:
    """check_node on every node in parallel, in the targets' order; with mesh_env, each
    node's part of that environment's mesh too; with certs_env, its certificates."""
    from orchestrator.io.agent_bundle import current_bundle
    from orchestrator.io.transport import parallel

    bundle = current_bundle()
    results, errors = parallel(targets, lambda t: check_node(t, options, bundle, mesh_env, certs_env, transfer))
    checks = []
    for t in targets:
        if t.name in results:
            checks.append(results[t.name])
        else:  # a bug in a check must not hide the other nodes' results
            c = NodeCheck(t.name, t.address)
            c.problem(errors[t.name])
            checks.append(c)
    compare_followers(checks)
    return checks


def scan_host_keys(targets: list, options: Any) -> list:
    """[(HostKeyStatus, key)] per target, read without trusting (io.transport.scan_host_keys)."""
    from orchestrator.io import transport as T

    return T.scan_host_keys(targets, options)


def record_host_key(target: Any, key: Any, options: Any) -> None:
    """Append a checked key to the known_hosts file (io.transport.record_host_key)."""
    from orchestrator.io import transport as T

    T.record_host_key(target, key, options)
