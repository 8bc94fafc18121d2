"""`orch nodes check` and `orch nodes trust`: is every node of an environment usable?

`nodes trust` shows every key before it records it: a key pinned with --fingerprint
(orchestrator.core.hostkeys) must match, others need a terminal's confirmation or --yes.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import EnvironmentsDir, EnvRequired, Json
from orchestrator.cli.output import failure, final, print_final
from orchestrator.cli.render import table
from orchestrator.errors import InputError, OrchError

nodes_app = typer.Typer(
    name="nodes",
    help="Check and trust an environment's nodes.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(nodes_app, name="nodes")

class NodesNotReady(OrchError):
    """`orch nodes check`: a node misses a requirement (exit 1)."""


class HostKeysNotTrusted(OrchError):
    """`orch nodes trust`: a host key changed or could not be read (exit 1)."""


def _agent(c: Any) -> str:
    if not c.agent:
        return "-"
    digest = (c.bundle or "").removeprefix("orch-agent-").removesuffix(".pyz")[:8]
    return f"{c.agent} ({digest})" if digest else c.agent


def _ingress(c: Any) -> str:
    """HAProxy's state and its frontends: "-" when none is configured."""
    i = c.ingress
    if not i or not i.get("frontends"):
        return "-" if not i or not i.get("running") else "running"
    up = sum(1 for f in i["frontends"] if f["status"] == "OPEN" and f["servers_up"])
    state = "running" if i.get("running") else "STOPPED"
    return f"{state}, {up}/{len(i['frontends'])} port(s) serving"


def _mesh(c: Any) -> str:
    """Peers whose records arrive, of all: "-" when the mesh is off."""
    m = c.mesh
    if m is None:
        return "-"
    if not m.get("joined"):
        return "not joined"
    peers = m.get("peers") or []
    return f"{sum(1 for p in peers if p.get('reachable'))}/{len(peers)} peer(s)"


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("ok" if value else "FAIL")


@nodes_app.command("check")
def check(env: EnvRequired, environments: EnvironmentsDir = None, json: Json = False) -> None:
    """Per node: reachable, host key, auth, python3, Docker Engine, agent, free disk, the
    HAProxy ingress (running, its ports serving), the service mesh (what the node lacks for
    it, its peers reachable), the environment's certificates where it serves host names over
    HTTPS (the certificate daemon running and its last error, a certificate expiring within
    7 days, a node serving another certificate than the issuer); what is wrong and the fix."""
    from orchestrator.app.nodes import check_nodes, load_nodes
    from orchestrator.core.compose.units import human_size

    environment, targets, options = load_nodes(env, environments)
    checks = check_nodes(targets, options, environment.name if environment.mesh_enabled else "", environment.name,
                         transfer=not environment.registry.address)
    ok = all(c.ok for c in checks)
    bad = [c.node for c in checks if not c.ok]
    err = None if ok else NodesNotReady(
        f"{len(bad)} of {len(checks)} node(s) of {environment.name} not ready: {', '.join(bad)}",
        fix="see each node's problems and their fix", details={"nodes": bad})
    if json:
        fields = {"environment": environment.name, "env": environment.name, "nodes": [c.to_json() for c in checks]}
        print_final(final("ok", "nodes check", **fields) if err is None else failure(err, "nodes check", **fields))
    else:
        rows = [[c.node, c.address, _yes(c.reachable), c.host_key or "-", _yes(c.auth), c.python or "-",
                 c.docker or "-", _agent(c), human_size(c.disk_free), _ingress(c), _mesh(c),
                 "ok" if c.ok else "PROBLEM"]
                for c in checks]
        typer.echo(table(["NODE", "ADDRESS", "SSH", "HOST KEY", "AUTH", "PYTHON", "DOCKER", "AGENT", "DISK FREE",
                           "INGRESS", "MESH", "STATUS"], rows))
        for c in checks:
            for p in c.problems:
                text = p["message"] if p["message"].startswith(c.node) else f"{c.node}: {p['message']}"
                typer.echo(f"\n{text}" + (f"\n  Fix: {p['fix']}" if p["fix"] else ""), err=True)
        typer.echo(f"\n{sum(c.ok for c in checks)} of {len(checks)} node(s) of {environment.name} ready.")
    if err is not None:
        if json:
            typer.echo(f"orch: error: {err.render()}", err=True)
        raise typer.Exit(1)


