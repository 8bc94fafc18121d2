"""The facts about a lab that other code needs (environments, SSH transport, e2e tests).

`lab_info()` only reads the lab's state files: it is cheap and says nothing about
whether the lab is healthy (that is `orchestrator.lab.status.check`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import InputError, OrchError, Problem
from orchestrator.lab.model import (
    DEFAULT_NAME,
    SSH_PORT,
    SSH_USER,
    LabPaths,
    LabSpec,
    validate_name,
)


@dataclass(frozen=True)
class NodeInfo:
    name: str  # dev-1
    env: str  # dev
    address: str  # 10.250.0.11: SSH there (port ssh_port) as LabInfo.ssh_user
    ssh_port: int
    docker_host: str  # unix:///run/orch-lab/dev-1/docker.sock, the node engine from the host
    netns: str  # /run/netns/orch-lab.dev-1 (nsenter --net=...)


@dataclass(frozen=True)
class LabInfo:
    name: str
    subnet: str
    bridge: str
    host_address: str  # the bridge address: how nodes reach the host
    nodes: tuple[NodeInfo, ...]
    ssh_user: str
    ssh_key: Path  # the lab's client private key (ed25519, OpenSSH format)
    known_hosts: Path  # every node's host key, for strict checking
    registry: str  # 10.250.0.1:5000 (TLS, htpasswd auth: push here, pull by digest)
    registry_mirror: str  # 10.250.0.1:5001 (TLS, anonymous, read-only; nodes' docker.io mirror)
    ca_cert: Path  # the lab CA (registry TLS); every engine on this machine trusts it
    credentials_file: Path  # registry.env: ORCH_REGISTRY_USER / ORCH_REGISTRY_PASSWORD (0600)
    lab_env: Path  # lab.env: all of the above as ORCH_LAB_* / ORCH_REGISTRY* variables
    state_dir: Path
    acme_directory: str  # https://10.250.0.1:14000/dir: pebble, TLS from the lab CA (ca_cert)
    acme_ca: Path  # acme-ca.crt: the root pebble issues under (new at each pebble start)
    dns_server: str  # 10.250.0.1:53: the resolver pebble validates names through
    dns_hosts_dir: Path  # one hosts file per lab name (orchestrator.lab.dns.add_name)

    def node(self, name: str) -> NodeInfo:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"lab {self.name} has no node {name!r}")

    def nodes_for(self, env: str) -> list[NodeInfo]:
        return [n for n in self.nodes if n.env == env]

    def registry_credentials(self) -> tuple[str, str]:
        """(user, password) for the registry, read from credentials_file."""
        from orchestrator.lab.registry import parse_env_file

        env = parse_env_file(self.credentials_file.read_text())
        return env["ORCH_REGISTRY_USER"], env["ORCH_REGISTRY_PASSWORD"]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "subnet": self.subnet,
            "bridge": self.bridge,
            "host_address": self.host_address,
            "nodes": [n.__dict__ for n in self.nodes],
            "ssh_user": self.ssh_user,
            "ssh_key": str(self.ssh_key),
            "known_hosts": str(self.known_hosts),
            "registry": self.registry,
            "registry_mirror": self.registry_mirror,
            "ca_cert": str(self.ca_cert),
            "credentials_file": str(self.credentials_file),
            "lab_env": str(self.lab_env),
            "state_dir": str(self.state_dir),
            "acme_directory": self.acme_directory,
            "acme_ca": str(self.acme_ca),
            "dns_server": self.dns_server,
            "dns_hosts_dir": str(self.dns_hosts_dir),
        }


def resolve_name(name: str | None = None) -> str:
    return validate_name(name or os.environ.get("ORCH_LAB_NAME") or DEFAULT_NAME)


def info_from_spec(spec: LabSpec) -> LabInfo:
    p = spec.paths
    from orchestrator.lab.netns import netns_path

    return LabInfo(
        name=spec.name,
        subnet=spec.subnet,
        bridge=spec.bridge,
        host_address=spec.host_address,
        nodes=tuple(
            NodeInfo(
                name=n.name,
                env=n.env,
                address=n.address,
                ssh_port=SSH_PORT,
                docker_host=f"unix://{p.docker_socket(n.name)}",
                netns=str(netns_path(spec.netns(n))),
            )
            for n in spec.nodes
        ),
        ssh_user=SSH_USER,
        ssh_key=p.client_key,
        known_hosts=p.known_hosts,
        registry=spec.registry,
        registry_mirror=spec.mirror,
        ca_cert=p.ca_cert,
        credentials_file=p.registry_env,
        lab_env=p.lab_env,
        state_dir=p.state,
        acme_directory=spec.acme_directory,
        acme_ca=p.acme_ca,
        dns_server=spec.dns_server,
        dns_hosts_dir=p.dns_hosts_dir,
    )


def lab_info(name: str | None = None) -> LabInfo:
    """Facts of the lab NAME (default: $ORCH_LAB_NAME, else orch-lab). Raises if none."""
    from orchestrator.lab.state import load_spec

    name = resolve_name(name)
    spec = load_spec(LabPaths.for_name(name))
    if spec is None:
        raise OrchError(
            f"there is no lab named {name} on this machine.",
            fix="bring it up with `orch lab up`" + ("" if name == DEFAULT_NAME else f" --name {name}"),
        )
    return info_from_spec(spec)


def env_addresses(name: str | None, env: str) -> list[str]:
    """The addresses of the lab's nodes of environment ENV (raises when it has none)."""
    info = lab_info(name)
    found = [n.address for n in info.nodes if n.env == env]
    if not found:
        envs = sorted({n.env for n in info.nodes})
        raise InputError(Problem(f"lab {info.name} has no node of environment {env!r} (it has: {', '.join(envs)})",
                                 fix="name one of those environments, or give the addresses"))
    return found
