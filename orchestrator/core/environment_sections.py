"""Sections of an environment file, parsed for orchestrator.core.environments (pure):
`ssh:` (how the nodes are reached), `registries:` (other registries' credentials) and
`verify:` (post-deploy checks), with the template syntax check they share with the overlay."""

from __future__ import annotations

from pathlib import Path

from orchestrator.core.environments import (_CHECK_KEYS, _REGISTRIES_KEYS, _SSH_KEYS, _VERIFY_KEYS, MAX_PERSIST,
                                            RegistrySpec, SSHSettings, VerifyCheck, VerifySettings, _kind, _loc_of,
                                            _locations, _Reader)
from orchestrator.limits import DOTENV_MAX_BYTES


def _parse_ssh(r: _Reader, doc, path: Path) -> SSHSettings:
    raw_ssh = r.mapping(doc, "ssh", "ssh", _SSH_KEYS)
    ssh = SSHSettings(
        known_hosts=r.file_path(raw_ssh, "known_hosts", "ssh.known_hosts", path),
        connect_timeout=float(r.typed(raw_ssh, "connect_timeout", "ssh.connect_timeout", (int, float), "seconds", 10.0)),
        command_timeout=float(r.typed(raw_ssh, "command_timeout", "ssh.command_timeout", (int, float), "seconds", 600.0)),
        strict_host_keys=r.typed(raw_ssh, "strict_host_keys", "ssh.strict_host_keys", (bool,), "true or false", True),
        persist=float(r.typed(raw_ssh, "persist", "ssh.persist", (int, float), "seconds", 0.0)),
        **{k: r.typed(raw_ssh, k, f"ssh.{k}", (int,), "a whole number", d) for k, d in (("handshakes", 32),
           ("handshakes_per_server", 8))},
    )
    if not 0 <= ssh.persist <= MAX_PERSIST:
        r.problem(raw_ssh, "persist", "ssh.persist", f"must be between 0 and {MAX_PERSIST:g} seconds, not "
                  f"{ssh.persist:g}", fix="give the seconds an idle connection is kept between commands "
                  "(e.g. 300), or 0 (the default) to connect anew for every command")
    for k in ("handshakes", "handshakes_per_server"):
        if getattr(ssh, k) < 1:
            r.problem(raw_ssh, k, f"ssh.{k}", f"must be at least 1, not {getattr(ssh, k)}", fix=f"leave ssh.{k} out "
                      "(the default) or give a positive number of SSH handshakes")
    return ssh


