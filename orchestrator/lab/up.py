"""`orch lab up`: converge the machine to the lab's spec. Idempotent and resumable.

Every step checks before it acts, so a second run with everything up only checks
(a second or two), and a run after a crash, a killed session or a reboot repairs
what is missing. Node daemons start in the background while base images build.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator.errors import InputError, OrchError, Problem
from orchestrator.lab import (
    acme,
    engine,
    images,
    light,
    netns,
    nodes,
    packages,
    pki,
    proc,
    registry,
    state,
)
from orchestrator.lab.info import LabInfo, info_from_spec
from orchestrator.lab.model import (
    DEFAULT_NODES,
    SSH_PORT,
    LabPaths,
    LabSpec,
    build_spec,
    default_subnet_for,
    parse_subnet,
    validate_name,
)


def require_root(what: str = "up") -> None:
    if os.geteuid() != 0:
        raise InputError(
            Problem(
                f"`orch lab {what}` must run as root: it creates network namespaces, "
                "a bridge, iptables rules and daemons",
                fix=f"run it with sudo (sudo orch lab {what}) or as root",
            )
        )


def require_netns() -> None:
    if not Path("/proc/self/ns/net").exists():
        raise OrchError(
            "this kernel has no network namespaces, which every lab node needs.",
            fix="run the lab on a Linux machine or VM with CONFIG_NET_NS (any stock "
            "Debian kernel), not inside an unprivileged container",
        )


def resolve_spec(name: str, nodes_opt: str | None, subnet_opt: str | None) -> LabSpec:
    """The spec to converge to: options over the saved spec over defaults."""
    saved = state.load_spec(LabPaths.for_name(name))
    if saved and subnet_opt and str(parse_subnet(subnet_opt)) != saved.subnet:
        raise InputError(
            Problem(
                f"lab {name} already uses subnet {saved.subnet}",
                key="--subnet",
                fix="run `orch lab down` first to move it, or leave --subnet out",
            )
        )
    if saved:
        subnet = saved.subnet
    elif subnet_opt:
        subnet = subnet_opt
    else:
        import ipaddress

        taken = []
        for r in netns.routes():
            try:
                if r.get("dst") not in (None, "default"):
                    taken.append(ipaddress.IPv4Network(r["dst"], strict=False))
            except ValueError:
                pass
        subnet = default_subnet_for(name, taken)
    if nodes_opt:
        return build_spec(name, subnet, nodes_opt)
    if saved:
        return saved
    return build_spec(name, subnet, DEFAULT_NODES)


def up(name: str, nodes_opt: str | None = None, subnet_opt: str | None = None, log=print) -> LabInfo:
    require_root("up")
    require_netns()
    name = validate_name(name)
    paths = LabPaths.for_name(name)
    packages.ensure(log)
    try:
        with state.locked(paths, log):
            spec = resolve_spec(name, nodes_opt, subnet_opt)
            return _up_locked(spec, log)
    finally:
        if not paths.spec_file.exists():  # refused before creating anything
            paths.lock.unlink(missing_ok=True)


def _up_locked(spec: LabSpec, log) -> LabInfo:
    p = spec.paths
    started = time.monotonic()
    saved = state.load_spec(p)
    if saved is None:
        netns.check_subnet_free(spec)
    engine.ensure_host_engine(log)

    # Nodes dropped from the spec go first; then the spec is saved so that a run that
    # fails half-way can be finished by `lab up` or removed by `lab down`.
    if saved:
        for old in saved.nodes:
            if old.name not in {n.name for n in spec.nodes}:
                log(f"{old.name}: removing (not in --nodes)")
                nodes.teardown(saved, old.name)
    for d in (p.state, p.logs, p.run):
        d.mkdir(parents=True, exist_ok=True)
    state.save_spec(spec)

    netns.ensure_bridge(spec, log)
    netns.ensure_forwarding(spec)

    # Keys: the CA and the SSH client key are made once and kept.
    pki.ensure_ca(p.ca_dir, p.ca_key, p.ca_cert, spec.name)
    new_cert = pki.ensure_server_cert(p.registry_key, p.registry_cert, spec.host_address, p.ca_cert, p.ca_key)
    pki.ensure_ssh_key(p.client_key, f"orch@{spec.name}")
    state.write_if_changed(p.authorized_keys, pki.public_key(p.client_key) + "\n", 0o600)

    # Nodes: spawn what is missing now, wait later (their engines start while we work).
    host_links = netns.links()
    pending = [nodes.ensure(spec, n, host_links, log) for n in spec.nodes]
    light.ensure(spec, log)
    known = [
        pki.known_hosts_line(n.address, SSH_PORT, pki.public_key(p.host_key(n.name)))
        for n in spec.nodes
    ]
    state.write_if_changed(p.known_hosts, "\n".join(known) + "\n", 0o644)

    creds = _ensure_registry(spec, log, restart=new_cert)
    acme.ensure(spec, log)  # the resolver, pebble, and pebble's root in acme-ca.crt

    images.ensure_host_images(p.image_cache, log)
    images.ensure_pushed(
        spec.registry,
        p.docker_client_config,
        creds.user,
        creds.password,
        lambda repo, tag: registry.manifest_digest(spec, creds, repo, tag),
        log,
    )

    for pend in pending:
        nodes.wait(spec, pend)
        if pend.actions:
            log(f"{pend.node.name}: {pend.node.address} ({', '.join(pend.actions)} started)")
    state.write_if_changed(p.lab_env, state.render_lab_env(spec))
    log(f"lab {spec.name} is up ({time.monotonic() - started:.1f} s)")
    return info_from_spec(spec)


def _ensure_registry(spec: LabSpec, log, restart: bool = False) -> registry.Credentials:
    """Both registry processes up with the current config, certificate and htpasswd.

    Distribution reads its certificate and htpasswd at start, so a change restarts it.
    """
    p = spec.paths
    creds = registry.load_or_create_credentials(spec)
    state.write_if_changed(p.registry_env, registry.env_file(spec, creds), 0o600)
    if not registry.htpasswd_matches(p.htpasswd, creds):
        registry.write_private(p.htpasswd, registry.htpasswd_line(creds.user, creds.password))
        restart = True
    registry.install_ca(spec)
    waits = []
    for mirror in (False, True):
        cfg_path = p.mirror_config if mirror else p.registry_config
        changed = state.write_if_changed(cfg_path, registry.render(spec, creds, mirror=mirror), 0o600)
        procs = proc.process_table()
        running = registry.find(procs, spec, mirror=mirror)
        url = f"https://{spec.mirror if mirror else spec.registry}/v2/"
        if running and (changed or restart or not registry.answers(spec, url)):
            proc.stop([r.pid for r in running], timeout=10)
            running = []
        if not running:
            waits.append((mirror, registry.start(spec, mirror=mirror)))
    for mirror, pid in waits:
        registry.wait(spec, pid, mirror=mirror)
        log(f"{'mirror' if mirror else 'registry'} https://{spec.mirror if mirror else spec.registry} started")
    return creds
