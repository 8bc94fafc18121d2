"""HTTPS at the edge in `orch up` / `orch plan`: the certificate steps of one Deployment
(orchestrator.app.deploy), planned by orchestrator.core.edge_plan.

    observe()     each node's ingress_status (every project's host routes) and tls_certs
                  (the environment's certificates and certificate daemon), only when the
                  project has host routes (or had some)
    make_plan()   host names another project routes on a node: exit 2; TLS_FILES puts; the
                  certificate daemon's configs and calls (Plan.edge)
    put_certs()   tls_cert_put on every node that needs it, BEFORE the rollout, so HTTPS
                  serves the right certificate as soon as the route appears
    run_certd()   after the rollout (the routes then exist, so HTTP-01 challenges reach
                  certd): certd_configure on all (with a new shared secret) when any config
                  differs, certd_ensure on the issuer, certd_pull on the followers
    retire()      after that: what no route needs any more since this deploy (a TLS_FILES
                  certificate no route serves on a node; the certificate daemon of a node
                  with no part in it), as `orch down` does (after_down)

The ACME account e-mail, the shared secret and the keys go only into the agent requests;
nothing here puts them in a result, an event or a message.
"""

from __future__ import annotations

import secrets as _secrets
import time
from datetime import datetime, timezone
from typing import Any

from agent.wire.tls import TLS_FILES, AcmeSettings, CertdResult, CertInfo, CertPut
from orchestrator.core.edge import routed_services
from orchestrator.core.edge_plan import (EdgePlan, NodeEdge, auto_hosts_by_node, plan_certd, plan_puts, plan_retire,
                                         refuse_clashes, with_secret)
from orchestrator.errors import DeployError, InputError, Problem
from orchestrator.io import transport as T


def read_edge(nodes: dict[str, Any], env: str, names: list[str] | None = None) -> dict[str, NodeEdge]:
    """Each node's routes and the environment's certificates there, in parallel."""
    def one(name: str) -> NodeEdge:
        node = nodes[name]
        return NodeEdge.from_answers(name, node.call("ingress_status"), node.call("tls_certs", {"env": env}))

    answers, errors = T.parallel(sorted(names if names is not None else nodes), one, key=lambda n: n)
    if errors:
        from orchestrator.io.transport.ssh import as_transport_error

        raise T.NodesUnreachable({n: as_transport_error(n, e) for n, e in errors.items()}, len(nodes),
                                 action="read the certificates of")
    return answers


def acme_settings(environment: Any) -> AcmeSettings | None:
    """The environment's `ingress.acme` as certd gets it (its CA file read now)."""
    from orchestrator.limits import read_bounded

    settings = getattr(environment, "ingress", None)
    acme = getattr(settings, "acme", None)
    if acme is None:
        return None
    ca = ""
    if acme.ca_file is not None:
        try:
            ca = read_bounded(acme.ca_file, 64 * 1024, "the ACME CA file").decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(Problem(f"cannot read the ACME CA file {acme.ca_file}: {getattr(err, 'strerror', err)}",
                                     file=str(environment.file), line=acme.line, key="ingress.acme.ca_file",
                                     fix="point ca_file at the PEM certificate(s) of the ACME server's HTTPS, or "
                                         "drop it to trust the system's CAs"))
        if "-----BEGIN CERTIFICATE-----" not in ca:
            raise InputError(Problem(f"the ACME CA file {acme.ca_file} holds no PEM certificate",
                                     file=str(environment.file), line=acme.line, key="ingress.acme.ca_file",
                                     fix="give the CA certificate in PEM form (-----BEGIN CERTIFICATE-----)"))
    return AcmeSettings(directory=acme.directory, email=acme.email, ca_pem=ca, renew_before=acme.renew_before)


