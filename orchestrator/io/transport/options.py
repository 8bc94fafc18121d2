"""What the transport reaches and how: core's NodeSpec and SSHSettings (the environment
file's nodes and ssh settings), each with what SSH adds, not a copy of their fields.

- `NodeTarget` is a `NodeSpec` (same fields) with the names SSH gives the node and its
  jump host; `target_from_node` views an environment's node as one.
- `SSHOptions` is an `SSHSettings` (known_hosts, timeouts, strict_host_keys) with what the
  controller adds for one run (retries, keepalive, SSH agent, the environment's name for
  messages); `options_from_env` builds it from an environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.core.environments import NodeSpec, SSHSettings
from orchestrator.io.transport.errors import TransportError

_JUMP_RE = re.compile(r"(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?")


@dataclass(frozen=True)
class NodeTarget(NodeSpec):
    """A node as SSH reaches it (core's NodeSpec: name, host, port, user, identity_file,
    labels, jump "user@host:port", python)."""

    def __hash__(self) -> int:  # NodeSpec's labels are a dict: hash what names the endpoint
        return hash((self.name, self.host, self.port, self.user, self.identity_file, self.jump, self.python))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def jump_target(self) -> NodeTarget | None:
        if not self.jump:
            return None
        m = _JUMP_RE.fullmatch(self.jump)
        if m is None:
            raise TransportError(
                f"node {self.name}: jump host '{self.jump}' is not of the form user@host:port.",
                node=self.name,
                fix="write e.g. `jump: admin@bastion.example.com:22`.",
            )
        return NodeTarget(
            name=f"{self.name} (jump host)",
            host=m.group("host").strip("[]"),
            port=int(m.group("port") or 22),
            user=m.group("user") or self.user,
            identity_file=self.identity_file,
        )


@dataclass(frozen=True)
class SSHOptions(SSHSettings):
    """core's SSHSettings (known_hosts: None is ~/.ssh/known_hosts; strict_host_keys False
    accepts *unknown* keys and records them, never changed ones; connect_timeout;
    command_timeout: the longest silence tolerated from a command or the agent), and:"""

    retries: int = 2  # extra attempts at connection set-up (not at commands)
    backoff: float = 0.5  # seconds, doubled after each failed attempt
    allow_agent: bool = True  # keys from the SSH agent ($SSH_AUTH_SOCK)
    env_name: str | None = None  # only for messages: `orch nodes trust --env ENV`
    keepalive: int = 15

    @property
    def known_hosts_path(self) -> Path:
        return Path(self.known_hosts) if self.known_hosts else Path.home() / ".ssh" / "known_hosts"

    def trust_command(self) -> str:
        return f"orch nodes trust --env {self.env_name}" if self.env_name else "orch nodes trust --env ENV"


def target_from_node(node: NodeSpec) -> NodeTarget:
    """An environment's node (orchestrator.core.environments.NodeSpec) as a NodeTarget."""
    if isinstance(node, NodeTarget):
        return node
    values = {f.name: getattr(node, f.name) for f in fields(NodeSpec)}
    values.update(port=int(node.port or 22), user=node.user or "root",
                  identity_file=Path(node.identity_file) if node.identity_file else None,
                  labels=dict(node.labels or {}))
    return NodeTarget(**values)


def options_from_env(env: Any, **overrides: Any) -> SSHOptions:
    """An environment's ssh settings (orchestrator.core.environments.Environment.ssh) and
    name, with overrides (e.g. retries=0)."""
    settings = {f.name: getattr(env.ssh, f.name) for f in fields(SSHSettings)}
    return SSHOptions(**{**settings, "env_name": env.name, **overrides})
