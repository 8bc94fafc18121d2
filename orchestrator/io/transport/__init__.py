"""SSH transport to the nodes (paramiko) and the agent session over it: the public names.

Connection code only: it knows how to reach a node, check its host key, run a fixed
command, copy a file and talk to the agent. It knows nothing about what to deploy.

    options.py        SSHOptions (core's SSHSettings and the run's options) and its adapter
                      from an environment (the nodes are core's NodeSpec, taken as they are)
    errors.py         TransportError and its kinds, AgentError
    known_hosts.py    fingerprints, known_hosts reads and appends, the strict host-key policy
    ssh.py            Connection (commands, SFTP), connect, connect_all (all or nothing),
                      parallel, fetch_host_key
    trust.py          host keys scanned and recorded (`orch nodes trust`)
    agent_session.py  the agent bundle on the node and AgentSession (JSON lines, pings)
    keeper_wire.py    the keeper's socket, requests and frames (ssh.persist)
    keeper.py         the keeper: SSH connections kept between commands, agents started ahead
    kept.py           a command's side of it: KeptConnection, RelayChannel

Each module imports the ones above it in this list, never this package's names.
"""

from __future__ import annotations

import sys

# paramiko imports `invoke` (0.03-0.06 s of every command that connects) only to run
# ssh_config's `Match exec`; orch never reads an ssh_config, and paramiko goes on
# without it (an import that fails at once). Unless something imported it already.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]

from orchestrator.io.transport.agent_session import (  # noqa: F401 - the public names
    KEEP_OLD_BUNDLES, TAIL_LOG_LINES, AgentSession, AgentStream, LineReader, agent_command,
    bundle_path, ensure_agent, open_sessions, prune_bundles, python_version)
from orchestrator.io.transport.errors import (  # noqa: F401
    AgentError, AgentProtocolError, AuthenticationFailed, HostKeyChanged, HostUnreachable,
    NodeRequirementError, NodesUnreachable, RemoteCommandFailed, SETUP_ERRORS, TransportError, UnknownHostKey)
from orchestrator.io.transport.known_hosts import append_known_host, fingerprint, load_known_hosts  # noqa: F401
from orchestrator.io.transport.ssh import (  # noqa: F401
    Connection, HandshakeGate, RunResult, close_all, connect, connect_all, fetch_host_key, handshake_gate, parallel)
from orchestrator.io.transport.options import SSHOptions, options_from_env  # noqa: F401
from orchestrator.io.transport.trust import (  # noqa: F401
    HostKeyStatus, record_host_key, scan_host_key, scan_host_keys)