class Edge:
    """The certificate steps of one Deployment (see the module docstring)."""

    def __init__(self, deployment: Any):
        self.dep = deployment
        self.nodes: dict[str, NodeEdge] = {}
        self.plan = EdgePlan()
        self.results: dict[str, dict[str, CertInfo]] = {}  # node -> host -> what it serves after this deploy
        self.errors: list[str] = []

    @property
    def env(self) -> str:
        return self.dep.environment.name

    def routes(self) -> dict[str, Any]:
        return routed_services(self.dep.blueprint) if self.dep.blueprint is not None else {}

    def needed(self) -> bool:
        had = any(((f or {}).get("route") or {}).get("hosts") for fs in self.dep.ingress.values() for f in fs.values())
        return bool(self.routes()) or had

    def observe(self) -> None:
        if self.needed():
            self.nodes = read_edge(self.dep.nodes, self.env)

    def make_plan(self, units: dict) -> EdgePlan:
        routes = self.routes()
        if not self.nodes:
            self.plan = EdgePlan()
            return self.plan
        placed: dict[str, list[str]] = {}
        for service, node in sorted(units):
            if service in routes:
                placed.setdefault(service, []).append(node)
        wanted: dict[str, dict[str, str]] = {}
        tls: dict[str, dict[str, str]] = {}
        for service, nodes in placed.items():
            for node in nodes:
                for host in routes[service].hosts:
                    wanted.setdefault(node, {})[host] = service
                    tls.setdefault(node, {})[host] = routes[service].tls
        project = self.dep.project

        def locate(service: str) -> tuple[Any, Any]:
            loc = project.locate(f"services.{service}.x-orch.ingress.hosts")
            return (getattr(loc, "file", None), getattr(loc, "line", None))

        refuse_clashes(project.name, self.env, str(self.dep.environment.file), wanted, self.nodes, locate)
        files = {s: (r, self.dep.blueprint.services[s].ingress.cert) for s, r in routes.items()
                 if r.tls == TLS_FILES and self.dep.blueprint.services[s].ingress.cert is not None}
        serving = auto_hosts_by_node(project.name, self.env, tls, self.nodes)
        acme = acme_settings(self.dep.environment) if serving else None
        layout = self.dep.mesh_layout
        order = [n.name for n in self.dep.environment.nodes]
        # Every node's mesh address: the issuer may be a node already issuing that serves no name now.
        addresses = {n: layout.address(n) for n in order if n in layout.node_slots} if layout is not None else {}
        self.plan = plan_certd(self.env, acme, serving, self.nodes, order, addresses, datetime.now(timezone.utc))
        self.plan.puts = plan_puts(files, placed, self.nodes)
        self.plan.retire = plan_retire(self.env, project.name, wanted, serving, self.plan.configs, self.nodes)
        return self.plan

    # -- apply ------------------------------------------------------------------------

    def put_certs(self) -> None:
        if not self.plan.puts:
            return
        bp = self.dep.blueprint.services
        self.dep.progress.phase("certificates", "installing certificates: " + ", ".join(
            sorted({f"{p.host} on {p.node}" for p in self.plan.puts})))

        def one(step: Any) -> CertInfo:
            cert = bp[step.service].ingress.cert
            req = CertPut(env=self.env, host=step.host, cert_pem=cert.cert_pem, key_pem=cert.key_pem)
            return CertInfo.from_dict(self.dep.nodes[step.node].call("tls_cert_put", {
                "env": req.env, "host": req.host, "cert_pem": req.cert_pem, "key_pem": req.key_pem})["cert"])

        done, errors = T.parallel(self.plan.puts, one, key=lambda p: f"{p.host}@{p.node}")
        for key, info in done.items():
            host, node = key.split("@", 1)
            self.results.setdefault(node, {})[host] = info
        if errors:
            key, err = sorted(errors.items())[0]
            host, node = key.split("@", 1)
            raise DeployError(f"{node}: installing the certificate of {host} failed: {getattr(err, 'message', err)}",
                              fix="re-run `orch up` (nothing was rolled out yet)",
                              details={"node": node, "host": host})

    def run_certd(self) -> None:
        plan = self.plan
        if not plan.certd:
            return
        t0 = time.monotonic()
        nodes = self.dep.nodes
        configure = plan.steps("configure")
        if configure:
            secret = _secrets.token_urlsafe(32)  # the environment's shared secret: only in these requests
            self.dep.progress.phase("certificates", "configuring the certificate daemon on "
                                    + ", ".join(s.node for s in configure))
            _, errors = T.parallel(configure, lambda s: nodes[s.node].call(
                "certd_configure", with_secret(plan.configs[s.node], secret).to_dict()), key=lambda s: s.node)
            self._fail_on(errors, "configuring the certificate daemon")
        for step in plan.steps("ensure"):
            self.dep.progress.phase("certificates", f"obtaining certificates on {step.node}: {', '.join(step.hosts)}")
            try:
                res = CertdResult.from_dict(nodes[step.node].call("certd_ensure", {"env": self.env,
                                                                                  "hosts": list(step.hosts)}))
            except BaseException as err:  # noqa: BLE001 - reported as a warning: the release is live
                self._fail_on({step.node: err}, "obtaining certificates")
                return
            self._keep(step.node, res)
        pulls = plan.steps("pull")
        if pulls:
            answers, errors = T.parallel(pulls, lambda s: CertdResult.from_dict(nodes[s.node].call(
                "certd_pull", {"env": self.env})), key=lambda s: s.node)
            for node, res in answers.items():
                self._keep(node, res)
            self._fail_on(errors, "fetching certificates from the issuer")
        self.dep.timings["certificates"] = time.monotonic() - t0

    def retire(self) -> None:
        """After the rollout (no route uses them any more): certificates no route serves on a
        node go, and a node with no part in the certificate daemon any more stops its own."""
        steps = self.plan.retire
        if not steps:
            return
        nodes = self.dep.nodes
        self.dep.progress.phase("certificates", "removing what no route needs any more: " + ", ".join(
            f"{s.host} on {s.node}" if s.host else f"the certificate daemon on {s.node}" for s in steps))
        _, errors = T.parallel(steps, lambda s: nodes[s.node].call(s.op, s.request(self.env)),
                               key=lambda s: f"{s.node}: {'removing ' + s.host if s.host else 'stopping the certificate daemon'}")
        for what, err in sorted(errors.items()):  # the release is live: said, and the next up or down retries
            self.dep.warn(f"{what} failed: {getattr(err, 'message', err)} (the next orch up or down tries again)")

    def _keep(self, node: str, res: CertdResult) -> None:
        for c in res.certs:
            self.results.setdefault(node, {})[c.host] = c
        if res.last_error:
            self.dep.warn(f"{node}: certificate daemon: {res.last_error}")

    def _fail_on(self, errors: dict, what: str) -> None:
        """A certificate step that fails after the rollout leaves the release live: a warning
        (orch certs shows it; `orch certs renew` or the next `orch up` retries)."""
        for node, err in sorted(errors.items()):
            text = f"{node}: {what} failed: {getattr(err, 'message', err)}"
            self.errors.append(text)
            fix = (getattr(err, "details", None) or {}).get("fix") or getattr(err, "fix", None)
            self.dep.warn(text + (f"; fix: {fix}" if fix else "") + f" (then `orch certs renew --env {self.env}`)")

    # -- result -----------------------------------------------------------------------

    def rows(self) -> list[dict]:
        """The project's host names with TLS and their certificates after this deploy."""
        out = []
        placed: dict[str, set[str]] = {}
        for service, node in self.dep.units or {}:
            placed.setdefault(service, set()).add(node)
        for service, route in self.routes().items():
            if not route.tls:
                continue
            for host in route.hosts:
                seen = {}
                for node in sorted(placed.get(service, ())):
                    info = (self.results.get(node) or {}).get(host) or \
                        (self.nodes.get(node) or NodeEdge(node)).certs.get(host)
                    seen[node] = info
                have = [i for i in seen.values() if i is not None]
                first = have[0] if have else None
                out.append({"host": host, "service": service, "source": route.tls,
                            "issuer": first.issuer if first else "", "not_after": first.not_after if first else "",
                            "fingerprint": first.fingerprint if first else "",
                            "nodes": sorted(n for n, i in seen.items() if i is not None),
                            "missing": sorted(n for n, i in seen.items() if i is None),
                            "changed": any(host in (self.results.get(n) or {}) for n in seen)})
        return out


