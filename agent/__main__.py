"""Entry point: `python3 orch-agent-<hash>.pyz rpc --state-dir DIR` or `... version`."""

from __future__ import annotations

import argparse
import json
import os
import sys

from agent.wire.protocol import DEFAULT_STATE_DIR


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
