"""`orch lab up|down|status`: the local lab (see docs/lab.md)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from orchestrator.cli.root import app
from orchestrator.cli.options import Json
from orchestrator.errors import InputError, OrchError, Problem

lab_app = typer.Typer(
    help="Run the local lab: real DEV/TEST/PROD nodes and a registry on this machine.",
    no_args_is_help=True,
)
app.add_typer(lab_app, name="lab")

NAME_HELP = "Which lab (several can coexist); default orch-lab, the one environments/*.yaml use."


def _name_option():
    return typer.Option("orch-lab", "--name", envvar="ORCH_LAB_NAME", help=NAME_HELP)


class LabUnhealthy(OrchError):
    """`orch lab status`: the lab is missing or something in it is wrong (exit 1)."""


def _log(message: str) -> None:
    print(f"lab: {message}", file=sys.stderr, flush=True)


def _quiet(message: str) -> None:
    pass


@lab_app.command("up")
def up(
    nodes: Optional[str] = typer.Option(
        None, "--nodes", help="Nodes per environment, e.g. dev=1,test=1,prod=2 (the default)."
    ),
    subnet: Optional[str] = typer.Option(
        None, "--subnet", help="The lab's private range; default 10.250.0.0/24 (orch-lab)."
    ),
    name: str = _name_option(),
    json_out: Json = False,
) -> None:
    """Create the lab, or check and repair it: idempotent, seconds when already up."""
    from orchestrator.cli.output import final, print_final
    from orchestrator.lab.info import resolve_name
    from orchestrator.lab.up import up as lab_up

    info = lab_up(resolve_name(name), nodes, subnet, log=_log)
    if json_out:
        print_final(final("ok", "lab up", lab=info.to_json()))
        return
    user = info.ssh_user
    width = max(len(n.name) for n in info.nodes)
    lines = [f"Lab {info.name} is up ({info.subnet}, bridge {info.bridge} at {info.host_address})."]
    lines.append("Nodes (ssh as root, port 22; each runs its own Docker Engine):")
    lines += [f"  {n.name:<{width}}  {n.address}" for n in info.nodes]
    lines += [
        f"Registry     {info.registry}  (TLS, htpasswd; credentials in {info.credentials_file})",
        f"Mirror       {info.registry_mirror}  (TLS, anonymous, read-only; the nodes' docker.io mirror)",
        f"CA           {info.ca_cert}  (trusted by every engine here via /etc/docker/certs.d)",
        f"ACME         {info.acme_directory}  (pebble; issues under {info.acme_ca}, new at each start)",
        f"Resolver     {info.dns_server}  (lab names under lab.test, from {info.dns_hosts_dir})",
        f"SSH key      {info.ssh_key}",
        f"known_hosts  {info.known_hosts}",
        f"All facts    {info.lab_env}  (ORCH_LAB_* / ORCH_REGISTRY* variables)",
        "environments/*.yaml reach them by these fixed paths, or by the variables after",
        f"  set -a; . {info.lab_env}; . {info.credentials_file}; set +a",
        f"Try: ssh -i {info.ssh_key} -o UserKnownHostsFile={info.known_hosts} "
        f"{user}@{info.nodes[0].address} docker info",
    ]
    print("\n".join(lines))


@lab_app.command("down")
def down(
    name: str = _name_option(),
    json_out: Json = False,
) -> None:
    """Remove every process, namespace, interface, mount and file the lab created."""
    from orchestrator.cli.output import final, print_final
    from orchestrator.lab.down import down as lab_down
    from orchestrator.lab.info import resolve_name

    name = resolve_name(name)
    lab_down(name, log=_log)
    if json_out:
        print_final(final("ok", "lab down", lab=name, removed=True))
    else:
        print(f"Lab {name} is down; nothing of it is left.")


@lab_app.command("status")
def status(
    name: str = _name_option(),
    json_out: Json = False,
) -> None:
    """Each node, the registry, and what is wrong with the fix. Exit 1 when unhealthy."""
    from orchestrator.cli.output import failure, final, print_final
    from orchestrator.lab.info import resolve_name
    from orchestrator.lab.status import check

    st = check(resolve_name(name))
    if json_out:
        fields = st.to_json()
        if st.healthy:
            print_final(final("ok", "lab status", **fields))
            return
        problems = "; ".join(i.problem for i in st.issues) or f"no lab named {st.name}"
        err = LabUnhealthy(f"lab {st.name} is not healthy: {problems}",
                        fix="; ".join(dict.fromkeys(i.fix for i in st.issues if i.fix)) or "orch lab up",
                        details={"issues": [{"problem": i.problem, "fix": i.fix} for i in st.issues]})
        print_final(failure(err, "lab status", **fields))
        print(f"orch: error: {err.render()}", file=sys.stderr, flush=True)
        raise typer.Exit(1)
    if not st.exists:
        print(f"No lab named {st.name} on this machine.")
        for issue in st.issues:
            print(f"  ! {issue.problem}\n    fix: {issue.fix}")
        print("Create it with `orch lab up" + ("" if st.name == "orch-lab" else f" --name {st.name}") + "`.")
        raise typer.Exit(1)
    def yes(b: bool) -> str:
        return "up" if b else "DOWN"

    print(f"Lab {st.name}: {st.subnet} on {st.bridge}; host engine {yes(st.host_engine_up)}")
    rows = [("NODE", "ADDRESS", "SSHD", "ENGINE", "VERSION", "RUNNING", "ENGINE ID")]
    for n in st.nodes:
        rows.append(
            (
                n.name,
                n.address,
                yes(n.sshd_up),
                yes(n.engine_up),
                n.engine_version or "-",
                "-" if n.containers_running is None else str(n.containers_running),
                (n.engine_id or "-")[:14],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    reg = st.registry
    if reg:
        repos = ", ".join(reg.repositories) if reg.repositories is not None else "?"
        print(f"Registry {reg.address} {yes(reg.up)} (repositories: {repos}); mirror {reg.mirror} {yes(reg.mirror_up)}")
    acme = st.acme
    if acme:
        names = ", ".join(acme.names) or "none"
        print(f"ACME {acme.directory} {yes(acme.up)} (root {acme.ca_file}"
              f"{'' if acme.ca_current else ', STALE'}); resolver {acme.dns_server} {yes(acme.dns_up)} (names: {names})")
    if st.issues:
        print("Problems:")
        for issue in st.issues:
            print(f"  ! {issue.problem}\n    fix: {issue.fix}")
        raise typer.Exit(1)
    print("Healthy.")


dns_app = typer.Typer(
    help="Names the lab's resolver answers (under lab.test): the ACME server validates through it.",
    no_args_is_help=True,
)
lab_app.add_typer(dns_app, name="dns")


@dns_app.command("set")
def dns_set(
    host: str = typer.Argument(..., help="A name under lab.test, e.g. shop.lab.test."),
    addresses: list[str] = typer.Argument(None, help="IPv4 addresses it resolves to (default: --env's nodes)."),
    env: Optional[str] = typer.Option(None, "--env", help="Resolve to every lab node of this environment."),
    name: str = _name_option(),
    json_out: Json = False,
) -> None:
    """Make the lab resolver answer HOST with the given addresses (or an environment's nodes)."""
    from orchestrator.cli.output import final, print_final
    from orchestrator.lab.dns import add_name
    from orchestrator.lab.info import env_addresses, resolve_name

    lab = resolve_name(name)
    chosen = list(addresses or []) or (env_addresses(lab, env) if env else [])
    if not chosen:
        raise InputError(Problem(f"no address given for {host}", fix="give addresses, or --env ENV for that environment's nodes"))
    canon = add_name(host, chosen, lab)
    if json_out:
        print_final(final("ok", "lab dns set", name=canon, addresses=chosen))
    else:
        print(f"{canon} -> {', '.join(chosen)}")


@dns_app.command("rm")
def dns_rm(
    host: str = typer.Argument(..., help="The name to forget."),
    name: str = _name_option(),
    json_out: Json = False,
) -> None:
    """Make the lab resolver forget HOST (it then answers NXDOMAIN)."""
    from orchestrator.cli.output import final, print_final
    from orchestrator.lab.dns import check_name, remove_name
    from orchestrator.lab.info import resolve_name

    canon = check_name(host)
    remove_name(canon, resolve_name(name))
    if json_out:
        print_final(final("ok", "lab dns rm", name=canon))
    else:
        print(f"{canon} removed")
