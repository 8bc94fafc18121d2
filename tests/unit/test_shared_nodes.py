"""orchestrator.core.shared_nodes: what a deploy may not take over on a node (pure)."""

from types import SimpleNamespace as NS

import pytest

from orchestrator.errors import InputError
from orchestrator.core.shared_nodes import of_env, refuse_taken_ports


def held(port, host_ip="", protocol="tcp", by="container shop-web-1"):
    return {"published": port, "protocol": protocol, "host_ip": host_ip, "project": "shop", "env": "dev", "by": by}


def check(published, taken, ingress=None):
    bp = NS(services={"web": NS(published=published, ingress=ingress)})
    project = NS(services={"web": NS(loc=NS(file="compose.yaml", line=7))})
    refuse_taken_ports(project, bp, {("web", "n1"): None}, {"n1": taken})


def test_a_host_port_clashes_only_on_the_same_port_protocol_and_address():
    check([("", 8080, "tcp", 80)], [held(8081), held(8080, protocol="udp")])
    check([("127.0.0.1", 8080, "tcp", 80)], [held(8080, "10.0.0.5")])
    for mine, theirs in (("", "10.0.0.5"), ("10.0.0.5", ""), ("10.0.0.5", "0.0.0.0"), ("0.0.0.0", "127.0.0.1")):
        with pytest.raises(InputError) as err:
            check([(mine, 8080, "tcp", 80)], [held(8080, theirs)])
        (p,) = err.value.problems
        assert (p.file, p.line, p.key) == ("compose.yaml", 7, "services.web.ports")
        assert p.message == ("service web publishes host port 8080/tcp on node n1, but container shop-web-1 "
                             "(project shop, environment dev) already publishes it there")


def test_the_ingress_port_counts_too():
    with pytest.raises(InputError, match="host port 80/tcp on node n1, but the ingress of api"):
        check([], [held(80, by="the ingress of api")], ingress=NS(host_ip="0.0.0.0", published=80))


def test_of_env_keeps_this_environments_and_unlabelled_objects():
    state = {"containers": [{"name": "a", "env": "dev"}, {"name": "b", "env": "qa"}, {"name": "c", "env": ""}],
             "ingress": {"web": {"env": "qa"}, "api": {"env": "dev"}}, "owners": {"qa": ["container b"]}}
    out = of_env(state, "dev")
    assert [c["name"] for c in out["containers"]] == ["a", "c"] and list(out["ingress"]) == ["api"]
    assert out["owners"] == state["owners"]
