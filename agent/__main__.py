"""Entry point: `python3 orch-agent-<hash>.pyz rpc --state-dir DIR` or `... version`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from agent.wire.protocol import DEFAULT_STATE_DIR


# What a deploy's first requests (hello, lock, ledger, state) import, imported before the
# first request is read: an agent started ahead of its command (the controller's keeper,
# ssh.persist) has done it while idle. A command's own agent imports it a little earlier,
# at the same cost.
PRELOAD = ("agent.wire.messages", "agent.wire.spec", "agent.wire.ledger", "agent.wire.redact", "agent.ledger",
           "agent.owner", "agent.edge", "agent.ingress", "agent.certs.store", "hashlib", "subprocess", "platform")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # the request that needs it says so


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="orch-agent")
    sub = parser.add_subparsers(dest="command")
    rpc = sub.add_parser("rpc", help="serve JSON-lines requests on stdin/stdout")
    rpc.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    sub.add_parser("version", help="print the agent and protocol versions as JSON")
    args = parser.parse_args(argv)

    from agent.about import agent_version, bundle_name, runs_from
    from agent.wire.protocol import PROTOCOL_VERSION

    if args.command == "version":
        import platform

        print(json.dumps({"agent_version": agent_version(), "protocol": PROTOCOL_VERSION,
                          "bundle": bundle_name(), "python": platform.python_version(),
                          "runs_from": runs_from()}))
        return 0
    if args.command == "rpc":
        preload()
        from agent.engine import Engine, engine_id_from_socket
        from agent.engine_reads import SocketReads
        from agent.rpc import Server

        # Nothing but protocol lines may reach stdout: send stray prints to stderr.
        out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
        sys.stdout = sys.stderr
        server = Server(sys.stdin.buffer, out, Engine, os.path.abspath(args.state_dir))
        server.engine_id_factory = engine_id_from_socket
        server.reader_factory = SocketReads.from_env
        server.give_up_on_sigterm()
        return server.finish(server.serve())
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
