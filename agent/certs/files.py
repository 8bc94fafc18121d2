"""The certificate store's files, under Context.data_dir()/certs/ (0700):

  <host>.pem     leaf, chain and key in one file, as HAProxy loads it (0600)
  <host>.json    the certificate's public facts (CertInfo) with its env and source
  default.pem    the node's self-signed fallback (an HTTPS bind needs one; served to
                 clients naming no known host); host names have a '.', so no clash
  crt-list       HAProxy's list of them: default.pem first, then one line per host
                 with its SNI filter

and where an environment's certificate daemon listens for the ACME challenges HAProxy
forwards to it (certd_socket: beside the ingress sockets, in its short run folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional

from agent.certs.openssl import self_signed
from agent.ingress_files import ensure_dirs, paths_for, write_atomic
from agent.wire.protocol import INTERNAL, AgentError
from agent.wire.tls import CertInfo, check_host_name

DEFAULT_NAME = "default"
SOCKET_MAX = 100  # bytes of a unix socket path HAProxy and the kernel accept (108 less margin)


def cert_dir(data_dir: str) -> str:
    return os.path.join(os.path.abspath(data_dir), "certs")


def ensure_dir(data_dir: str) -> str:
    folder = cert_dir(data_dir)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def pem_path(data_dir: str, host: str) -> str:
    return os.path.join(cert_dir(data_dir), check_host_name(host, "host") + ".pem")


def info_path(data_dir: str, host: str) -> str:
    return os.path.join(cert_dir(data_dir), check_host_name(host, "host") + ".json")


def default_path(data_dir: str) -> str:
    return os.path.join(cert_dir(data_dir), DEFAULT_NAME + ".pem")


def crt_list_path(data_dir: str) -> str:
    return os.path.join(cert_dir(data_dir), "crt-list")


def certd_socket(data_dir: str, env: str) -> str:
    """The unix socket of env's certificate daemon, which HAProxy's `acme.<env>` backend
    forwards ACME challenges to. Its folder (0700, the ingress's run folder) is made here."""
    paths = paths_for(data_dir)
    ensure_dirs(paths)
    return socket_in(paths.run_dir, env)


def socket_in(run_dir: str, env: str) -> str:
    path = os.path.join(run_dir, "certd-%s.sock" % env)
    if len(path.encode("utf-8")) > SOCKET_MAX:  # a long environment name
        path = os.path.join(run_dir, "certd-%s.sock" % hashlib.sha256(env.encode("utf-8")).hexdigest()[:16])
    return path


def read_info(data_dir: str, host: str) -> Optional[CertInfo]:
    try:
        with open(info_path(data_dir, host), "rb") as fh:
            return CertInfo.from_dict(json.loads(fh.read().decode("utf-8")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        raise AgentError(INTERNAL, "cannot read %s: %s" % (info_path(data_dir, host), exc),
                         {"fix": "remove it and put the certificate again"})


def write_info(data_dir: str, info: CertInfo) -> None:
    body = info.to_dict()
    body.pop("loaded")  # a fact of HAProxy, asked each time
    write_atomic(info_path(data_dir, info.host), (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())


def hosts(data_dir: str) -> List[str]:
    """The host names the store holds a certificate for (both files there), sorted."""
    try:
        names = os.listdir(cert_dir(data_dir))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if name.endswith(".json") and name[:-5] + ".pem" in names:
            out.append(name[:-5])
    return sorted(out)


def ensure_default(data_dir: str) -> str:
    """The node's self-signed fallback certificate, made once."""
    path = default_path(data_dir)
    if not os.path.exists(path):
        folder = ensure_dir(data_dir)
        write_atomic(path, self_signed(folder).encode("utf-8"), 0o600)
    return path


def crt_list_text(default: str, certs: Dict[str, str]) -> str:
    """HAProxy's crt-list: the fallback first (served when no SNI filter matches), then
    each host's file with the host as its SNI filter."""
    lines = [default] + ["%s %s" % (certs[h], h) for h in sorted(certs)]
    return "\n".join(lines) + "\n"


def write_edge_files(data_dir: str) -> Dict[str, str]:
    """Make the fallback certificate and write the crt-list (before HAProxy reads a
    config naming it); {host: its .pem} of the store."""
    ensure_dir(data_dir)
    default = ensure_default(data_dir)
    certs = {h: pem_path(data_dir, h) for h in hosts(data_dir)}
    write_atomic(crt_list_path(data_dir), crt_list_text(default, certs).encode("utf-8"), 0o600)
    return certs
