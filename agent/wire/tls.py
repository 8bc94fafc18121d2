"""HTTPS at the edge, the contract: host routes, certificates and the certificate daemon
(issue 15). Pure: stdlib only, no I/O, Python 3.9 compatible.

The picture (docs/ingress.md, "HTTPS"):

- A service's `x-orch.ingress` may name host names (`hosts`). Every node that runs a
  replica routes those names, by Host header and SNI, on the node's shared HTTP and HTTPS
  ports (EdgePorts, 80/443 unless the environment file says otherwise) to the service's
  replicas on that node. A host name belongs to one service of one project on a node; a
  second claim is a CONFLICT on the node and is refused by the controller before anything
  is touched.
- `tls`: TLS_OFF (plain HTTP on the HTTP port), TLS_FILES (a certificate and key given by
  the user: the controller validates them and puts them on each node with `tls_cert_put`)
  or TLS_AUTO (ACME). With a certificate, the HTTP port answers with a redirect to HTTPS
  (unless `redirect: false`), except ACME HTTP-01 challenges, and HTTPS answers with
  Strict-Transport-Security when `hsts` > 0.
- TLS_AUTO: one certificate per host name per environment. One node of the environment,
  the ISSUER, runs the ACME client (Debian's python3-acme) in the environment's certificate
  daemon (agent.certs.daemon, "certd"); it keeps the ACME account key and obtains and renews
  every TLS_AUTO host name of the environment, once. The other nodes of the environment
  that serve such a name are FOLLOWERS: their certd pulls the certificates from the issuer
  over the service mesh (agent.wire.mesh; CERTD_PORT on the issuer's mesh address, with the
  environment's shared secret) and loads them into the local HAProxy. Every node's HAProxy
  forwards /.well-known/acme-challenge/ requests for the environment's names to the local
  certd (a unix socket); a follower's certd asks the issuer, so a challenge is answered
  whichever node the CA reaches. Renewal needs no controller and no deploy: the issuer
  renews a certificate RENEW_FRACTION before its expiry (or `renew_before`), and a new
  certificate reaches HAProxy through its runtime API (`set ssl cert` + `commit ssl cert`)
  without a reload.
- Keys (certificate keys, the ACME account key, the environment's secret) are files of
  mode 0600 on nodes; they are never in a result, an event, a log line or the ledger. A
  certificate's public facts travel as CertInfo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from agent.wire.protocol import (
    BadRequest,
    check_bool,
    check_int,
    check_keys,
    check_name,
    check_number,
    check_str,
    require,
)

TLS_OFF = ""
TLS_FILES = "files"
TLS_AUTO = "auto"
TLS_MODES = (TLS_OFF, TLS_FILES, TLS_AUTO)

DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443
DEFAULT_HSTS = 31536000  # `hsts: true`: one year
CERTD_PORT = 51821  # TCP on the issuer's mesh address (the mesh records use 51820)
RENEW_FRACTION = 1.0 / 3  # renew when less than a third of the lifetime is left
FOLLOW_SECONDS = 30.0  # a follower asks the issuer for new certificates this often
MAX_HOSTS = 100  # host names of one service
MAX_PEM_BYTES = 64 * 1024  # a certificate chain or a key
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"

ROLE_ISSUER = "issuer"
ROLE_FOLLOWER = "follower"

# A DNS host name as a browser sends it: lower case, letters, digits and '-' in labels of
# 1-63 characters, at least two labels, 253 characters at most. No wildcards (HTTP-01
# cannot validate them), no IP addresses, no trailing dot.
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def host_name_problem(name: Any) -> Optional[str]:
    """Why `name` is not a host name orch routes (None: it is one)."""
    if not isinstance(name, str) or not name:
        return "a host name is a non-empty string"
    if len(name) > 253:
        return "a host name has at most 253 characters"
    if name != name.lower():
        return "host names are written in lower case (%s)" % name.lower()
    if name.startswith("*."):
        return "wildcard names are not supported (list each name)"
    labels = name.split(".")
    if len(labels) < 2:
        return "a host name has at least two labels (e.g. shop.example.com)"
    if all(part.isdigit() for part in labels):
        return "an IP address is not a host name"
    for part in labels:
        if not _LABEL_RE.fullmatch(part):
            return "label %r: letters, digits and '-' only, 1-63 characters, not starting or ending with '-'" % part
    return None


def check_host_name(value: Any, what: str) -> str:
    problem = host_name_problem(value)
    if problem:
        raise BadRequest("%s %r is not a host name: %s" % (what, value, problem))
    return value


def check_pem(value: Any, what: str, marker: str) -> str:
    """A PEM text containing `marker` (e.g. 'CERTIFICATE', 'PRIVATE KEY'), bounded."""
    check_str(value, what)
    if len(value.encode("utf-8")) > MAX_PEM_BYTES:
        raise BadRequest("%s is larger than %d bytes" % (what, MAX_PEM_BYTES))
    if "-----BEGIN " not in value or marker not in value:
        raise BadRequest("%s is not a PEM %s" % (what, marker.lower()))
    return value


# ----------------------------------------------------------------------------- routes


@dataclass(frozen=True)
class EdgePorts:
    """A node's shared HTTP and HTTPS ports (the environment file's `ingress.http_port`,
    `ingress.https_port`). All host-routed services on a node must agree on them."""

    http: int = DEFAULT_HTTP_PORT
    https: int = DEFAULT_HTTPS_PORT

    def to_dict(self) -> Dict[str, int]:
        return {"http": self.http, "https": self.https}

    @classmethod
    def parse(cls, d: Any, where: str = "edge_ports") -> "EdgePorts":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object {http, https}" % where)
        check_keys(d, ("http", "https"), where)
        ports = cls(http=check_int(d.get("http", DEFAULT_HTTP_PORT), where + ".http", 1, 65535),
                    https=check_int(d.get("https", DEFAULT_HTTPS_PORT), where + ".https", 1, 65535))
        if ports.http == ports.https:
            raise BadRequest("%s: the HTTP and HTTPS ports must differ" % where)
        return ports


@dataclass(frozen=True)
class Route:
    """The host names of one service and how they are served (part of its ingress)."""

    hosts: Tuple[str, ...] = ()
    tls: str = TLS_OFF
    redirect: bool = True  # with a certificate: HTTP answers 301 to HTTPS (ACME challenges excepted)
    hsts: int = 0  # Strict-Transport-Security max-age on HTTPS answers; 0: no header
    ports: EdgePorts = field(default_factory=EdgePorts)

    @property
    def routed(self) -> bool:
        return bool(self.hosts)

    def to_dict(self) -> Dict[str, Any]:
        return {"hosts": list(self.hosts), "tls": self.tls, "redirect": self.redirect, "hsts": self.hsts,
                "ports": self.ports.to_dict()}

    @classmethod
    def parse(cls, d: Any, where: str = "route") -> "Route":
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object {hosts, tls, redirect, hsts, ports}" % where)
        check_keys(d, ("hosts", "tls", "redirect", "hsts", "ports"), where)
        raw = d.get("hosts") or []
        if not isinstance(raw, list):
            raise BadRequest("%s.hosts must be a list of host names" % where)
        if len(raw) > MAX_HOSTS:
            raise BadRequest("%s.hosts: at most %d host names" % (where, MAX_HOSTS))
        hosts = tuple(check_host_name(h, "%s.hosts[%d]" % (where, i)) for i, h in enumerate(raw))
        if len(set(hosts)) != len(hosts):
            raise BadRequest("%s.hosts names a host more than once" % where)
        tls = d.get("tls", TLS_OFF) or TLS_OFF
        if tls not in TLS_MODES:
            raise BadRequest("%s.tls %r is not one of auto, files or '' (off)" % (where, tls))
        if tls and not hosts:
            raise BadRequest("%s.tls needs host names" % where)
        return cls(hosts=hosts, tls=tls,
                   redirect=check_bool(d.get("redirect", True), where + ".redirect"),
                   hsts=check_int(d.get("hsts", 0), where + ".hsts", 0, 10 * 366 * 86400),
                   ports=EdgePorts.parse(d.get("ports"), where + ".ports"))


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertInfo:
    """The public facts of a certificate a node holds (never its key)."""

    host: str
    source: str  # TLS_AUTO | TLS_FILES | "default" (the node's self-signed fallback)
    env: str = ""
    fingerprint: str = ""  # SHA-256 of the leaf, hex, lower case
    issuer: str = ""  # the issuer's common name (or its whole name)
    not_before: str = ""  # ISO 8601, UTC
    not_after: str = ""
    names: Tuple[str, ...] = ()  # the leaf's DNS subject alternative names
    loaded: bool = False  # HAProxy serves it now

    def to_dict(self) -> Dict[str, Any]:
        return {"host": self.host, "source": self.source, "env": self.env, "fingerprint": self.fingerprint,
                "issuer": self.issuer, "not_before": self.not_before, "not_after": self.not_after,
                "names": list(self.names), "loaded": self.loaded}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CertInfo":
        return cls(host=d["host"], source=d.get("source", ""), env=d.get("env", ""),
                   fingerprint=d.get("fingerprint", ""), issuer=d.get("issuer", ""),
                   not_before=d.get("not_before", ""), not_after=d.get("not_after", ""),
                   names=tuple(d.get("names") or ()), loaded=bool(d.get("loaded", False)))


@dataclass(frozen=True)
class CertPut:
    """`tls_cert_put`: install a user's certificate (TLS_FILES) for one host name. The
    controller has validated it (key matches, not expired, names the host); the node checks
    the PEM shapes and HAProxy refuses a key that does not match."""

    env: str
    host: str
    cert_pem: str  # leaf first, then the chain
    key_pem: str

    @classmethod
    def parse(cls, args: Dict[str, Any]) -> "CertPut":
        check_keys(args, ("env", "host", "cert_pem", "key_pem"), "tls_cert_put")
        return cls(env=check_name(require(args, "env", "tls_cert_put"), "env"),
                   host=check_host_name(require(args, "host", "tls_cert_put"), "host"),
                   cert_pem=check_pem(require(args, "cert_pem", "tls_cert_put"), "cert_pem", "CERTIFICATE"),
                   key_pem=check_pem(require(args, "key_pem", "tls_cert_put"), "key_pem", "PRIVATE KEY"))


# ----------------------------------------------------------------------------- the certificate daemon


@dataclass(frozen=True)
class AcmeSettings:
    """The environment file's `ingress.acme`."""

    directory: str  # the ACME directory URL (https)
    email: str = ""
    ca_pem: str = ""  # CA certificates that sign the ACME server's own HTTPS (the lab's pebble)
    renew_before: float = 0.0  # seconds before expiry; 0: RENEW_FRACTION of the lifetime

    def to_dict(self) -> Dict[str, Any]:
        return {"directory": self.directory, "email": self.email, "ca_pem": self.ca_pem,
                "renew_before": self.renew_before}

    @classmethod
    def parse(cls, d: Any, where: str = "acme") -> "AcmeSettings":
        if not isinstance(d, dict):
            raise BadRequest("%s must be an object {directory, email, ca_pem, renew_before}" % where)
        check_keys(d, ("directory", "email", "ca_pem", "renew_before"), where)
        directory = check_str(require(d, "directory", where), where + ".directory")
        if not directory.startswith("https://") or len(directory) > 2048 or any(c.isspace() for c in directory):
            raise BadRequest("%s.directory %r must be an https:// URL" % (where, directory))
        ca = d.get("ca_pem") or ""
        if ca:
            check_pem(ca, where + ".ca_pem", "CERTIFICATE")
        email = check_str(d.get("email") or "", where + ".email")
        if email and not re.fullmatch(r"[^@\s]{1,64}@[^@\s]{1,253}", email):
            raise BadRequest("%s.email %r is not an e-mail address" % (where, email))
        return cls(directory=directory, email=email, ca_pem=ca,
                   renew_before=check_number(d.get("renew_before", 0.0), where + ".renew_before", 0.0, 366 * 86400.0))


