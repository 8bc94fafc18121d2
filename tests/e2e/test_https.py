"""HTTPS at the edge, end to end on PROD (two lab nodes), with the lab's ACME server
(pebble) and resolver (issue 15's acceptance):

- a service with `hosts` and `tls: auto`: both nodes serve the same ACME certificate
  for the name (verified against pebble's root), port 80 redirects to HTTPS, HSTS is
  set, and pebble validated the name once (one order, not one per node);
- a second project on the same nodes with another name: both served on 443 by name; a
  third claiming an existing name is refused (exit 2) and nothing of it runs;
- a certificate from files is served as given; a wrong key, an expired certificate or
  one for other names is exit 2;
- under 60 HTTPS requests/s (30 per node, a new TLS connection each), a rolling deploy
  and an automatic rollback fail no request;
- a forced renewal (`orch certs renew --force`) is served by both nodes, without a
  failed request and without a deploy (no new release);
- `orch down` takes the routes and the certificates away.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import LOCK_WAIT, ORCH
from .helpers import last_json
from tests.tls_certs import Pair, make_ca, make_leaf

from .tls_helpers import HTTPSLoad, fingerprint, http_get, https_get

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
RATE_PER_NODE = 30.0
NODES = ("prod-1", "prod-2")

COMPOSE = """\
name: https
services:
  web:
    image: busybox
    init: true
    stop_grace_period: 2s
    command: ["sh", "-c", "mkdir -p /srv && echo $${SITE}-$${VERSION} > /srv/index.html && exec httpd -f -p 80 -h /srv"]
    environment: {VERSION: "${VERSION:-1}", SITE: "${SITE}", BROKEN: "${BROKEN:-no}"}
    healthcheck:
      test: ["CMD-SHELL", "[ \\"$$BROKEN\\" != yes ] && wget -q -O /dev/null http://127.0.0.1:80/"]
      interval: 1s
      timeout: 2s
      retries: 3
    deploy:
      replicas: 2
      update_config: {parallelism: 1, order: start-first, monitor: 1s}
    x-orch:
      ingress:
        hosts: ["${HOST}"]
        tls: TLS
        target: 80
        hsts: true
        health: {path: /, interval: 500ms, rise: 2, fall: 2}
"""


class Site:
    """One project on prod serving one host name; tls is `auto` or {cert, key} files."""

    def __init__(self, tmp: Path, lab, prefix: str, tls: str = "auto"):
        self.dir = tmp
        self.lab = lab
        (tmp / "environments").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "environments" / "prod.yaml", tmp / "environments" / "prod.yaml")
        tag = uuid.uuid4().hex[:6]
        self.project = f"e2e-{prefix}-{tag}"
        self.host = f"{prefix}-{tag}.lab.test"
        self.vars = {"HOST": self.host, "SITE": prefix}
        (tmp / "compose.yaml").write_text(COMPOSE.replace("tls: TLS", f"tls: {tls}"))

    def argv(self, command: str, *rest: str) -> list[str]:
        return [ORCH, command, "--env", "prod", "--file", str(self.dir / "compose.yaml"), "-p", self.project, *rest]

    def run(self, command: str, *rest: str, check: bool = True, **variables: str) -> subprocess.CompletedProcess:
        cp = subprocess.run(self.argv(command, *rest), capture_output=True, text=True, timeout=900,
                            env={**os.environ, **LOCK_WAIT, **self.vars, **variables})
        if check and cp.returncode != 0:
            pytest.fail(f"orch {command} exited {cp.returncode}:\n{cp.stdout[-4000:]}\n{cp.stderr[-4000:]}")
        return cp

    def up(self, check: bool = True, **variables: str) -> tuple[int, dict]:
        cp = self.run("up", "--json", check=check, **variables)
        return cp.returncode, last_json(cp.stdout)

    def certs(self) -> dict:
        return last_json(subprocess.run([ORCH, "certs", "--env", "prod", "--json"], capture_output=True, text=True,
                                        timeout=300, env={**os.environ, **LOCK_WAIT}, cwd=self.dir).stdout)

    def addresses(self) -> list[str]:
        return [self.lab.node(n).address for n in NODES]

    def down(self) -> None:
        self.run("down", "--json", check=False)


def dns_set(name: str, addresses: list[str]) -> None:
    from orchestrator.lab.dns import add_name

    add_name(name, addresses)


def dns_rm(name: str) -> None:
    from orchestrator.lab.dns import remove_name

    remove_name(name)


def validations(lab, name: str) -> int:
    """How many times pebble validated `name` (one authorization per order: authz reuse is
    off in the lab, so this counts the orders that reached validation)."""
    log = Path(lab.state_dir) / "logs" / "pebble.log"
    return sum(1 for line in log.read_text(errors="replace").splitlines()
               if "Pulled a task from the Tasks queue" in line and f'Value:"{name}"' in line)


@pytest.fixture(scope="module")
def acme_ca(lab) -> str:
    return str(lab.acme_ca)


@pytest.fixture(scope="module")
def site(lab, tmp_path_factory):
    s = Site(tmp_path_factory.mktemp("https-a"), lab, "tlsa")
    dns_set(s.host, s.addresses())
    code, final = s.up()
    assert code == 0, final
    yield s
    s.down()
    dns_rm(s.host)


def test_a_release_that_drops_tls_stops_the_certificate_daemon_after_its_rollout(lab, tmp_path, acme_ca):
    """First in the module: no other project of prod routes a `tls: auto` name meanwhile
    (the `site` fixture comes later), so this project is the certificate daemon's only user."""
    s = Site(tmp_path / "r", lab, "tlsr")
    dns_set(s.host, s.addresses())
    try:
        code, final = s.up()
        assert code == 0, final
        assert https_get(s.host, s.addresses()[0], acme_ca)[0] == 200 and s.certs()["issuer"] in NODES
        compose = s.dir / "compose.yaml"
        compose.write_text(compose.read_text().replace("        tls: auto\n", "").replace("        hsts: true\n", ""))
        code, final = s.up()
        assert code == 0, final
        retired = sorted((r["op"], r["node"]) for r in final["plan"]["certificates"]["retire"])
        assert retired == [("certd_leave", "prod-1"), ("certd_leave", "prod-2")], final["plan"]["certificates"]
        assert s.certs()["issuer"] == ""  # no daemon left on any node, nor its certificate
        for address in s.addresses():
            status, _, body = http_get(s.host, address)
            assert status == 200 and body.strip() == "tlsr-1", (address, status, body)  # plain HTTP now
        again = s.up()[1]
        assert again["noop"] is True and again["plan"]["certificates"]["retire"] == [], again["plan"]
    finally:
        s.down()
        dns_rm(s.host)


