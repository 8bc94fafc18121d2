"""Host routing on the node's shared HTTP and HTTPS ports (issue 15; agent.wire.tls.Route).

Every service with host names (`route.hosts`) is reached on the node's two shared ports
(`route.ports`, 80/443 unless the environment says otherwise) by the Host header, and on
HTTPS by SNI for the certificate. This module is the pure part: what the HAProxy config
says about them (edge_context, for agent/templates/haproxy.cfg.j2) and which routes a
node refuses (check_routes). The certificates come from agent.certs.

  HTTP port:  ACME HTTP-01 challenges for an environment's TLS_AUTO names go to that
              environment's certificate daemon (`backend acme.<env>`, a unix socket);
              a name with a certificate and `redirect` answers 301 to HTTPS; any other
              known name goes to its service; an unknown one gets a 404 (never another
              app's backend).
  HTTPS port: one crt-list (the node's fallback certificate first, then each name's
              with its SNI filter); routed by Host like HTTP. HSTS is set in the
              service's backend, on answers to requests that came over TLS.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from agent.wire.ingress import ServiceIngress
from agent.wire.protocol import CONFLICT, AgentError
from agent.wire.tls import ACME_CHALLENGE_PREFIX, TLS_AUTO, EdgePorts

EDGE_BIND = "0.0.0.0"
LINE_BUDGET = 900  # characters of host names on one config line (HAProxy reads lines of a few KB)
NOT_FOUND_TEXT = "no site for this host name here"


def _chunks(hosts: List[str], budget: int = LINE_BUDGET) -> List[List[str]]:
    out: List[List[str]] = []
    size = budget + 1
    for h in hosts:
        if size + len(h) + 1 > budget:
            out.append([])
            size = 0
        out[-1].append(h)
        size += len(h) + 1
    return out


def acme_backend(env: str) -> str:
    return "acme.%s" % (env or "default")


def routed(services: Dict[str, ServiceIngress]) -> List[ServiceIngress]:
    return [services[k] for k in sorted(services) if services[k].route.routed]


def edge_context(services: Dict[str, ServiceIngress], certs: Dict[str, str], crt_list: str,
                 certd_socket: Callable[[str], str]) -> Optional[Dict[str, Any]]:
    """The shared frontends of the rendered config (None: no service has host names).

    certs: {host: its certificate file} the store holds (they are in the crt-list);
    certd_socket(env): the unix socket of env's certificate daemon."""
    svcs = routed(services)
    if not svcs:
        return None
    ports = svcs[0].route.ports
    acme: Dict[str, List[str]] = {}
    redirect: List[str] = []
    routes = []
    for svc in svcs:
        r = svc.route
        if r.tls == TLS_AUTO:
            acme.setdefault(svc.env or "default", []).extend(r.hosts)
        if r.tls and r.redirect:
            redirect.extend(h for h in r.hosts if h in certs)
        routes += [{"backend": svc.backend, "hosts": chunk} for chunk in _chunks(list(r.hosts))]
    return {
        "bind": EDGE_BIND, "http_port": ports.http, "https_port": ports.https, "crt_list": crt_list,
        # the port in a redirect's Location, unless HTTPS is on its standard one
        "https_suffix": "" if ports.https == 443 else ":%d" % ports.https,
        "acme_prefix": ACME_CHALLENGE_PREFIX,
        "acme": [{"backend": acme_backend(env), "hosts": chunk}
                 for env in sorted(acme) for chunk in _chunks(sorted(acme[env]))],
        "acme_servers": [{"backend": acme_backend(env), "socket": certd_socket(env)} for env in sorted(acme)],
        "redirect": _chunks(sorted(redirect)),
        "routes": routes,
        "not_found": NOT_FOUND_TEXT,
    }


def _who(svc: ServiceIngress) -> str:
    return "%s (env %s)" % (svc.key, svc.env) if svc.env else svc.key


def check_routes(services: Dict[str, ServiceIngress], svc: ServiceIngress, running: bool,
                 port_free: Callable[[str, int], bool]) -> None:
    """Refuse (CONFLICT) `svc`'s route on this node: a host name another service claims
    (any project, any environment), edge ports other routed services do not share, a
    port that is another service's own frontend, or an edge port taken by something
    other than this HAProxy."""
    others = [o for o in services.values() if o.key != svc.key]
    for o in others:
        shared = sorted(set(o.route.hosts) & set(svc.route.hosts))
        if shared:
            raise AgentError(CONFLICT, "host name %s on this node already belongs to %s; %s cannot claim it"
                             % (", ".join(shared), _who(o), _who(svc)),
                             {"hosts": shared, "service": o.key, "env": o.env,
                              "fix": "give %s other host names, or remove %s from this node first"
                                     % (svc.key, o.key)})
    if not svc.route.routed:
        for o in others:
            if o.route.routed and svc.published in (o.route.ports.http, o.route.ports.https):
                raise AgentError(CONFLICT, "port %d on this node is the ingress's shared host-name port; %s "
                                 "cannot have it as its own" % (svc.published, svc.key),
                                 {"port": svc.published, "fix": "publish %s on another port" % svc.key})
        return
    ports = svc.route.ports
    edge = [o for o in others if o.route.routed]
    for o in edge:
        if o.route.ports != ports:
            raise AgentError(CONFLICT, "the host-name ports of this node are %d/%d (%s); %s asks for %d/%d"
                             % (o.route.ports.http, o.route.ports.https, _who(o), _who(svc), ports.http,
                                ports.https),
                             {"fix": "use the same ingress.http_port and ingress.https_port in every "
                                     "environment file that deploys to this node"})
    for o in others:
        if o.published in (ports.http, ports.https):
            raise AgentError(CONFLICT, "port %d on this node already belongs to the ingress of %s; the shared "
                             "host-name ports of %s need it" % (o.published, o.key, svc.key),
                             {"port": o.published, "service": o.key})
    old = services.get(svc.key)
    ours = running and (bool(edge) or (old is not None and old.route.routed and old.route.ports == ports))
    for port in (ports.http, ports.https):
        if svc.published == port:
            raise AgentError(CONFLICT, "%s publishes port %d, the node's shared host-name port" % (svc.key, port),
                             {"fix": "publish it on another port, or on none (host names only)"})
        if not ours and not port_free(EDGE_BIND, port):
            raise AgentError(CONFLICT, "port %d (shared host-name port) is in use on this node" % port,
                             {"port": port, "fix": "stop what listens there, or set ingress.http_port / "
                                                   "ingress.https_port in the environment file"})


def edge_ports(services: Dict[str, ServiceIngress]) -> Optional[EdgePorts]:
    svcs = routed(services)
    return svcs[0].route.ports if svcs else None