@dataclass(frozen=True)
class CertdConfig:
    """`certd_configure`: what one node's certificate daemon for an environment does.

    The issuer gets `acme` and the full list of the environment's TLS_AUTO names; a follower
    gets the issuer's mesh address and the names it serves. `secret` (32+ random characters,
    made by the controller once per environment and kept by the nodes) authenticates a
    follower to the issuer; it is a secret like a key."""

    env: str
    role: str  # ROLE_ISSUER | ROLE_FOLLOWER
    hosts: Tuple[str, ...]
    secret: str
    acme: Optional[AcmeSettings] = None  # issuer only
    issuer_address: str = ""  # follower only: the issuer's mesh address
    listen_address: str = ""  # issuer with followers: its own mesh address ("" : no followers)
    followers: Tuple[str, ...] = ()  # issuer: the mesh addresses allowed to pull

    def to_dict(self) -> Dict[str, Any]:
        return {"env": self.env, "role": self.role, "hosts": list(self.hosts), "secret": self.secret,
                "acme": self.acme.to_dict() if self.acme else None, "issuer_address": self.issuer_address,
                "listen_address": self.listen_address, "followers": list(self.followers)}

    @classmethod
    def parse(cls, args: Dict[str, Any]) -> "CertdConfig":
        from agent.wire.ingress import check_server_ip

        where = "certd_configure"
        check_keys(args, ("env", "role", "hosts", "secret", "acme", "issuer_address", "listen_address",
                          "followers"), where)
        role = require(args, "role", where)
        if role not in (ROLE_ISSUER, ROLE_FOLLOWER):
            raise BadRequest("role %r is not issuer or follower" % (role,))
        raw = require(args, "hosts", where)
        if not isinstance(raw, list) or len(raw) > 10 * MAX_HOSTS:
            raise BadRequest("hosts must be a list of at most %d host names" % (10 * MAX_HOSTS))
        hosts = tuple(check_host_name(h, "hosts[%d]" % i) for i, h in enumerate(raw))
        secret = check_str(require(args, "secret", where), "secret")
        if not re.fullmatch(r"[A-Za-z0-9_-]{32,128}", secret):
            raise BadRequest("secret must be 32-128 characters of [A-Za-z0-9_-]")
        acme = AcmeSettings.parse(args["acme"]) if args.get("acme") else None
        if role == ROLE_ISSUER and acme is None:
            raise BadRequest("an issuer needs acme settings")
        issuer = check_server_ip(args["issuer_address"], "issuer_address") if args.get("issuer_address") else ""
        if role == ROLE_FOLLOWER and not issuer:
            raise BadRequest("a follower needs the issuer's address")
        listen = check_server_ip(args["listen_address"], "listen_address") if args.get("listen_address") else ""
        followers = tuple(check_server_ip(a, "followers[%d]" % i) for i, a in enumerate(args.get("followers") or []))
        return cls(env=check_name(require(args, "env", where), "env"), role=role, hosts=hosts, secret=secret,
                   acme=acme, issuer_address=issuer, listen_address=listen, followers=followers)


