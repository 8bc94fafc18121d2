"""The node's certificate store: what agent.certs.ops (tls_cert_put: a user's files) and
the certificate daemon (certd: ACME) call to put a certificate where HAProxy serves it,
take one away, and list them. Files: agent.certs.files; runtime commands:
agent.certs.runtime.

How a certificate reaches HAProxy without dropping a request (install):
  - HAProxy already serves this file: `set ssl cert` + `commit ssl cert` on the runtime
    API (no reload; a renewal, the frequent case).
  - a new host name while the shared HTTPS port is up: a seamless reload (the same one
    a new service gets: the listeners pass to the new worker, no connection refused),
    because the new name changes the config too (the HTTP port's redirect to HTTPS
    starts with the certificate) and the config must stay what runs. New names are
    rare (a first issue, a new service); renewals go the runtime way.
  - HAProxy not running, or no host-routed service on the node: just the files; the
    next start or reload loads them.
Changes are made under the ingress lock (agent.ingress_files.ingress_lock), like
ingress_sync's, so the config and the runtime never disagree.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Set

from agent.certs import files as F
from agent.certs import runtime as R
from agent.certs.openssl import cert_facts, key_matches
from agent.haproxy import HAProxy, render_config
from agent.ingress_files import Paths, ingress_lock, load_state, paths_for, write_atomic
from agent.wire.protocol import BAD_REQUEST, CONFLICT, AgentError, check_name
from agent.wire.tls import MAX_PEM_BYTES, CertInfo, check_host_name

cert_dir = F.cert_dir
certd_socket = F.certd_socket

__all__ = ["cert_dir", "certd_socket", "cert_facts", "install", "remove", "list_certs", "loaded_files", "route_certs"]


def _data_dir(target: Any) -> str:
    return target.data_dir() if hasattr(target, "data_dir") else str(target)


def _emit(target: Any) -> Callable[..., None]:
    emit = getattr(target, "emit", None)
    return emit if callable(emit) else (lambda *a, **k: None)


def _hap(target: Any, paths: Paths) -> HAProxy:
    return HAProxy(paths, clock=getattr(target, "clock", time.monotonic), sleep=getattr(target, "sleep", time.sleep))


def bundle(cert_pem: str, key_pem: str) -> str:
    """One PEM file as HAProxy loads it: leaf, chain, key; no empty line (runtime payload)."""
    return R.payload_text(cert_pem.strip() + "\n" + key_pem.strip() + "\n")


def loaded_files(hap: HAProxy) -> Optional[Set[str]]:
    """The certificate files HAProxy serves now (None: it is not running or did not answer)."""
    if hap.pid() is None:
        return None
    try:
        return set(R.parse_show_ssl_cert(hap.runtime(R.cmd_show_ssl_cert()))[0])
    except AgentError:
        return None


def _edge_up(paths: Paths) -> bool:
    return any(s.route.routed for s in load_state(paths).values())


def _reload(hap: HAProxy) -> None:
    """Render (writing the crt-list), check, reload; the old config back on failure."""
    previous = hap.write_config(render_config(hap.paths, load_state(hap.paths)))
    try:
        hap.save_server_state()
        hap.reload()
    except AgentError:
        if previous is not None:
            write_atomic(hap.paths.config, previous.encode("utf-8"))
        raise


def _serve(hap: HAProxy, path: str, body: str, unchanged: bool) -> str:
    """Make HAProxy serve the file now: 'set' | 'reload' | 'files' (not running) | 'same'."""
    if hap.pid() is None or not _edge_up(hap.paths):
        return "files"
    loaded = loaded_files(hap) or set()
    if path in loaded:
        if unchanged:
            return "same"
        R.check_set(hap.runtime(R.cmd_set_ssl_cert(path), payload=body), path)
        try:
            R.check_commit(hap.runtime(R.cmd_commit_ssl_cert(path)), path)
        except AgentError:
            hap.runtime(R.cmd_abort_ssl_cert(path))
            raise
        return "set"
    _reload(hap)
    return "reload"


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def _put_back(path: str, data: Optional[bytes]) -> None:
    if data is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        write_atomic(path, data, 0o600)


def covers(names: Any, host: str) -> bool:
    """Does a certificate for these DNS names serve `host` (a wildcard covers one label)?"""
    return any(n == host or (n.startswith("*.") and host.split(".", 1)[-1] == n[2:] and "." in host)
               for n in names)


def _check_usable(facts: Dict[str, Any], host: str) -> None:
    if not covers(facts["names"], host):
        raise AgentError(BAD_REQUEST, "the certificate is for %s, not %s" % (", ".join(facts["names"]) or
                                                                          "no DNS name", host),
                         {"host": host, "fix": "give a certificate whose subject alternative names include %s" % host})
    if facts["not_after"] <= time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()):
        raise AgentError(BAD_REQUEST, "the certificate for %s expired on %s" % (host, facts["not_after"]),
                         {"host": host, "fix": "renew it"})


def install(target: Any, env: str, host: str, cert_pem: str, key_pem: str, source: str) -> CertInfo:
    """Put host's certificate (leaf first, then its chain) and key in the store and make
    HAProxy serve it (module docstring). target: a Context or the data dir. CONFLICT if
    the host's certificate there is another environment's; BAD_REQUEST if the key does
    not match the certificate or openssl cannot read them."""
    data_dir = _data_dir(target)
    check_name(env, "env")
    check_host_name(host, "host")
    if len(cert_pem) > MAX_PEM_BYTES or len(key_pem) > MAX_PEM_BYTES:
        raise AgentError(BAD_REQUEST, "a certificate or key is larger than %d bytes" % MAX_PEM_BYTES)
    facts = cert_facts(cert_pem)
    _check_usable(facts, host)
    if not key_matches(cert_pem, key_pem):
        raise AgentError(BAD_REQUEST, "the key does not match the certificate for %s" % host,
                         {"host": host, "fix": "give the key the certificate was issued for"})
    paths = paths_for(data_dir)
    with ingress_lock(paths, getattr(target, "cancelled", None)):
        old = F.read_info(data_dir, host)
        if old is not None and old.env and old.env != env:
            raise AgentError(CONFLICT, "the certificate for %s on this node belongs to environment %s, not %s"
                             % (host, old.env, env), {"host": host, "env": old.env,
                                                      "fix": "remove it for %s first (tls_cert_remove)" % old.env})
        F.ensure_dir(data_dir)
        path, jpath = F.pem_path(data_dir, host), F.info_path(data_dir, host)
        body = bundle(cert_pem, key_pem)
        before, before_info = _read(path), _read(jpath)
        info = CertInfo(host=host, source=source, env=env, fingerprint=facts["fingerprint"], issuer=facts["issuer"],
                        not_before=facts["not_before"], not_after=facts["not_after"], names=tuple(facts["names"]))
        write_atomic(path, body.encode("utf-8"), 0o600)
        F.write_info(data_dir, info)
        hap = _hap(target, paths)
        try:
            how = _serve(hap, path, body, before == body.encode("utf-8"))
        except AgentError:
            _put_back(path, before)
            _put_back(jpath, before_info)
            raise
    _emit(target)("tls.cert", host=host, env=env, fingerprint=info.fingerprint, not_after=info.not_after, how=how)
    return replace(info, loaded=how in ("set", "reload", "same"))


def remove(target: Any, env: str, host: str) -> bool:
    """Take host's certificate out of the store and out of HAProxy (a reload, when it
    serves it). False if the store has none; CONFLICT if it is another environment's."""
    data_dir = _data_dir(target)
    check_name(env, "env")
    check_host_name(host, "host")
    paths = paths_for(data_dir)
    with ingress_lock(paths, getattr(target, "cancelled", None)):
        info = F.read_info(data_dir, host)
        path = F.pem_path(data_dir, host)
        if info is None and not os.path.exists(path):
            return False
        if info is not None and info.env and info.env != env:
            raise AgentError(CONFLICT, "the certificate for %s on this node belongs to environment %s, not %s"
                             % (host, info.env, env), {"host": host, "env": info.env})
        for p in (F.info_path(data_dir, host), path):
            _put_back(p, None)
        hap = _hap(target, paths)
        if path in (loaded_files(hap) or set()):
            _reload(hap)
    _emit(target)("tls.cert", host=host, env=env, how="removed")
    return True


