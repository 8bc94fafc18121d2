"""A service's route on the wire (ServiceIngress, ingress_sync, IngressSettings) and the
routes a node refuses (agent.edge.check_routes)."""

from __future__ import annotations

import os

import pytest

from agent import edge as E
from agent.wire import ingress as W
from agent.wire.protocol import AgentError, BadRequest
from agent.wire.tls import EdgePorts, Route

ROUTE = {"hosts": ["shop.example.com"], "tls": "files", "hsts": 60}


def sync_args(**kw):
    args = {"project": "shop", "service": "web", "env": "prod", "port": {"published": 0, "target": 8080},
            "health": {"path": "/"}, "backends": [{"name": "web-1", "container": "shop-web-1"}], "route": ROUTE}
    args.update(kw)
    return args


def test_sync_carries_the_route_and_a_routed_service_needs_no_port_of_its_own():
    svc = W.parse_sync(sync_args()).service
    assert svc.route == Route(hosts=("shop.example.com",), tls="files", hsts=60) and svc.published == 0
    assert W.ServiceIngress.from_dict(svc.to_dict()) == svc
    with pytest.raises(BadRequest, match="published"):
        W.parse_sync(sync_args(route=None))
    with pytest.raises(BadRequest, match="not a host name"):
        W.parse_sync(sync_args(route={"hosts": ["Shop.example.com"]}))


def test_a_route_change_needs_a_reload_and_plain_services_look_as_before():
    svc = W.parse_sync(sync_args()).service
    other = W.parse_sync(sync_args(route=dict(ROUTE, hsts=0))).service
    assert svc.shape() != other.shape()
    plain = W.parse_sync(sync_args(route=None, port={"published": 80, "target": 8080})).service
    assert "route" not in plain.to_dict() and plain.route == Route()


def test_ingress_settings_carry_the_route():
    s = W.IngressSettings.parse({"port": {"published": 0, "target": 8080}, "health": {}, "route": ROUTE})
    assert s.route.hosts == ("shop.example.com",)
    assert W.IngressSettings.parse(s.to_dict()) == s
    plain = W.IngressSettings.parse({"port": {"published": 80, "target": 8080}, "health": {}})
    assert "route" not in plain.to_dict()
    with pytest.raises(BadRequest, match="ingress.port.published"):
        W.IngressSettings.parse({"port": {"published": 0, "target": 8080}, "health": {}})


def svc(project="shop", service="web", hosts=("shop.example.com",), published=0, env="prod", ports=EdgePorts()):
    return W.ServiceIngress(project=project, service=service, env=env, published=published, target=8080,
                            route=Route(hosts=tuple(hosts), ports=ports) if hosts else Route())


def check(existing, new, running=True, free=lambda ip, port: True):
    E.check_routes({s.key: s for s in existing}, new, running, free)


def conflict(existing, new, **kw):
    with pytest.raises(AgentError) as err:
        check(existing, new, **kw)
    assert err.value.kind == "conflict"
    return err.value.message


def test_a_host_name_belongs_to_one_service_of_any_project_or_environment():
    shop = svc()
    msg = conflict([shop], svc(project="rival", env="test", hosts=("x.example.com", "shop.example.com")))
    assert msg == ("host name shop.example.com on this node already belongs to shop/web (env prod); "
                   "rival/web (env test) cannot claim it")
    check([shop], svc(project="blog", hosts=("blog.example.com",)))  # another name: fine
    check([shop], svc(hosts=("shop.example.com", "www.example.com")))  # the same service again: fine


def test_routed_services_share_the_edge_ports_and_no_one_else_takes_them():
    shop = svc()
    assert "80/443" in conflict([shop], svc(project="blog", hosts=("b.example.com",),
                                            ports=EdgePorts(8080, 8443)))
    assert "port 443" in conflict([shop], svc(project="old", hosts=(), published=443))
    assert "port 80 " in conflict([svc(project="old", hosts=(), published=80)], shop)
    assert "shared host-name port" in conflict([], svc(published=80))


def test_edge_ports_must_be_free_unless_haproxy_has_them():
    busy = lambda ip, port: port != 443  # noqa: E731
    assert "port 443 (shared host-name port) is in use" in conflict([], svc(), free=busy)
    check([svc(project="blog", hosts=("b.example.com",))], svc(), free=busy)  # HAProxy's already
    assert "in use" in conflict([svc(project="blog", hosts=("b.example.com",))], svc(), running=False, free=busy)
    check([svc()], svc(hosts=("shop.example.com", "new.example.com")), free=busy)  # its own, running


def test_the_ingress_port_check_asks_the_routes_and_leaves_port_0_alone(monkeypatch):
    from agent import ingress as I

    monkeypatch.setattr(I, "_port_free", lambda ip, port: True)
    shop, blog = svc(), svc(project="blog", hosts=("blog.example.com",))
    I._check_port({shop.key: shop}, blog, True)  # two services on port 0: no clash
    with pytest.raises(AgentError, match="already belongs to shop/web"):
        I._check_port({shop.key: shop}, svc(project="blog"), True)


def test_other_projects_routed_services_hold_the_edge_ports_not_port_0(tmp_path):
    """state's ports_elsewhere: the controller refuses a port another project holds; a
    service reached by name only holds the shared ports, not a port 0 of its own."""
    from agent.context import Context
    from agent.fake import FakeEngine
    from agent.ingress import _paths
    from agent.ingress_files import save_state
    from agent.owner import ports_elsewhere

    ctx = Context(engine_factory=FakeEngine, state_dir=str(tmp_path), engine_id=lambda: "e1")
    blog = svc(project="blog", hosts=("blog.example.com",), ports=EdgePorts(8080, 8443))
    plain = svc(project="old", hosts=(), published=9000)
    os.makedirs(_paths(ctx).dir)
    save_state(_paths(ctx), {s.key: s for s in (svc(), blog, plain)})
    held = [(p["published"], p["project"], p["by"]) for p in ports_elsewhere(ctx, "shop")]
    assert held == [(8080, "blog", "the ingress's host names (web)"), (8443, "blog", "the ingress's host names (web)"),
                    (9000, "old", "the ingress of web")]