@nodes_app.command("trust")
def trust(env: EnvRequired,
          fingerprint: list[str] = typer.Option(
              [], "--fingerprint", metavar="[NODE=]SHA256:...",
              help="The fingerprint a node's key must have (repeat per node; NODE may be a jump host's address; "
              "bare when the environment has one node). A key that differs is refused: exit 2, nothing recorded."),
          yes: bool = typer.Option(False, "--yes", help="Record the keys of nodes without --fingerprint without "
                                   "asking (what a terminal would be asked to confirm)."),
          environments: EnvironmentsDir = None, json: Json = False) -> None:
    """Show each node's SSH host key fingerprint, then record the unknown ones in known_hosts.

    Each key is checked against its --fingerprint when given (a mismatch records nothing
    and exits 2). Keys without one are shown and, on a terminal, recorded once you confirm;
    without a terminal they are recorded only with --yes (else exit 2, nothing recorded).
    A key that differs from the recorded one is never replaced: that is reported, with
    how to remove the old entry once the new fingerprint is verified.
    """
    from orchestrator.app.nodes import load_nodes, scan_host_keys
    from orchestrator.core.hostkeys import parse_pins

    environment, targets, options = load_nodes(env, environments)
    # Jump hosts first: reaching a node through one needs the jump host's key trusted.
    jumps = list({j.address: j for j in (t.jump_target() for t in targets) if j is not None}.values())
    pins = parse_pins(fingerprint, jumps + targets)
    statuses = []
    for group in (jumps, targets):
        statuses += _record(scan_host_keys(group, options), group, pins, yes, options, environment.name)
    bad = [s for s in statuses if s.status in ("changed", "error")]
    err = None if not bad else HostKeysNotTrusted(
        f"{len(bad)} host key(s) of {environment.name} not trusted: "
        + ", ".join(f"{s.node} ({s.status})" for s in bad),
        fix="a changed key: verify the new fingerprint out of band, remove the old entry (ssh-keygen -R) and "
        "trust again; an error: see its message", details={"nodes": [s.node for s in bad]})
    if json:
        fields = {"environment": environment.name, "env": environment.name,
                  "known_hosts": str(options.known_hosts_path), "nodes": [asdict(s) for s in statuses]}
        print_final(final("ok", "nodes trust", **fields) if err is None else failure(err, "nodes trust", **fields))
        if err is not None:
            typer.echo(f"orch: error: {err.render()}", err=True)
    else:
        typer.echo(_keys_table(statuses, bad))
        added = sum(s.status == "added" for s in statuses)
        typer.echo(f"\n{added} key(s) recorded in {options.known_hosts_path}.")
        for s in bad:
            if s.status == "changed":
                name = s.address.rsplit(":", 1)
                host_entry = name[0] if name[1] == "22" else f"[{name[0]}]:{name[1]}"
                typer.echo(
                    f"\n{s.node}: the host key CHANGED: now {s.fingerprint}, recorded {s.expected}. It was not "
                    f"replaced.\n  Fix: verify the new fingerprint out of band; if the node was reinstalled, run "
                    f"`ssh-keygen -R '{host_entry}' -f {options.known_hosts_path}` and trust again.",
                    err=True,
                )
            else:
                typer.echo(f"\n{s.error}", err=True)
    if bad:
        raise typer.Exit(1)


def _keys_table(statuses: list, bad: list) -> str:
    rows = [[s.node, s.address, s.key_type or "-", s.fingerprint or "-", s.status.upper() if s in bad else s.status]
            for s in statuses]
    return table(["NODE", "ADDRESS", "KEY", "FINGERPRINT", "STATUS"], rows)


def _record(scanned: list, targets: list, pins: dict[str, str], yes: bool, options: Any, env: str) -> list:
    """Record the unknown keys of scanned [(status, key)] once they are checked: pinned ones
    must match (else InputError, nothing recorded), the others need --yes or a terminal's
    confirmation (else InputError). Returns the statuses, "added" where recorded."""
    import sys
    from dataclasses import replace

    from orchestrator.core.hostkeys import OPTION, mismatch_error, mismatches
    from orchestrator.app.nodes import record_host_key

    statuses = [s for s, _ in scanned]
    wrong = mismatches(statuses, pins)
    if wrong:
        raise mismatch_error(wrong, str(options.known_hosts_path))
    unknown = [(s, k) for s, k in scanned if s.status == "unknown"]
    unpinned = [s for s, _ in unknown if s.node not in pins]
    if unpinned and not yes:
        names = ", ".join(f"{s.node} {s.key_type} {s.fingerprint}" for s in unpinned)
        if not sys.stdin.isatty():
            raise InputError(
                f"orch nodes trust: no terminal to confirm the host key(s) of {names}; nothing was recorded in "
                f"{options.known_hosts_path}.",
                fix=f"compare each fingerprint with the node's own (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub "
                f"on the node) and pass it: {OPTION} NODE=SHA256:..., or, having checked them, add --yes.",
                details={"nodes": [s.node for s in unpinned]})
        typer.echo(_keys_table(statuses, []), err=True)  # with the question, on the terminal
        if not typer.confirm(f"Record the unpinned key(s) above ({', '.join(s.node for s in unpinned)}) in "
                             f"{options.known_hosts_path}? Check each fingerprint with the node first", default=False,
                             err=True):
            raise InputError("orch nodes trust: not confirmed; nothing was recorded.",
                             fix=f"check the fingerprints and run `orch nodes trust --env {env}` again.")
    by_name = {t.name: t for t in targets}
    out = []
    for s, k in scanned:
        if s.status == "unknown":
            record_host_key(by_name[s.node], k, options)
            s = replace(s, status="added")
        out.append(s)
    return out
