"""SSH transport to the nodes (paramiko) and the agent session over it: the public names.

    ssh.py          targets and options, connections (commands, SFTP), all-or-nothing connect
"""

from __future__ import annotations

from orchestrator.io.transport.ssh import (  # noqa: F401 - the public names of the transport
    KEEP_OLD_BUNDLES, TAIL_LOG_LINES, AgentError, AgentProtocolError, AgentSession, AgentStream,
    AuthenticationFailed, Connection, HostKeyChanged, HostKeyStatus, HostUnreachable, LineReader,
    NodeRequirementError, NodesUnreachable, NodeTarget, RemoteCommandFailed, RunResult, SSHOptions,
    TransportError, UnknownHostKey, agent_command, append_known_host, bundle_path, close_all, connect,
    connect_all, ensure_agent, fetch_host_key, fingerprint, host_key_status, load_known_hosts,
    open_sessions, options_from_env, parallel, prune_bundles, python_version, record_host_key,
    scan_host_key, scan_host_keys, target_from_node, trust_hosts)