def _parse_registries(r: _Reader, doc, own: RegistrySpec, path: Path) -> tuple[RegistrySpec, ...]:
    """`registries:`, a list of {address, credentials...}: images on another registry
    (ghcr.io, a company registry) are pinned and pulled with that entry's credentials."""
    from agent.wire.protocol import canonical_registry, check_registry_address

    raw = doc.get("registries")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        r.problem(doc, "registries", "registries", f"must be a list, not {_kind(raw)}",
                  fix="write `registries: [{address: ghcr.io, username_env: GHCR_USER, password_env: GHCR_TOKEN}]`.")
        return ()
    out: list[RegistrySpec] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(raw):
        p = f"registries[{i}]"
        if not isinstance(entry, dict):
            r.problem(raw, i, p, f"must be a mapping, not {_kind(entry)}",
                      fix="write `- {address: HOST[:PORT], username_env: VARIABLE, password_env: VARIABLE}`.")
            continue
        r.mapping(None, None, p, _REGISTRIES_KEYS, value=entry)
        s = lambda k: r.typed(entry, k, f"{p}.{k}", (str,), "a string")  # noqa: E731
        address = s("address")
        if not address:
            r.problem(raw, i, p, "a registries entry needs an address",
                      fix="add `address: HOST[:PORT]` (e.g. ghcr.io or registry.example.com:5000).")
            continue
        try:
            check_registry_address(address, "address")
        except ValueError:
            r.problem(entry, "address", f"{p}.address", f"{address!r} is not a registry host[:port]",
                      fix="write the registry's host[:port] as it appears in image names, e.g. ghcr.io or "
                      "registry.example.com:5000 (no https://, no path).")
            continue
        canon = canonical_registry(address)
        if own.address and canon == canonical_registry(own.address):
            r.problem(entry, "address", f"{p}.address", f"{address} is the environment's own registry",
                      fix="set its credentials under registry: and drop this entry.")
            continue
        if own.mirror and canon == canonical_registry(own.mirror):
            r.problem(entry, "address", f"{p}.address", f"{address} is registry.mirror, which is used anonymously",
                      fix="drop this entry (nodes send no credentials to a mirror).")
            continue
        if canon in seen:
            r.problem(entry, "address", f"{p}.address", f"{address} is listed twice (also {seen[canon]})",
                      fix="keep one entry per registry.")
            continue
        seen[canon] = p
        out.append(RegistrySpec(
            address=address,
            ca_file=r.file_path(entry, "ca_file", f"{p}.ca_file", path),
            username=s("username"),
            username_env=s("username_env"),
            password_env=s("password_env"),
            password_file=r.file_path(entry, "password_file", f"{p}.password_file", path, DOTENV_MAX_BYTES),
            credentials_file=r.file_path(entry, "credentials_file", f"{p}.credentials_file", path, DOTENV_MAX_BYTES),
            source=str(path),
            key=p,
            locations=_locations(raw, i, entry),
        ))
    return tuple(out)


def _parse_verify(r: _Reader, doc) -> VerifySettings:
    raw = r.mapping(doc, "verify", "verify", _VERIFY_KEYS)
    on_deploy = r.typed(raw, "on_deploy", "verify.on_deploy", (bool,), "true or false", False)
    checks = []
    raw_checks = raw.get("checks") or []
    if not isinstance(raw_checks, list):
        r.problem(raw, "checks", "verify.checks", f"must be a list, not {_kind(raw_checks)}")
        raw_checks = []
    for i, c in enumerate(raw_checks):
        p = f"verify.checks[{i}]"
        if not isinstance(c, dict):
            r.problem(raw_checks, i, p, f"must be a mapping, not {_kind(c)}")
            continue
        r.mapping(None, None, p, _CHECK_KEYS, value=c)
        http = r.typed(c, "http", f"{p}.http", (str,), "a URL template")
        command = c.get("command")
        if isinstance(command, str):
            import shlex

            command = shlex.split(command)
        if command is not None and not (isinstance(command, list) and all(isinstance(a, str) for a in command)):
            r.problem(c, "command", f"{p}.command", "must be a string or a list of strings")
            command = None
        if (http is None) == (command is None):
            r.problem(raw_checks, i, p, "a check needs exactly one of http or command",
                      fix="write `http: http://{{ node.host }}:8080/` or `command: [pytest, -q, smoke/]`.")
            continue
        if http is not None:
            _check_template_syntax(r, c, "http", f"{p}.http", http)
        else:
            for key, fix in (("status", "remove status: (a command passes on exit code 0), or make it an http check."),
                             ("contains", "remove contains: and check the output in the command itself (e.g. with "
                                          "grep), or make it an http check.")):
                if key in c:
                    r.problem(c, key, f"{p}.{key}",
                              f"{key} applies to http checks only; this is a command check, which passes on "
                              "exit code 0", fix=fix)
        checks.append(
            VerifyCheck(
                name=r.typed(c, "name", f"{p}.name", (str,), "a string", default=f"check-{i + 1}"),
                http=http,
                service=r.typed(c, "service", f"{p}.service", (str,), "a service name"),
                status=r.typed(c, "status", f"{p}.status", (int,), "an HTTP status code", 200),
                contains=r.typed(c, "contains", f"{p}.contains", (str,), "a string"),
                timeout=float(r.typed(c, "timeout", f"{p}.timeout", (int, float), "seconds", 5.0)),
                retries=r.typed(c, "retries", f"{p}.retries", (int,), "a whole number", 3),
                command=command,
                index=i,
                locations={k: _loc_of(c, k) for k in c if isinstance(k, str)},
            )
        )
    return VerifySettings(on_deploy=on_deploy, checks=tuple(checks))


