"""The lab's ACME server, end to end: a real certificate from pebble for a lab name,
validated over HTTP-01 against a node, chaining to the root `orch lab up` fetched.
(root only; the ingress's own use of it is tested elsewhere)."""

from __future__ import annotations

import datetime
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

acme_lib = pytest.importorskip("acme", reason="the acme library is in the test extras (pip install -e '.[test]')")


def _serve(node, webroot: Path, probe: str) -> subprocess.Popen | None:
    """python -m http.server on node's address, port 80, in its network namespace; None
    if port 80 there is taken (e.g. a test's ingress) or answers with something else."""
    server = subprocess.Popen(
        ["nsenter", f"--net={node.netns}", "--", sys.executable, "-m", "http.server", "80",
         "--bind", node.address, "--directory", str(webroot)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and server.poll() is None:
        try:
            url = f"http://{node.address}/.well-known/acme-challenge/probe"
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.read().decode() == probe:
                    return server
                break
        except OSError:
            time.sleep(0.2)
    server.kill()
    server.wait()
    return None


@pytest.fixture
def challenge_node(lab):
    """(node, webroot, server): an HTTP server on port 80 of a node, serving webroot.
    prod-1 first; another node if a test's ingress holds prod-1's port 80."""
    webroot = Path(tempfile.mkdtemp(prefix="orch-acme-"))
    (webroot / ".well-known/acme-challenge").mkdir(parents=True)
    probe = secrets.token_hex(8)
    (webroot / ".well-known/acme-challenge/probe").write_text(probe)
    webroot.chmod(0o755)
    order = ["prod-1"] + [n.name for n in lab.nodes if n.name != "prod-1"]
    for name in order:
        server = _serve(lab.node(name), webroot, probe)
        if server:
            break
    else:
        shutil.rmtree(webroot, ignore_errors=True)
        pytest.fail("no lab node has port 80 free for the HTTP-01 challenge server")
    yield lab.node(name), webroot, server
    server.terminate()
    server.wait(10)
    shutil.rmtree(webroot, ignore_errors=True)


@pytest.fixture
def lab_name(lab):
    """A fresh name under lab.test; the resolver forgets it afterwards."""
    from orchestrator.lab import dns

    names = []

    def add(addresses):
        name = dns.add_name(f"acme-{secrets.token_hex(4)}.lab.test", addresses, lab=lab.name)
        names.append(name)
        return name

    yield add
    for name in names:
        dns.remove_name(name, lab=lab.name)


def _client(lab):
    import josepy as jose
    from acme import client, messages
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    # The directory's TLS certificate comes from the lab CA (the registry's).
    net = client.ClientNetwork(key, user_agent="orch-lab-e2e", verify_ssl=str(lab.ca_cert))
    acme = client.ClientV2(client.ClientV2.get_directory(lab.acme_directory, net), net)
    acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
    return acme, key


def _order(acme, key, name: str, webroot: Path | None):
    """New order for name; answers its HTTP-01 challenge (writing the token to webroot
    unless None); returns (finalized order, token)."""
    from acme import challenges, crypto_util
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pkey = ec.generate_private_key(ec.SECP256R1())
    pem = pkey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    order = acme.new_order(crypto_util.make_csr(pem, [name]))
    token = None
    for authz in order.authorizations:
        chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
        response, validation = chall.response_and_validation(key)
        token = chall.chall.encode("token")
        if webroot is not None:
            (webroot / chall.chall.path.lstrip("/")).write_text(validation)
        acme.answer_challenge(chall, response)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
    return acme.poll_and_finalize(order, deadline=deadline), token


def _pems(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    return [p.strip() + "\n" + end + "\n" for p in text.split(end) if p.strip()]


def test_lab_up_runs_pebble_and_the_resolver_and_fetches_pebbles_root(lab):
    from orchestrator.lab import acme, dns, registry
    from orchestrator.lab.model import LabPaths
    from orchestrator.lab.state import load_spec

    spec = load_spec(LabPaths.for_name(lab.name))
    assert lab.acme_directory == f"https://{lab.host_address}:14000/dir"
    assert acme.answers(spec)
    root = lab.acme_ca.read_text()
    assert acme.is_pem_cert(root) and root == acme.fetch_root(spec)
    env = registry.parse_env_file(lab.lab_env.read_text())
    assert env["ORCH_LAB_ACME_DIRECTORY"] == lab.acme_directory
    assert env["ORCH_LAB_ACME_CA"] == str(lab.acme_ca)
    # Unknown lab names are NXDOMAIN; other names are refused, never forwarded.
    assert dns.resolve(lab.dns_server, f"nobody-{secrets.token_hex(4)}.lab.test") == (3, [])
    rcode, addresses = dns.resolve(lab.dns_server, "deb.debian.org")
    assert rcode == 5 and addresses == []


def test_a_test_adds_a_name_and_the_resolver_answers_it(lab, lab_name):
    from orchestrator.lab import dns

    prod = [n.address for n in lab.nodes_for("prod")]
    name = lab_name(prod)
    rcode, addresses = dns.resolve(lab.dns_server, name)
    assert rcode == 0 and sorted(addresses) == sorted(prod)
    assert (lab.dns_hosts_dir / f"{name}.hosts").exists()


def test_pebble_issues_a_real_certificate_over_http01_from_a_node(lab, lab_name, challenge_node):
    from cryptography import x509

    node, webroot, server = challenge_node
    name = lab_name([node.address])
    acme, key = _client(lab)
    order, token = _order(acme, key, name, webroot)

    chain = _pems(order.fullchain_pem)
    assert len(chain) >= 2, order.fullchain_pem  # leaf + pebble's intermediate
    with tempfile.TemporaryDirectory() as tmp:
        leaf, inter = Path(tmp, "leaf.pem"), Path(tmp, "inter.pem")
        leaf.write_text(chain[0])
        inter.write_text("".join(chain[1:]))
        cp = subprocess.run(
            ["openssl", "verify", "-CAfile", str(lab.acme_ca), "-untrusted", str(inter), str(leaf)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert cp.returncode == 0, cp.stdout + cp.stderr
        # ... and not to the lab CA: the certificate is pebble's.
        cp = subprocess.run(["openssl", "verify", "-CAfile", str(lab.ca_cert), "-untrusted", str(inter), str(leaf)],
                            capture_output=True, text=True)
        assert cp.returncode != 0
    cert = x509.load_pem_x509_certificate(chain[0].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [name]

    # pebble really fetched the token from the node (from the bridge address).
    server.terminate()
    log = server.communicate(timeout=10)[1]
    assert f"GET /.well-known/acme-challenge/{token}" in log and lab.host_address in log, log


def test_a_challenge_nobody_serves_is_refused(lab, lab_name, challenge_node):
    """No PEBBLE_VA_ALWAYS_VALID: a token the node does not serve fails the order."""
    from acme import errors

    node, _, _ = challenge_node
    name = lab_name([node.address])
    acme, key = _client(lab)
    with pytest.raises(errors.ValidationError):
        _order(acme, key, name, webroot=None)