def test_one_acme_certificate_served_by_both_nodes(site, lab, acme_ca):
    prints = set()
    for address in site.addresses():
        status, headers, body, fp = https_get(site.host, address, acme_ca)
        assert (status, body.strip()) == (200, "tlsa-1"), (address, status, body)
        assert headers.get("strict-transport-security", "").startswith("max-age=31536000"), headers
        prints.add(fp)
        status, headers, _ = http_get(site.host, address, "/some/page?q=1")
        assert status == 301 and headers["location"] == f"https://{site.host}/some/page?q=1", (status, headers)
    assert len(prints) == 1, f"the nodes serve different certificates: {prints}"
    assert validations(lab, site.host) == 1, "pebble should have validated the name once, not once per node"
    # Keys are files of mode 0600 in directories of mode 0700 (the lab's nodes share this
    # machine's filesystem; each engine has its own directory), and no key is anywhere else.
    pems = list(Path("/var/lib/orch-agent/engines").glob(f"*/certs/{site.host}.pem"))
    assert len(pems) == 2, pems
    for pem in pems:
        assert (pem.stat().st_mode & 0o777, pem.parent.stat().st_mode & 0o777) == (0o600, 0o700), pem
    # An unknown name gets no other site's answer.
    status, _, body = http_get("nobody.lab.test", site.addresses()[0])
    assert status == 404, (status, body)


def test_orch_certs_lists_the_name_on_both_nodes(site):
    out = site.certs()
    rows = [c for c in out["certificates"] if c["host"] == site.host]
    assert len(rows) == 1, out
    row = rows[0]
    assert row["source"] == "auto" and "Pebble" in row["issuer"] and row["projects"] == [site.project], row
    assert sorted(n["node"] for n in row["nodes"]) == sorted(NODES), row
    assert len({n["fingerprint"] for n in row["nodes"]}) == 1 and not any(n["differs"] for n in row["nodes"]), row
    assert row["status"] == "ok" and row["days_left"] > 30, row
    assert "BEGIN" not in json.dumps(out) and "PRIVATE" not in json.dumps(out)


def test_a_second_project_shares_443_and_a_third_cannot_take_a_name(site, lab, acme_ca, tmp_path):
    other = Site(tmp_path / "b", lab, "tlsb")
    dns_set(other.host, other.addresses())
    try:
        code, final = other.up()
        assert code == 0, final
        for address in other.addresses():
            assert https_get(other.host, address, acme_ca)[2].strip() == "tlsb-1"
            assert https_get(site.host, address, acme_ca)[2].strip() == "tlsa-1"
        thief = Site(tmp_path / "c", lab, "tlsc")
        cp = thief.run("up", "--json", check=False, HOST=site.host)
        assert cp.returncode == 2, cp.stdout + cp.stderr
        message = last_json(cp.stdout)["error"]["message"]
        assert site.host in message and site.project in message, message
        ps = last_json(thief.run("ps", "--json").stdout)
        assert ps["containers"] == [], ps
        assert https_get(site.host, site.addresses()[0], acme_ca)[2].strip() == "tlsa-1"
    finally:
        other.down()
        dns_rm(other.host)