def after_down(nodes: dict[str, Any], env: str) -> list[dict]:
    """`orch down` of a project that had host routes: certificates no route needs any more
    leave the nodes, and a node with no TLS_AUTO route of the environment left stops its
    certificate daemon (orchestrator.core.edge_plan.plan_down). What was done, as dicts."""
    from orchestrator.core.edge_plan import plan_down

    steps = plan_down(env, read_edge(nodes, env))
    _, errors = T.parallel(steps, lambda s: nodes[s.node].call(s.op, s.request(env)),
                           key=lambda s: f"{s.op}@{s.node}@{s.host}")
    if errors:
        key, err = sorted(errors.items())[0]
        raise DeployError(f"orch down: {key.split('@')[0]} on {key.split('@')[1]} failed: {getattr(err, 'message', err)}",
                          fix="re-run `orch down`")
    return [s.to_json() for s in steps]


def addresses(rows: list[dict], routes: dict[str, Any]) -> dict[str, list[str]]:
    """service -> its URLs by host name (https:// with a certificate)."""
    out: dict[str, list[str]] = {}
    for service, route in routes.items():
        scheme, port = ("https", route.ports.https) if route.tls else ("http", route.ports.http)
        default = 443 if scheme == "https" else 80
        out[service] = [f"{scheme}://{h}" + (f":{port}" if port != default else "") + "/" for h in route.hosts]
    return out


__all__ = ["Edge", "read_edge", "acme_settings", "after_down", "addresses"]