@dataclass(frozen=True)
class CertdResult:
    """What `certd_ensure` (issuer: obtain what is missing or due, `force`: renew all),
    `certd_pull` (follower: fetch from the issuer now) and `certd_status` answer."""

    env: str
    role: str
    certs: Tuple[CertInfo, ...] = ()
    ordered: Tuple[str, ...] = ()  # host names this call ordered from the CA
    running: bool = False  # the daemon runs
    last_error: str = ""  # the daemon's last failure (e.g. the CA unreachable), "" when none
    next_check: str = ""  # ISO 8601: when the daemon next looks at expiries
    config_id: str = ""  # config_id() of the node's config ("" : none), so the controller
    secret_id: str = ""  # reconfigures only on a change; secret_id(): never the secret itself

    def to_dict(self) -> Dict[str, Any]:
        return {"env": self.env, "role": self.role, "certs": [c.to_dict() for c in self.certs],
                "ordered": list(self.ordered), "running": self.running, "last_error": self.last_error,
                "next_check": self.next_check, "config_id": self.config_id, "secret_id": self.secret_id}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CertdResult":
        return cls(env=d.get("env", ""), role=d.get("role", ""),
                   certs=tuple(CertInfo.from_dict(c) for c in d.get("certs") or []),
                   ordered=tuple(d.get("ordered") or ()), running=bool(d.get("running")),
                   last_error=d.get("last_error", ""), next_check=d.get("next_check", ""),
                   config_id=d.get("config_id", ""), secret_id=d.get("secret_id", ""))