def _write(directory: Path, pair: Pair, key_of: Pair | None = None) -> None:
    """tls/site.crt and tls/site.key: pair's certificate, and its key (or key_of's)."""
    (directory / "tls").mkdir(exist_ok=True)
    (directory / "tls" / "site.crt").write_text(pair.cert_pem)
    (directory / "tls" / "site.key").write_text((key_of or pair).key_pem)


def test_a_certificate_from_files_is_served_as_given_and_bad_ones_are_refused(lab, tmp_path):
    ca = make_ca("orch e2e test CA")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text(ca.cert_pem)
    s = Site(tmp_path / "f", lab, "tlsf", tls="{cert: ./tls/site.crt, key: ./tls/site.key}")
    bad = [
        ("expired", (make_leaf(ca, [s.host], days=-1), None), "expired"),
        ("other names", (make_leaf(ca, ["someone-else.lab.test"]), None), s.host),
        ("wrong key", (make_leaf(ca, [s.host]), make_leaf(ca, [s.host])), "key"),
    ]
    for what, (pair, key_of), needle in bad:
        _write(s.dir, pair, key_of)
        cp = s.run("up", "--json", check=False)
        assert cp.returncode == 2, (what, cp.stdout[-2000:], cp.stderr[-2000:])
        error = last_json(cp.stdout)["error"]
        assert "site.crt" in error["message"] or "site.key" in error["message"], (what, error)
        assert needle in error["message"], (what, error)
        assert "BEGIN" not in cp.stdout + cp.stderr
    good = make_leaf(ca, [s.host])
    _write(s.dir, good)
    try:
        code, final = s.up()
        assert code == 0, final
        for address in s.addresses():
            status, _, body, fp = https_get(s.host, address, str(ca_file))
            assert (status, body.strip(), fp) == (200, "tlsf-1", good.fingerprint)
    finally:
        s.down()


def _loads(site, acme_ca) -> list[HTTPSLoad]:
    return [HTTPSLoad(site.host, address, RATE_PER_NODE, acme_ca).start() for address in site.addresses()]


def _failures(loads: list[HTTPSLoad]) -> tuple[int, list[tuple]]:
    results = [r for load in loads for r in load.stop()]
    return len(results), [r for r in results if r[2] is None]


def test_rolling_deploy_and_automatic_rollback_over_https_fail_no_request(site, acme_ca):
    running = _loads(site, acme_ca)
    code, final = site.up(VERSION="2")
    total, failed = _failures(running)
    assert code == 0, final
    assert total >= 100 and not failed, f"{len(failed)} of {total} HTTPS requests failed: {failed[:5]}"
    assert {https_get(site.host, a, acme_ca)[2].strip() for a in site.addresses()} == {"tlsa-2"}

    running = _loads(site, acme_ca)
    code, final = site.up(check=False, VERSION="3", BROKEN="yes")
    total, failed = _failures(running)
    assert code == 1, final
    assert total >= 100 and not failed, f"{len(failed)} of {total} HTTPS requests failed: {failed[:5]}"
    assert {https_get(site.host, a, acme_ca)[2].strip() for a in site.addresses()} == {"tlsa-2"}


def test_forced_renewal_reaches_both_nodes_without_a_failed_request_or_a_deploy(site, lab, acme_ca):
    before = {a: fingerprint(site.host, a, acme_ca) for a in site.addresses()}
    assert len(set(before.values())) == 1
    releases = len(last_json(site.run("history", "--json").stdout)["releases"])
    running = _loads(site, acme_ca)
    cp = subprocess.run([ORCH, "certs", "renew", "--env", "prod", "--force", site.host, "--json"], cwd=site.dir,
                        capture_output=True, text=True, timeout=300, env={**os.environ, **LOCK_WAIT})
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    total, failed = _failures(running)
    assert not failed, f"{len(failed)} of {total} HTTPS requests failed during the renewal: {failed[:5]}"
    after = {a: fingerprint(site.host, a, acme_ca) for a in site.addresses()}
    assert len(set(after.values())) == 1 and set(after.values()) != set(before.values()), (before, after)
    assert validations(lab, site.host) == 2, "one more order for the renewal, not one per node"
    assert len(last_json(site.run("history", "--json").stdout)["releases"]) == releases, "a renewal is no deploy"
    assert "BEGIN" not in cp.stdout + cp.stderr


def test_down_takes_the_route_and_the_certificate_away(lab, tmp_path, acme_ca):
    s = Site(tmp_path / "d", lab, "tlsd")
    dns_set(s.host, s.addresses())
    try:
        code, final = s.up()
        assert code == 0, final
        assert https_get(s.host, s.addresses()[0], acme_ca)[0] == 200
        s.down()
        rows = [c for c in s.certs().get("certificates", []) if c["host"] == s.host]
        assert rows == [], rows
        for address in s.addresses():
            try:
                status = http_get(s.host, address)[0]
            except OSError:
                continue  # nothing listens on 80 any more: fine
            assert status == 404
    finally:
        s.down()
        dns_rm(s.host)
