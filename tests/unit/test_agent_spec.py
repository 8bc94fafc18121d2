import base64

import pytest

from agent.wire.protocol import BadRequest
from agent.wire.spec import ContainerSpec, Healthcheck, ServiceSpec, config_hash

IMAGE = "10.250.0.1:5000/shop/web@sha256:" + "b" * 64


def container(**kw):
    d = {"image": IMAGE}
    d.update(kw)
    return d


def service(**kw):
    c = kw.pop("container", container())
    d = {"project": "shop", "service": "web", "env": "dev", "release": "r1", "replicas": [2, 1],
         "config_hash": config_hash(c), "container": c, "networks": {"default": {}}}
    d.update(kw)
    return d


def test_full_container_spec_parses():
    spec = ContainerSpec.from_dict(container(
        command=["httpd", "-f"], entrypoint=[], environment={"A": "1"},
        ports=[{"target": 80, "published": 8080}, {"target": 53, "protocol": "udp", "host_ip": "127.0.0.1"}],
        volumes=[{"type": "volume", "source": "data", "target": "/data"},
                 {"type": "bind", "source": "/srv/x", "target": "/x", "read_only": True},
                 {"type": "tmpfs", "target": "/tmp"}],
        networks=[{"name": "default", "aliases": ["b", "a", "a"]}],
        healthcheck={"test": ["CMD", "true"], "interval": 2, "timeout": 1, "retries": 3, "start_period": 1},
        restart="on-failure:3", resources={"cpus": 0.5, "memory": 64 << 20, "pids_limit": 100},
        labels={"team": "a"}, user="1000:1000", working_dir="/app", extra_hosts=["db:10.0.0.1"],
        cap_add=["NET_ADMIN"], cap_drop=["ALL"], init=True, stop_signal="SIGINT", stop_grace_period=3,
        secrets=[{"name": "pw", "content": base64.b64encode(b"s3cret").decode()}],
        configs=[{"name": "app.conf", "content": "", "target": "/etc/app.conf"}],
    ))
    assert spec.ports[1].protocol == "udp" and spec.ports[0].published == 8080
    assert spec.networks[0].aliases == ["a", "b"]
    assert spec.secrets[0].target == "/run/secrets/pw" and spec.secrets[0].mode == 0o400
    assert spec.configs[0].target == "/etc/app.conf" and spec.configs[0].mode == 0o444
    assert spec.healthcheck.budget(margin=5) == 1 + 4 * 2 + 1 + 5


@pytest.mark.parametrize("bad, needle", [
    ({"image": "x y"}, "image"),
    ({"restart": "sometimes"}, "restart"),
    ({"ports": [{"target": 0}]}, "ports[0].target"),
    ({"ports": [{"target": 80, "protocol": "icmp"}]}, "protocol"),
    ({"volumes": [{"type": "bind", "source": "relative", "target": "/x"}]}, "absolute"),
    ({"labels": {"io.orch.project": "evil"}}, "reserved"),
    ({"environment": {"A": 1}}, "environment"),
    ({"secrets": [{"name": "pw", "content": "***"}]}, "base64"),
    ({"healthcheck": {"test": ["true"]}}, "CMD"),
    ({"command": "echo hi"}, "list of strings"),
    ({"unknown_key": 1}, "unknown keys"),
    ({"volumes": [{"type": "tmpfs", "target": "/x"}, {"type": "tmpfs", "target": "/x"}]}, "more than one mount"),
    ({"secrets": [{"name": "pw", "content": "eA==", "target": True}]}, "secrets[0].target must be a string"),
    ({"healthcheck": {"test": ["CMD", "true"], "interval": float("nan")}}, "finite"),
    ({"stop_grace_period": float("inf")}, "finite"),
    ({"resources": {"memory": 2 ** 60}}, "out of range"),
])
def test_container_spec_rejects(bad, needle):
    with pytest.raises(BadRequest) as err:
        ContainerSpec.from_dict(container(**bad))
    assert needle in err.value.message


def test_service_spec():
    svc = ServiceSpec.from_dict(service())
    assert svc.replicas == [1, 2]
    assert svc.container_name(2) == "shop-web-2"
    assert svc.networks["default"].engine_name("shop") == "shop_default"


@pytest.mark.parametrize("bad", [
    {"replicas": [1, 1]}, {"replicas": [0]}, {"project": "Shop"}, {"config_hash": "xyz"},
    {"container": container(networks=[{"name": "backend"}])},
    {"container": container(volumes=[{"source": "data", "target": "/d"}])},
    {"pull": "sometimes"},
])
def test_service_spec_rejects(bad):
    with pytest.raises(BadRequest):
        ServiceSpec.from_dict(service(**bad))


def test_config_hash_is_deterministic_and_normalised():
    a = container(environment={"B": "2", "A": "1"}, cap_add=["B", "A"])
    b = container(cap_add=["A", "B", "A"], environment={"A": "1", "B": "2"}, init=None, labels={})
    assert config_hash(a) == config_hash(b) == config_hash(ContainerSpec.from_dict(a))
    assert len(config_hash(a)) == 64


@pytest.mark.parametrize("change", [
    {"environment": {"A": "2"}}, {"image": "busybox:1"}, {"command": ["sh"]},
    {"secrets": [{"name": "pw", "content": "eA=="}]}, {"ports": [{"target": 80}]},
])
def test_config_hash_changes_with_config(change):
    assert config_hash(container(**change)) != config_hash(container())


def test_healthcheck_disable():
    hc = Healthcheck.from_dict({"disable": True}, "hc")
    assert hc.disabled
