"""How the transport reaches the nodes: core's SSHSettings (the environment file's ssh
settings) with what SSH adds, not a copy of their fields. The nodes themselves are core's
NodeSpec (orchestrator.core.environments), which names its SSH address, known_hosts name
and jump host.

- `SSHOptions` is an `SSHSettings` (known_hosts, timeouts, strict_host_keys) with what the
  controller adds for one run (retries, keepalive, SSH agent, the environment's name for
  messages); `options_from_env` builds it from an environment.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from orchestrator.core.environments import SSHSettings


@dataclass(frozen=True)
class SSHOptions(SSHSettings):
    """core's SSHSettings (known_hosts: None is ~/.ssh/known_hosts; strict_host_keys False
    accepts *unknown* keys and records them, never changed ones; connect_timeout;
    command_timeout: the longest silence tolerated from a command or the agent;
    handshakes, handshakes_per_server: ssh.HandshakeGate's bounds), and:"""

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


def options_from_env(env: Any, **overrides: Any) -> SSHOptions:
    """An environment's ssh settings (orchestrator.core.environments.Environment.ssh) and
    name, with overrides (e.g. retries=0)."""
    settings = {f.name: getattr(env.ssh, f.name) for f in fields(SSHSettings)}
    return SSHOptions(**{**settings, "env_name": env.name, **overrides})
