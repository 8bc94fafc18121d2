import base64

from agent.create import create_body
from agent.wire.spec import ServiceSpec, config_hash

IMAGE = "busybox:latest"


def svc(**container_kw):
    c = {"image": IMAGE}
    c.update(container_kw)
    return ServiceSpec.from_dict({
        "project": "shop", "service": "web", "env": "dev", "release": "r3", "replicas": [1],
        "config_hash": config_hash(c), "container": c,
        "networks": {"default": {}, "back": {}, "ext": {"external": True, "name": "shared"}},
        "volumes": {"data": {}},
    })


def test_minimal_body():
    s = svc()
    body, extra = create_body(s, 1, {})
    assert body == {
        "Image": IMAGE,
        "Env": [],
        "Labels": {
            "io.orch.managed-by": "orch-agent", "io.orch.project": "shop", "io.orch.service": "web",
            "io.orch.replica": "1", "io.orch.env": "dev", "io.orch.config-hash": s.config_hash,
            "io.orch.release": "r3",
        },
        "StopTimeout": 10,
        "HostConfig": {"RestartPolicy": {"Name": ""}, "PortBindings": {}, "Mounts": [], "Binds": [],
                       "ReadonlyRootfs": False},
    }
    assert extra == []


def test_full_body():
    s = svc(
        command=["httpd", "-f"], entrypoint=[], environment={"B": "2", "A": "1"},
        ports=[{"target": 80, "published": 8080}, {"target": 80, "published": 8081, "host_ip": "127.0.0.1"},
               {"target": 53, "protocol": "udp"}],
        volumes=[{"source": "data", "target": "/data"}, {"type": "bind", "source": "/srv", "target": "/srv", "read_only": True},
                 {"type": "tmpfs", "target": "/tmp"}, {"target": "/anon"}],
        networks=[{"name": "default", "aliases": ["www"]}, {"name": "back"}, {"name": "ext"}],
        healthcheck={"test": ["CMD-SHELL", "wget -q -O- localhost"], "interval": 2, "timeout": 1.5, "retries": 4},
        restart="on-failure:5", resources={"cpus": 1.5, "memory": 1024, "pids_limit": 50},
        user="nobody", working_dir="/srv", extra_hosts=["db:10.0.0.1"], cap_add=["NET_ADMIN"], init=True,
        stop_signal="SIGINT", stop_grace_period=2.4,
        secrets=[{"name": "pw", "content": base64.b64encode(b"x").decode()}],
        configs=[{"name": "conf", "content": ""}],
    )
    files = {("secret", "pw"): "/var/lib/orch-agent/engines/E/files/shop/web/secrets/pw",
             ("config", "conf"): "/var/lib/orch-agent/engines/E/files/shop/web/configs/conf"}
    body, extra = create_body(s, 1, files)
    assert body["Cmd"] == ["httpd", "-f"] and body["Entrypoint"] == [""]
    assert body["Env"] == ["A=1", "B=2"]
    assert body["User"] == "nobody" and body["WorkingDir"] == "/srv" and body["StopSignal"] == "SIGINT"
    assert body["StopTimeout"] == 2
    assert body["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q -O- localhost"], "Interval": 2_000_000_000,
                                   "Timeout": 1_500_000_000, "Retries": 4, "StartPeriod": 0}
    assert body["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    hc = body["HostConfig"]
    assert hc["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": "8080"}, {"HostIp": "127.0.0.1", "HostPort": "8081"}],
                                  "53/udp": [{"HostIp": "", "HostPort": ""}]}
    assert hc["Mounts"] == [
        {"Type": "volume", "Target": "/data", "ReadOnly": False, "Source": "shop_data"},
        {"Type": "tmpfs", "Target": "/tmp"},
        {"Type": "volume", "Target": "/anon", "ReadOnly": False},
        {"Type": "bind", "Source": files[("secret", "pw")], "Target": "/run/secrets/pw", "ReadOnly": True},
        {"Type": "bind", "Source": files[("config", "conf")], "Target": "/conf", "ReadOnly": True},
    ]
    assert hc["Binds"] == ["/srv:/srv:ro"]
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 5}
    assert hc["NanoCpus"] == 1_500_000_000 and hc["Memory"] == 1024 and hc["PidsLimit"] == 50
    assert hc["CapAdd"] == ["NET_ADMIN"] and hc["ExtraHosts"] == ["db:10.0.0.1"] and hc["Init"] is True
    assert hc["NetworkMode"] == "shop_default"
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"shop_default": {"Aliases": ["web", "www"]}}}
    assert extra == [("shop_back", ["web"]), ("shared", ["web"])]