def config_id(cfg: CertdConfig) -> str:
    """What identifies a certd config apart from its secret (sha256 of its canonical JSON)."""
    import hashlib
    import json

    body = cfg.to_dict()
    body.pop("secret")
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def secret_id(secret: str) -> str:
    """Which secret a node holds, without revealing it (all nodes of an environment must agree)."""
    import hashlib

    return hashlib.sha256(("orch-certd:" + secret).encode("utf-8")).hexdigest()[:16]


def parse_ensure(args: Dict[str, Any]) -> Tuple[str, Tuple[str, ...], bool]:
    """`certd_ensure {env, hosts?, force?}`: (env, hosts ('' : all of the config's), force)."""
    check_keys(args, ("env", "hosts", "force"), "certd_ensure")
    raw = args.get("hosts") or []
    if not isinstance(raw, list):
        raise BadRequest("hosts must be a list of host names")
    hosts = tuple(check_host_name(h, "hosts[%d]" % i) for i, h in enumerate(raw))
    return (check_name(require(args, "env", "certd_ensure"), "env"), hosts,
            check_bool(args.get("force", False), "force"))


def parse_env_only(args: Dict[str, Any], op: str) -> str:
    """`certd_pull`, `certd_status`, `certd_leave`, `tls_certs`: {env}."""
    check_keys(args, ("env",), op)
    return check_name(require(args, "env", op), "env")


