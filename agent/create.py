"""ContainerSpec -> the raw Docker Engine API body for POST /containers/create.

Pure data in, pure data out, so unit tests assert on exactly what the engine is sent.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from agent.wire import labels as L
from agent.wire.spec import ContainerSpec, ServiceSpec

NS = 1_000_000_000


def _restart_policy(restart: str) -> Dict[str, Any]:
    name, _, count = restart.partition(":")
    policy: Dict[str, Any] = {"Name": "" if name == "no" else name}
    if name == "on-failure" and count:
        policy["MaximumRetryCount"] = int(count)
    return policy


def _healthcheck(spec: ContainerSpec) -> Dict[str, Any]:
    hc = spec.healthcheck
    if hc is None:
        return {}
    if hc.disabled:
        return {"Test": ["NONE"]}
    return {
        "Test": list(hc.test),
        "Interval": int(hc.interval * NS),
        "Timeout": int(hc.timeout * NS),
        "Retries": hc.retries,
        "StartPeriod": int(hc.start_period * NS),
    }


def create_body(
    svc: ServiceSpec,
    replica: int,
    file_sources: Dict[Tuple[str, str], str],
) -> Tuple[Dict[str, Any], List[Tuple[str, List[str]]]]:
    """(body, extra networks to connect before start) for one replica of svc.

    file_sources maps ("secret"|"config", name) to the file the agent wrote on the node.
    """
    c = svc.container
    body: Dict[str, Any] = {
        "Image": c.image,
        "Env": ["%s=%s" % (k, v) for k, v in sorted(c.environment.items())],
        "Labels": L.container_labels(
            svc.project, svc.service, replica, svc.env, svc.config_hash, svc.release, c.labels,
            config_parts=svc.config_parts_label(),
        ),
        "StopTimeout": int(round(c.stop_grace_period)),
    }
    if c.command is not None:
        body["Cmd"] = list(c.command)
    if c.entrypoint is not None:
        # An empty list means "no entrypoint"; the engine spells that [""].
        body["Entrypoint"] = list(c.entrypoint) or [""]
    for key, value in (("User", c.user), ("WorkingDir", c.working_dir), ("Hostname", c.hostname),
                       ("StopSignal", c.stop_signal)):
        if value:
            body[key] = value
    hc = _healthcheck(c)
    if hc:
        body["Healthcheck"] = hc

    exposed: Dict[str, Dict[str, Any]] = {}
    bindings: Dict[str, List[Dict[str, str]]] = {}
    for p in c.ports:
        key = "%d/%s" % (p.target, p.protocol)
        exposed[key] = {}
        bindings.setdefault(key, []).append(
            {"HostIp": p.host_ip, "HostPort": str(p.published) if p.published else ""}
        )
    if exposed:
        body["ExposedPorts"] = exposed

    mounts: List[Dict[str, Any]] = []
    binds: List[str] = []
    for m in c.volumes:
        if m.type == "bind":
            # Binds (not Mounts) so a missing host directory is created, as Compose does.
            binds.append("%s:%s%s" % (m.source, m.target, ":ro" if m.read_only else ""))
        elif m.type == "tmpfs":
            mounts.append({"Type": "tmpfs", "Target": m.target})
        else:
            mount: Dict[str, Any] = {"Type": "volume", "Target": m.target, "ReadOnly": m.read_only}
            if m.source:
                mount["Source"] = svc.volumes[m.source].engine_name(svc.project)
            mounts.append(mount)
    for kind, files in (("secret", c.secrets), ("config", c.configs)):
        for f in files:
            mounts.append(
                {"Type": "bind", "Source": file_sources[(kind, f.name)], "Target": f.target, "ReadOnly": True}
            )

    host: Dict[str, Any] = {
        "RestartPolicy": _restart_policy(c.restart),
        "PortBindings": bindings,
        "Mounts": mounts,
        "Binds": binds,
        "CapAdd": list(c.cap_add) or None,
        "CapDrop": list(c.cap_drop) or None,
        "ExtraHosts": list(c.extra_hosts) or None,
        "Dns": list(c.dns) or None,
        "DnsSearch": list(c.dns_search) or None,
        "DnsOptions": list(c.dns_opt) or None,
        "ReadonlyRootfs": c.read_only,
    }
    if c.init is not None:
        host["Init"] = c.init
    r = c.resources
    if r.cpus:
        host["NanoCpus"] = int(r.cpus * NS)
    if r.memory:
        host["Memory"] = r.memory
    if r.memory_reservation:
        host["MemoryReservation"] = r.memory_reservation
    if r.pids_limit is not None:
        host["PidsLimit"] = r.pids_limit
    if r.shm_size:
        host["ShmSize"] = r.shm_size

    # The engine accepts one network at create time (API < 1.44); the rest are
    # connected before the container starts.
    extra: List[Tuple[str, List[str]]] = []
    if c.networks:
        first, rest = c.networks[0], c.networks[1:]
        first_name = svc.networks[first.name].engine_name(svc.project)
        host["NetworkMode"] = first_name
        body["NetworkingConfig"] = {"EndpointsConfig": {first_name: {"Aliases": _aliases(svc, first.aliases)}}}
        for att in rest:
            extra.append((svc.networks[att.name].engine_name(svc.project), _aliases(svc, att.aliases)))
    body["HostConfig"] = {k: v for k, v in host.items() if v is not None}
    return body, extra


def _aliases(svc: ServiceSpec, aliases: List[str]) -> List[str]:
    # The service name resolves to its replicas on every network, as in Compose.
    return sorted(set([svc.service] + list(aliases)))