def list_certs(data_dir: str, env: Optional[str] = None, hap: Optional[HAProxy] = None) -> List[CertInfo]:
    """The store's certificates (of `env`, or all), each with `loaded`: HAProxy serves it."""
    if hap is None:
        hap = HAProxy(paths_for(data_dir))
    loaded = loaded_files(hap) or set()
    out = []
    for host in F.hosts(data_dir):
        info = F.read_info(data_dir, host)
        if info is None or (env is not None and info.env != env):
            continue
        out.append(replace(info, loaded=F.pem_path(data_dir, host) in loaded))
    return out


def route_certs(data_dir: str, hosts: Any, loaded: Optional[Set[str]]) -> Dict[str, Dict[str, Any]]:
    """Per host name: {loaded, fingerprint, not_after, issuer, source} of its certificate
    here ({loaded: False} and empty facts when there is none), for ingress_state/status.
    loaded: loaded_files() (None: HAProxy not running)."""
    out = {}
    for host in hosts:
        try:
            info = F.read_info(data_dir, host)
        except AgentError:
            info = None
        path = F.pem_path(data_dir, host)
        out[host] = {"loaded": bool(info) and path in (loaded or set()),
                     "fingerprint": info.fingerprint if info else "", "not_after": info.not_after if info else "",
                     "issuer": info.issuer if info else "", "source": info.source if info else ""}
    return out