def parse_cert_remove(args: Dict[str, Any]) -> Tuple[str, str]:
    """`tls_cert_remove {env, host}`: the host's certificate leaves the node (and HAProxy)."""
    check_keys(args, ("env", "host"), "tls_cert_remove")
    return (check_name(require(args, "env", "tls_cert_remove"), "env"),
            check_host_name(require(args, "host", "tls_cert_remove"), "host"))


# The agent operations of this contract (agent.certs.ops registers them):
#   tls_cert_put     CertPut                 -> {"cert": CertInfo}
#   tls_cert_remove  {env, host}             -> {"removed": bool}
#   tls_certs        {env}                   -> {"certs": [CertInfo], "certd": CertdResult | None}
#   certd_configure  CertdConfig             -> CertdResult (starts or restarts the daemon)
#   certd_ensure     {env, hosts?, force?}   -> CertdResult (issuer; synchronous orders)
#   certd_pull       {env}                   -> CertdResult (follower; synchronous pull + load)
#   certd_status     {env}                   -> CertdResult
#   certd_leave      {env}                   -> {"left": bool} (stops the daemon, removes its files
#                                               and the environment's TLS_AUTO certificates)
CERT_OPERATIONS = ("tls_cert_put", "tls_cert_remove", "tls_certs", "certd_configure", "certd_ensure",
                   "certd_pull", "certd_status", "certd_leave")
