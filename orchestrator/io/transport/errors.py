"""The transport's errors: a node unreachable, its host key unknown or changed, a failed
command, a missing requirement, an agent that died or refused an operation."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import OrchError


class TransportError(OrchError):
    """Something between the controller and a node went wrong."""

    def __init__(self, message: str, *, node: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        self.node = node
        if node:
            self.details.setdefault("node", node)


class HostUnreachable(TransportError):
    """No SSH session could be set up (network, sshd); retried with backoff."""


class AuthenticationFailed(TransportError):
    pass


class UnknownHostKey(TransportError):
    def __init__(self, message: str, *, fingerprint: str, key_type: str, **kw: Any):
        super().__init__(message, **kw)
        self.fingerprint = fingerprint
        self.key_type = key_type
        self.details.update({"fingerprint": fingerprint, "key_type": key_type})


class HostKeyChanged(TransportError):
    def __init__(self, message: str, *, fingerprint: str, expected: str, **kw: Any):
        super().__init__(message, **kw)
        self.fingerprint = fingerprint
        self.expected = expected
        self.details.update({"fingerprint": fingerprint, "expected": expected})


# A connection that could not be set up (the node, its sshd or its key), as opposed to a
# failure once connected: reported as "cannot connect to", never retried another way.
SETUP_ERRORS = (HostUnreachable, AuthenticationFailed, UnknownHostKey, HostKeyChanged)


class NodesUnreachable(TransportError):
    """Several nodes failed at once: one message names every one of them."""

    def __init__(self, failures: dict[str, TransportError], total: int, *, action: str = "connect to"):
        self.failures = failures
        names = sorted(failures)
        lines = [f"cannot {action} {len(names)} of {total} node(s); nothing was changed on any node:"]
        lines += [f"  - {failures[n].render()}" for n in names]  # each with its own fix
        fixes = list(dict.fromkeys(failures[n].fix for n in names if failures[n].fix))
        super().__init__("\n".join(lines), fix="; ".join(fixes) or None,
                         details={"nodes": {n: failures[n].to_json() for n in names}})

    def render(self) -> str:
        return self.message  # every node's line carries its own fix already


class RemoteCommandFailed(TransportError):
    pass


class NodeRequirementError(TransportError):
    """The node lacks something orch needs (python3 >= 3.9, Docker Engine)."""


class AgentProtocolError(TransportError):
    """The agent died, or said something that is not the protocol."""


class AgentError(OrchError):
    """An operation the agent refused or that failed on the node ({"error": {...}})."""

    def __init__(self, node: str, op: str, kind: str, message: str, details: dict | None = None):
        details = dict(details or {})
        super().__init__(f"{node}: {message}", fix=details.get("fix"), details=details)
        self.node = node
        self.op = op
        self.kind = kind
        self.details.setdefault("node", node)
        self.details["kind"] = kind

    def render(self) -> str:
        text = super().render()
        logs = self.details.get("logs")
        if logs:
            who = self.details.get("container", "the container")
            text += f"\nLast {len(logs)} log lines of {who}:\n" + "\n".join(f"  | {ln}" for ln in logs)
        return text
