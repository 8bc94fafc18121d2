"""Host routing in the rendered HAProxy config (agent.edge, agent.haproxy, the template):
the shared frontends' lines as data, for services with host names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent import edge as E
from agent import haproxy as H
from agent import ingress_files as F
from agent.wire import ingress as W
from agent.wire.tls import EdgePorts, Route

PATHS = F.paths_for("/var/lib/orch/engines/N1", run_base="/run")
CRT_LIST = "/var/lib/orch/engines/N1/certs/crt-list"
SHOP_PEM = "/var/lib/orch/engines/N1/certs/shop.example.com.pem"


def routed(project="shop", service="web", hosts=("shop.example.com",), tls="files", env="prod", published=0,
           **route):
    return W.ServiceIngress(project=project, service=service, env=env, published=published, target=8080,
                            servers=(W.Server("web-1", "shop-web-1", "172.18.0.2"),),
                            route=Route(hosts=tuple(hosts), tls=tls, **route))


def config(services, certs=None):
    import jinja2

    ctx = H.render_context(PATHS, {s.key: s for s in services}, certs)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    return env.from_string(H.template_text()).render(**ctx)


def section(text, header):
    """The lines of one frontend/backend section, stripped."""
    lines = text.splitlines()
    start = lines.index(header)
    out = []
    for ln in lines[start + 1:]:
        if not ln.startswith("    "):
            break
        out.append(ln.strip())
    return out


def test_a_routed_service_with_its_certificate():
    text = config([routed(hsts=600)], certs={"shop.example.com": SHOP_PEM})
    assert section(text, "frontend edge.http") == [
        "bind 0.0.0.0:80",
        "http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        "http-request set-header X-Forwarded-Proto http",
        "acl acme_challenge path_beg /.well-known/acme-challenge/",
        "http-request redirect location https://%[var(txn.host)]%[capture.req.uri] code 301 "
        "if !acme_challenge { var(txn.host) -m str shop.example.com }",
        "use_backend be.shop.web if { var(txn.host) -m str shop.example.com }",
        "default_backend edge.notfound",
    ]
    assert section(text, "frontend edge.https") == [
        "bind 0.0.0.0:443 ssl crt-list %s alpn h2,http/1.1" % CRT_LIST,
        "http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        "http-request set-header X-Forwarded-Proto https",
        "use_backend be.shop.web if { var(txn.host) -m str shop.example.com }",
        "default_backend edge.notfound",
    ]
    assert section(text, "backend edge.notfound") == [
        'http-request return status 404 content-type text/plain string "no site for this host name here"']
    backend = section(text, "backend be.shop.web")
    assert backend[:2] == ["balance roundrobin",
                           'http-response set-header Strict-Transport-Security "max-age=600" if { ssl_fc }']
    assert "frontend fe.shop.web" not in text  # published 0: host names only
    assert "acme." not in text


def test_no_redirect_without_a_certificate_or_when_turned_off():
    assert "redirect" not in config([routed()])  # no certificate yet: plain HTTP serves the app
    assert "redirect" not in config([routed(redirect=False)], certs={"shop.example.com": SHOP_PEM})
    assert "redirect" not in config([routed(tls="")], certs={"shop.example.com": SHOP_PEM})
    assert "Strict-Transport-Security" not in config([routed(tls="", hsts=600)])


def test_acme_challenges_go_to_the_environments_certificate_daemon():
    text = config([routed(tls="auto", hosts=("a.example.com", "b.example.com")),
                   routed(project="blog", tls="auto", env="test", hosts=("blog.example.com",)),
                   routed(project="docs", tls="files", hosts=("docs.example.com",))])
    http = section(text, "frontend edge.http")
    assert "use_backend acme.prod if acme_challenge { var(txn.host) -m str a.example.com b.example.com }" in http
    assert "use_backend acme.test if acme_challenge { var(txn.host) -m str blog.example.com }" in http
    assert not [ln for ln in http if "acme" in ln and "docs.example.com" in ln]
    # challenges are decided before the host's own backend
    assert http.index("use_backend acme.prod if acme_challenge { var(txn.host) -m str a.example.com "
                      "b.example.com }") < http.index("use_backend be.shop.web if { var(txn.host) -m str "
                                                      "a.example.com b.example.com }")
    assert section(text, "backend acme.prod") == ["server certd unix@%s/certd-prod.sock" % PATHS.run_dir]
    assert section(text, "backend acme.test") == ["server certd unix@%s/certd-test.sock" % PATHS.run_dir]
    assert not [ln for ln in section(text, "frontend edge.https") if "acme" in ln]


def test_other_edge_ports_and_plain_frontends_beside_them():
    ports = EdgePorts(http=8080, https=8443)
    plain = W.ServiceIngress(project="old", service="api", published=9000, target=80)
    text = config([routed(ports=ports), plain], certs={"shop.example.com": SHOP_PEM})
    assert section(text, "frontend edge.http")[0] == "bind 0.0.0.0:8080"
    assert section(text, "frontend edge.https")[0].startswith("bind 0.0.0.0:8443 ssl crt-list")
    assert "http-request redirect location https://%[var(txn.host)]:8443%[capture.req.uri] code 301" in text
    assert section(text, "frontend fe.old.api") == ["bind 0.0.0.0:9000", "default_backend be.old.api"]
    # a routed service may keep its own port too
    both = config([routed(published=7000)])
    assert section(both, "frontend fe.shop.web") == ["bind 0.0.0.0:7000", "default_backend be.shop.web"]


def test_without_host_names_there_is_no_shared_frontend():
    text = config([W.ServiceIngress(project="old", service="api", published=9000, target=80)])
    assert "edge." not in text and "ssl" not in text


def test_many_host_names_are_split_over_lines():
    hosts = tuple("h%03d.%s.example.com" % (i, "x" * 40) for i in range(100))
    ctx = E.edge_context({"shop/web": routed(hosts=hosts)}, {}, CRT_LIST, lambda env: "/run/x.sock")
    chunks = [r["hosts"] for r in ctx["routes"]]
    assert sum(chunks, []) == list(hosts) and len(chunks) > 1
    assert all(len(" ".join(c)) <= E.LINE_BUDGET for c in chunks)


def test_crt_list_puts_the_fallback_first_with_sni_filters_after():
    from agent.certs.files import crt_list_text

    assert crt_list_text("/c/default.pem", {"b.example.com": "/c/b.example.com.pem",
                                            "a.example.com": "/c/a.example.com.pem"}) == (
        "/c/default.pem\n/c/a.example.com.pem a.example.com\n/c/b.example.com.pem b.example.com\n")


@pytest.mark.skipif(not shutil.which("haproxy") and not Path("/usr/sbin/haproxy").exists(),
                    reason="haproxy is not installed here")
def test_haproxy_accepts_the_edge_config_and_its_files(tmp_path):
    """render_config writes the crt-list and the fallback certificate (openssl) it names."""
    paths = F.paths_for(str(tmp_path), run_base="/run")  # -c binds nothing
    services = {s.key: s for s in (routed(tls="auto", hsts=60), routed(project="blog", hosts=("b.example.com",)),
                                   W.ServiceIngress(project="old", service="api", published=9000, target=80))}
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(H.render_config(paths, services))
    certs = tmp_path / "certs"
    assert (certs / "crt-list").read_text() == "%s\n" % (certs / "default.pem")
    assert (certs / "default.pem").stat().st_mode & 0o777 == 0o600 and certs.stat().st_mode & 0o777 == 0o700
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    out = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
