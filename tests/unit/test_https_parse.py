"""HTTPS at the edge, the controller's input: x-orch.ingress hosts/tls/redirect/hsts/target,
the environment file's `ingress:` section, and certificates from files checked with
`cryptography` (every error: file, line, key, exit 2)."""

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from orchestrator.app.workspace import ProjectOptions, load_workspace
from orchestrator.core.specs import compile_blueprint
from orchestrator.errors import InputError
from orchestrator.io.files import local_sources

ENV = """\
name: {name}
nodes:
  - {{name: n1, host: 10.250.0.201}}
  - {{name: n2, host: 10.250.0.202}}
{extra}"""
ACME = "ingress: {acme: {directory: https://acme.test/dir, email: ops@example.com}}\n"


def make_cert(tmp_path: Path, names=("shop.lab.test",), days=(-1, 30), key_for=None, stem="site"):
    """A self-signed certificate and key in tmp_path (stem.crt, stem.key); key_for: write another key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    written = key_for or key
    (tmp_path / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / f"{stem}.key").write_bytes(written.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert


def compile_it(tmp_path: Path, compose: str, env_extra: str = ACME, environ=None):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(compose))
    envs = tmp_path / "environments"
    envs.mkdir(exist_ok=True)
    (envs / "dev.yaml").write_text(ENV.format(name="dev", extra=env_extra))
    ws = load_workspace(ProjectOptions(files=[tmp_path / "compose.yaml"], env_name="dev"),
                        environ=environ or {})
    return ws, compile_blueprint(ws.project, ws.environment, sources=local_sources())


def refused(tmp_path, compose, env_extra=ACME) -> InputError:
    with pytest.raises(InputError) as info:
        compile_it(tmp_path, compose, env_extra)
    assert info.value.exit_code == 2
    return info.value


def test_hosts_with_target_only_route_by_name_and_publish_nothing(tmp_path):
    _, bp = compile_it(tmp_path, """\
        services:
          web:
            image: busybox
            x-orch: {ingress: {hosts: [shop.lab.test, www.shop.lab.test], target: 8080, tls: auto, hsts: 30d}}
        """)
    ing = bp.services["web"].ingress
    args = ing.agent_args()
    assert args["port"] == {"published": 0, "target": 8080, "protocol": "http", "host_ip": "0.0.0.0"}
    assert args["route"] == {"hosts": ["shop.lab.test", "www.shop.lab.test"], "tls": "auto", "redirect": True,
                             "hsts": 30 * 86400, "ports": {"http": 80, "https": 443}}
    assert bp.services["web"].container["ports"] == []


def test_port_and_hosts_keep_the_port_frontend_and_the_env_edge_ports(tmp_path):
    _, bp = compile_it(tmp_path, """\
        services:
          web:
            image: busybox
            ports: ["8080:80"]
            x-orch: {ingress: {port: 8080, hosts: [shop.lab.test], redirect: false, hsts: false}}
        """, env_extra="ingress: {http_port: 8000, https_port: 8443}\n")
    args = bp.services["web"].ingress.agent_args()
    assert args["port"]["published"] == 8080 and args["port"]["target"] == 80
    assert args["route"] == {"hosts": ["shop.lab.test"], "tls": "", "redirect": False, "hsts": 0,
                             "ports": {"http": 8000, "https": 8443}}


def test_hsts_true_is_one_year_and_no_hosts_means_no_route_key(tmp_path):
    _, bp = compile_it(tmp_path, """\
        services:
          web:
            image: busybox
            ports: ["8080:80"]
            x-orch: {ingress: {port: 8080}}
          api:
            image: busybox
            x-orch: {ingress: {hosts: [api.lab.test], target: 80, tls: auto}}
        """)
    assert "route" not in bp.services["web"].ingress.agent_args()
    assert bp.services["api"].ingress.route.hsts == 365 * 86400


@pytest.mark.parametrize("ingress, key, text", [
    ("{hosts: [Shop.lab.test], target: 80}", "x-orch.ingress.hosts[0]", "lower case"),
    ("{hosts: ['*.lab.test'], target: 80}", "x-orch.ingress.hosts[0]", "wildcard"),
    ("{hosts: [shop], target: 80}", "x-orch.ingress.hosts[0]", "at least two labels"),
    ("{hosts: [a.lab.test, a.lab.test], target: 80}", "x-orch.ingress.hosts[1]", "twice"),
    ("{hosts: [], target: 80}", "x-orch.ingress.hosts", "non-empty list"),
    ("{hosts: [a.lab.test]}", "x-orch.ingress.target", "no port and no target"),
    ("{hosts: [a.lab.test], target: 99999}", "x-orch.ingress.target", "not a port number"),
    ("{hosts: [a.lab.test], target: 80, tls: maybe}", "x-orch.ingress.tls", "is not auto, off"),
    ("{hosts: [a.lab.test], target: 80, tls: {cert: a.pem}}", "x-orch.ingress.tls.key", "it is missing"),
    ("{hosts: [a.lab.test], target: 80, tls: {cert: a.pem, key: b.pem, chain: c}}", "x-orch.ingress.tls.chain",
     "no setting"),
    ("{hosts: [a.lab.test], target: 80, redirect: sometimes}", "x-orch.ingress.redirect", "true or false"),
    ("{hosts: [a.lab.test], target: 80, tls: auto, hsts: forever}", "x-orch.ingress.hsts", "not true, false"),
    ("{target: 80}", "x-orch.ingress.target", "needs host names"),
    ("{tls: auto}", "x-orch.ingress.tls", "needs host names"),
])
def test_bad_route_settings_are_located_exit_2(tmp_path, ingress, key, text):
    err = refused(tmp_path, f"""\
        services:
          web:
            image: busybox
            x-orch: {{ingress: {ingress}}}
        """)
    [p] = err.problems
    assert p.key.startswith(f"services.web.{key}") and text in p.message, p.render()
    assert p.file.endswith("compose.yaml") and p.line == 4 and p.fix


def test_two_services_claiming_one_host_name(tmp_path):
    err = refused(tmp_path, """\
        services:
          a: {image: busybox, x-orch: {ingress: {hosts: [shop.lab.test], target: 80}}}
          b: {image: busybox, x-orch: {ingress: {hosts: [www.lab.test, shop.lab.test], target: 80}}}
        """)
    [p] = err.problems
    assert "services a and b both claim the host name shop.lab.test" in p.message
    assert p.key == "services.b.x-orch.ingress.hosts" and p.line == 3


def test_tls_auto_needs_acme_in_the_environment_file(tmp_path):
    err = refused(tmp_path, """\
        services:
          web: {image: busybox, x-orch: {ingress: {hosts: [shop.lab.test], target: 80, tls: auto}}}
        """, env_extra="")
    [p] = err.problems
    assert p.file.endswith("dev.yaml") and p.key == "ingress.acme" and "compose.yaml:2" in p.message
    assert "ingress: {acme: {directory:" in p.fix


def test_tls_auto_on_several_nodes_needs_the_mesh(tmp_path):
    err = refused(tmp_path, """\
        services:
          web: {image: busybox, x-orch: {ingress: {hosts: [shop.lab.test], target: 80, tls: auto}}}
        """, env_extra=ACME + "mesh: {mode: off}\n")
    [p] = err.problems
    assert p.file.endswith("dev.yaml") and p.key == "mesh.mode" and "service mesh is off" in p.message


@pytest.mark.parametrize("extra, key, text", [
    ("ingress: {http_port: 0}\n", "ingress.http_port", "out of range"),
    ("ingress: {http_port: 443}\n", "ingress.https_port", "both 443"),
    ("ingress: {acme: {email: a@b.c}}\n", "ingress.acme.directory", "needs directory"),
    ("ingress: {acme: {directory: http://x/dir}}\n", "ingress.acme.directory", "not an https:// URL"),
    ("ingress: {acme: {directory: https://x/dir, email: nobody}}\n", "ingress.acme.email", "not an e-mail"),
    ("ingress: {acme: {directory: https://x/dir, renew_before: soon}}\n", "ingress.acme.renew_before",
     "not a duration"),
    ("ingress: {acme: {directory: https://x/dir, dir: 1}}\n", "ingress.acme.dir", "unknown key"),
    ("ingress: {http: 80}\n", "ingress.http", "unknown key"),
])
def test_bad_environment_ingress_sections(tmp_path, extra, key, text):
    from orchestrator.core.environments import parse_environment

    path = tmp_path / "dev.yaml"
    path.write_text(ENV.format(name="dev", extra=extra))
    with pytest.raises(InputError) as info:
        parse_environment(path)
    [p] = info.value.problems
    assert p.key == key and text in p.message and p.file == str(path) and p.line == 5, p.render()


def test_environment_ingress_defaults_and_acme(tmp_path):
    from orchestrator.core.environments import parse_environment

    path = tmp_path / "dev.yaml"
    path.write_text(ENV.format(name="dev", extra="ingress: {acme: {directory: https://x/dir, email: me@x.test, "
                                                 "renew_before: 30d, ca_file: ca.pem}}\n"))
    env = parse_environment(path)
    assert (env.ingress.ports.http, env.ingress.ports.https) == (80, 443)
    assert env.ingress.acme.renew_before == 30 * 86400 and env.ingress.acme.ca_file == tmp_path / "ca.pem"
    assert "me@x.test" not in repr(env.ingress)  # personal data: never shown
    path.write_text(ENV.format(name="dev", extra=""))
    assert parse_environment(path).ingress.acme is None


# --------------------------------------------------------------------------- certificates from files

FILES = """\
    services:
      web:
        image: busybox
        x-orch: {ingress: {hosts: [shop.lab.test, www.lab.test], target: 80, tls: {cert: site.crt, key: site.key}}}
    """


def test_a_good_certificate_is_read_and_described(tmp_path):
    make_cert(tmp_path, names=("shop.lab.test", "*.lab.test"))
    _, bp = compile_it(tmp_path, FILES)
    cert = bp.services["web"].ingress.cert
    assert cert.issuer == "test CA" and len(cert.fingerprint) == 64 and cert.cert_from == str(tmp_path / "site.crt")
    assert "PRIVATE KEY" in cert.key_pem and "PRIVATE KEY" not in repr(cert)
    assert "key" not in str(bp.services["web"].ingress.agent_args())  # the key travels in tls_cert_put only


@pytest.mark.parametrize("case, key, text", [
    ("expired", "x-orch.ingress.tls.cert", "expired on"),
    ("future", "x-orch.ingress.tls.cert", "is not valid before"),
    ("names", "x-orch.ingress.tls.cert", "does not cover www.lab.test"),
    ("wrong_key", "x-orch.ingress.tls.key", "does not match the certificate"),
    ("not_pem", "x-orch.ingress.tls.cert", "is not a PEM certificate"),
    ("bad_key", "x-orch.ingress.tls.key", "is not an unencrypted PEM private key"),
    ("missing", "x-orch.ingress.tls.cert", "cannot read"),
])
def test_bad_certificates_are_bad_input_naming_the_file(tmp_path, case, key, text):
    from cryptography.hazmat.primitives.asymmetric import ec

    if case == "expired":
        make_cert(tmp_path, names=("shop.lab.test", "www.lab.test"), days=(-30, -1))
    elif case == "future":
        make_cert(tmp_path, names=("shop.lab.test", "www.lab.test"), days=(2, 30))
    elif case == "names":
        make_cert(tmp_path, names=("shop.lab.test", "*.other.test"))
    elif case == "wrong_key":
        make_cert(tmp_path, names=("shop.lab.test", "www.lab.test"), key_for=ec.generate_private_key(ec.SECP256R1()))
    elif case == "not_pem":
        make_cert(tmp_path, names=("shop.lab.test", "www.lab.test"))
        (tmp_path / "site.crt").write_text("hello\n")
    elif case == "bad_key":
        make_cert(tmp_path, names=("shop.lab.test", "www.lab.test"))
        (tmp_path / "site.key").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    elif case == "missing":
        make_cert(tmp_path, names=("shop.lab.test", "www.lab.test"))
        (tmp_path / "site.crt").unlink()
    err = refused(tmp_path, FILES)
    [p] = err.problems
    assert p.key == f"services.web.{key}" and text in p.message, p.render()
    assert str(tmp_path / ("site.key" if key.endswith(".key") and case != "wrong_key" else "site.crt")) in p.message
    assert p.file.endswith("compose.yaml") and p.line == 4 and p.fix


def test_certificate_and_key_from_compose_secrets(tmp_path, monkeypatch):
    make_cert(tmp_path, names=("shop.lab.test",))
    key_text = (tmp_path / "site.key").read_text()
    (tmp_path / "site.key").unlink()
    monkeypatch.setenv("SHOP_KEY", key_text)
    compose = """\
        secrets:
          shop_cert: {file: ./site.crt}
          shop_key: {environment: SHOP_KEY}
        services:
          web:
            image: busybox
            x-orch: {ingress: {hosts: [shop.lab.test], target: 80, tls: {cert: {secret: shop_cert}, key: {secret: shop_key}}}}
        """
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(compose))
    envs = tmp_path / "environments"
    envs.mkdir()
    (envs / "dev.yaml").write_text(ENV.format(name="dev", extra=ACME))
    ws = load_workspace(ProjectOptions(files=[tmp_path / "compose.yaml"], env_name="dev"),
                        environ={"SHOP_KEY": key_text})
    bp = compile_blueprint(ws.project, ws.environment, sources=local_sources())
    cert = bp.services["web"].ingress.cert
    assert cert.key_from == "secret shop_key" and cert.key_pem.strip() == key_text.strip()


def test_an_undeclared_secret_is_bad_input(tmp_path):
    err = refused(tmp_path, """\
        services:
          web:
            image: busybox
            x-orch: {ingress: {hosts: [a.lab.test], target: 80, tls: {cert: {secret: nope}, key: {secret: nope}}}}
        """)
    assert any("names the secret nope, which is not declared" in p.message for p in err.problems)