def _check_template_syntax(r: _Reader, parent, key, path, text: str) -> None:
    import jinja2

    from orchestrator.core import templates

    try:
        templates.environment().parse(text)
    except jinja2.TemplateSyntaxError as err:
        r.problem(parent, key, path, f"template syntax error: {err.message}",
                  fix="close every {{ ... }} and {% ... %}.")


# --------------------------------------------------------------------------- templates


# --------------------------------------------------------------------------- ingress (HTTPS at the edge)

def _parse_ingress(r: _Reader, doc, path: Path):
    """`ingress:`: the nodes' shared HTTP and HTTPS ports for host routes, and the ACME
    settings `tls: auto` needs (orchestrator.core.edge.EdgeSettings)."""
    from agent.wire.tls import DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT, EdgePorts
    from orchestrator.core.edge import ACME_KEYS, INGRESS_KEYS, AcmeEnv, EdgeSettings, long_seconds

    raw = r.mapping(doc, "ingress", "ingress", INGRESS_KEYS)
    ports = []
    for key, default in (("http_port", DEFAULT_HTTP_PORT), ("https_port", DEFAULT_HTTPS_PORT)):
        port = r.typed(raw, key, f"ingress.{key}", (int,), "a port number", default)
        if not 0 < port < 65536:
            r.problem(raw, key, f"ingress.{key}", f"port {port} is out of range", fix=f"use 1-65535 (default {default}).")
            port = default
        ports.append(port)
    if ports[0] == ports[1]:
        r.problem(raw, "https_port", "ingress.https_port", f"the HTTP and HTTPS ports are both {ports[0]}",
                  fix="give them different ports (default 80 and 443).")
        ports = [DEFAULT_HTTP_PORT, DEFAULT_HTTPS_PORT]
    acme = None
    raw_acme = r.mapping(raw, "acme", "ingress.acme", ACME_KEYS) if raw else {}
    if raw_acme:
        directory = r.typed(raw_acme, "directory", "ingress.acme.directory", (str,), "an https:// URL")
        if not directory or not directory.startswith("https://") or any(c.isspace() for c in directory):
            r.problem(raw, "acme", "ingress.acme.directory", "ingress.acme needs directory: the CA's ACME directory URL"
                      if not directory else f"the ACME directory {directory!r} is not an https:// URL",
                      fix="write e.g. directory: https://acme-v02.api.letsencrypt.org/directory (Let's Encrypt).")
            directory = ""
        email = r.typed(raw_acme, "email", "ingress.acme.email", (str,), "an e-mail address", "")
        if email and ("@" not in email or any(c.isspace() for c in email)):
            r.problem(raw_acme, "email", "ingress.acme.email", "is not an e-mail address",
                      fix="write the address the CA may send expiry notices to, e.g. ops@example.com, or drop it.")
            email = ""
        renew = r.typed(raw_acme, "renew_before", "ingress.acme.renew_before", (str, int, float), "a duration", 0)
        try:
            renew_s = long_seconds(renew) if renew else 0.0
        except ValueError as err:
            r.problem(raw_acme, "renew_before", "ingress.acme.renew_before", f"{renew!r} is not a duration: {err}",
                      fix="write e.g. renew_before: 30d (or 720h); without it a certificate is renewed when a third "
                          "of its lifetime is left.")
            renew_s = 0.0
        acme = AcmeEnv(directory=directory, email=email, renew_before=renew_s,
                       ca_file=r.file_path(raw_acme, "ca_file", "ingress.acme.ca_file", path),
                       line=_loc_of(raw, "acme")[0])
    return EdgeSettings(ports=EdgePorts(http=ports[0], https=ports[1]), acme=acme)
