"""Canonical forms: every service key in its long, typed form."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.core.compose import (
    DependsOn,
    LoadOptions,
    PortMapping,
    VolumeMount,
    format_duration,
    load_project,
    parse_bytes,
    parse_duration,
)
from orchestrator.core.compose.ports_volumes import SyntaxProblem, parse_port, parse_volume


def load(tmp_path, text, environ=None, **kw):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(text))
    return load_project(LoadOptions(working_dir=tmp_path, environ=environ or {}, **kw))


def svc(tmp_path, body, extra="", **kw):
    text = "services:\n  s:\n" + textwrap.indent(textwrap.dedent(body), "    ") + textwrap.dedent(extra)
    return load(tmp_path, text, **kw).services["s"]


# --------------------------------------------------------------------------- ports
@pytest.mark.parametrize(
    "spec,expected",
    [
        (80, [PortMapping(80)]),
        ("80", [PortMapping(80)]),
        ("8080:80", [PortMapping(80, "8080")]),
        ("8080:80/udp", [PortMapping(80, "8080", "udp")]),
        ("127.0.0.1:8080:80", [PortMapping(80, "8080", host_ip="127.0.0.1")]),
        ("127.0.0.1::80", [PortMapping(80, None, host_ip="127.0.0.1")]),
        ("[::1]:8080:80", [PortMapping(80, "8080", host_ip="::1")]),
        ("::1:8080:80", [PortMapping(80, "8080", host_ip="::1")]),
        ("8000-8001:80-81", [PortMapping(80, "8000"), PortMapping(81, "8001")]),
        ("3000-3001", [PortMapping(3000), PortMapping(3001)]),
        ("8000-8010:80", [PortMapping(80, "8000-8010")]),
        ("0.0.0.0:53:53/UDP", [PortMapping(53, "53", "udp", "0.0.0.0")]),
    ],
)
def test_port_short_syntax(spec, expected):
    assert parse_port(spec) == expected


@pytest.mark.parametrize(
    "spec,reason",
    [
        ("80:99999", "port 99999 is out of range 1-65535"),
        ("0:80", "port 0 is out of range"),
        ("http:80", "published port 'http' is not a number"),
        ("80:80/tcpx", "unknown protocol 'tcpx'"),
        ("8000-8002:80-81", "differ in length"),
        ("90-80", "ends before it starts"),
        ("8080:", "the container port is missing"),
    ],
)
def test_port_errors(spec, reason):
    with pytest.raises(SyntaxProblem, match=reason):
        parse_port(spec)


def test_ports_long_syntax_and_dedupe(tmp_path):
    s = svc(tmp_path, """
        image: x
        ports:
          - target: 80
            published: 8080
            host_ip: 127.0.0.1
            protocol: udp
            mode: host
            name: web
          - "8080:80"
          - "8080:80"
          - target: "443"
    """)
    assert s.ports == [
        PortMapping(80, "8080", "udp", "127.0.0.1", "host", name="web"),
        PortMapping(80, "8080"),
        PortMapping(443),
    ]


def test_expose(tmp_path):
    assert svc(tmp_path, "image: x\nexpose: [80, '443', 80]\n").expose == ["80", "443"]


# --------------------------------------------------------------------------- volumes
def test_volume_short_syntax():
    assert parse_volume("data:/data") == VolumeMount("volume", "data", "/data")
    assert parse_volume("/data") == VolumeMount("volume", None, "/data")
    assert parse_volume("/host:/data:ro,z") == VolumeMount(
        "bind", "/host", "/data", True, selinux="z", create_host_path=True)
    assert parse_volume("data:/data:nocopy").nocopy is True
    assert parse_volume("/h:/c:rslave").propagation == "rslave"
    with pytest.raises(SyntaxProblem, match="unknown volume option 'r0'"):
        parse_volume("/h:/c:r0")
    with pytest.raises(SyntaxProblem, match="must be absolute"):
        parse_volume("data:relative")


def test_volumes_canonical(tmp_path):
    home = str(tmp_path / "home")
    s = svc(tmp_path, """
        image: x
        volumes:
          - ./conf:/etc/app:ro
          - ~/cache:/cache
          - data:/var/lib/data
          - /anon
          - type: tmpfs
            target: /tmp
            tmpfs: {size: 64m, mode: 1777}
          - type: bind
            source: ../shared
            target: /shared
            bind: {propagation: shared, create_host_path: false}
          - type: volume
            source: data
            target: /var/lib/data
            read_only: true
            volume: {nocopy: true, subpath: sub}
    """, "volumes: {data: {}}\n", environ={"HOME": home})
    assert s.volumes == [
        VolumeMount("bind", str(tmp_path / "conf"), "/etc/app", True, create_host_path=True),
        VolumeMount("bind", home + "/cache", "/cache", create_host_path=True),
        VolumeMount("volume", "data", "/var/lib/data", True, nocopy=True, subpath="sub"),
        VolumeMount("volume", None, "/anon"),
        VolumeMount("tmpfs", None, "/tmp", tmpfs_size=64 * 1024**2, tmpfs_mode=1777),
        VolumeMount("bind", str(tmp_path.parent / "shared"), "/shared", propagation="shared",
                    create_host_path=False),
    ]


# --------------------------------------------------------------------------- depends_on & co
def test_depends_on_forms(tmp_path):
    p = load(tmp_path, """
        services:
          a: {image: x, depends_on: [b, c]}
          b: {image: x, depends_on: {c: {condition: service_healthy, restart: true}}}
          c: {image: x, depends_on: {d: {condition: service_completed_successfully, required: false}}}
          d: {image: x}
    """)
    assert p.services["a"].depends_on == {"b": DependsOn(), "c": DependsOn()}
    assert p.services["b"].depends_on == {"c": DependsOn("service_healthy", True, True)}
    assert p.services["c"].depends_on == {"d": DependsOn("service_completed_successfully", False)}


def test_condition_defaults_to_service_started(tmp_path):
    p = load(tmp_path, "services: {a: {image: x, depends_on: {b: {required: true}}}, b: {image: x}}\n")
    assert p.services["a"].depends_on["b"].condition == "service_started"


def test_implicit_dependencies(tmp_path):
    p = load(tmp_path, """
        services:
          app:
            image: x
            links: ["db:database"]
            volumes_from: ["data:ro", "container:other"]
            ipc: "service:shm"
            depends_on: {db: {condition: service_healthy}}
          net:
            image: x
            network_mode: "service:vpn"
            pid: "service:vpn"
          db: {image: x}
          data: {image: x}
          shm: {image: x}
          vpn: {image: x}
    """)
    app = p.services["app"]
    assert app.depends_on == {"db": DependsOn("service_healthy")}
    deps = app.dependencies()
    assert deps["db"] == DependsOn("service_healthy")  # explicit wins
    assert deps["data"] == DependsOn("service_started", True, False)
    assert deps["shm"] == DependsOn("service_started", True, True)
    assert "other" not in deps
    assert p.services["net"].dependencies() == {"vpn": DependsOn("service_started", True, True)}
    assert p.services["net"].networks == {}  # network_mode: no default network


def test_networks_forms(tmp_path):
    p = load(tmp_path, """
        services:
          a: {image: x, networks: [front, back]}
          b:
            image: x
            networks:
              back:
                aliases: [db, database]
                ipv4_address: 10.0.0.5
              front:
          c: {image: x}
        networks: {front: {}, back: {driver: bridge, internal: true}}
    """)
    assert p.services["a"].networks == {"front": None, "back": None}
    b = p.services["b"].networks
    assert b["back"].aliases == ["db", "database"] and b["back"].ipv4_address == "10.0.0.5"
    assert b["front"] is None
    assert p.services["c"].networks == {"default": None}
    assert p.networks["back"].internal is True and p.networks["back"].name.endswith("_back")
    assert "default" in p.networks


# --------------------------------------------------------------------------- healthcheck
@pytest.mark.parametrize(
    "test,expected",
    [
        ('"curl -f http://localhost"', ["CMD-SHELL", "curl -f http://localhost"]),
        ('["CMD", "true"]', ["CMD", "true"]),
        ('["CMD-SHELL", "exit 0"]', ["CMD-SHELL", "exit 0"]),
        ('["NONE"]', ["NONE"]),
    ],
)
def test_healthcheck_test_forms(tmp_path, test, expected):
    s = svc(tmp_path, f"image: x\nhealthcheck: {{test: {test}}}\n")
    assert s.healthcheck.test == expected
    assert s.healthcheck.disable is (expected == ["NONE"])


def test_healthcheck_durations(tmp_path):
    hc = svc(tmp_path, """
        image: x
        healthcheck:
          test: ["CMD", "true"]
          interval: 1m30s
          timeout: 500ms
          retries: 3
          start_period: 1h
          start_interval: 2s
    """).healthcheck
    assert (hc.interval, hc.timeout, hc.retries, hc.start_period, hc.start_interval) == (
        90.0, 0.5, 3, 3600.0, 2.0)


def test_healthcheck_disable(tmp_path):
    assert svc(tmp_path, "image: x\nhealthcheck: {disable: true}\n").healthcheck.disable is True


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("1m30s", 90), ("1.5s", 1.5), ("250ms", 0.25),
                                          ("2h", 7200), ("1h2m3s", 3723), ("0", 0), ("100us", 1e-4)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds,text", [(90, "1m30s"), (10, "10s"), (0.5, "500ms"), (3600, "1h0m0s"),
                                          (1.5, "1.5s"), (0, "0s")])
def test_format_duration_like_go(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("text,size", [("512m", 512 * 1024**2), ("1g", 1024**3), ("1G", 1024**3),
                                       ("100k", 102400), ("2gb", 2 * 1024**3), (1024, 1024), ("64", 64)])
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


# --------------------------------------------------------------------------- other keys
def test_build_forms(tmp_path):
    p = load(tmp_path, """
        services:
          a: {build: ./a}
          b:
            build:
              dockerfile: Dockerfile.prod
              target: prod
              args: [ONE=1, FROM_ENV]
              labels: {x: "y"}
              cache_from: [app:cache]
          c: {build: {context: "https://github.com/example/repo.git#main"}}
    """, environ={"FROM_ENV": "env-value"})
    a, b, c = (p.services[n].build for n in "abc")
    assert (a.context, a.dockerfile, a.target, a.args) == (str(tmp_path / "a"), "Dockerfile", None, {})
    assert b.context == str(tmp_path) and b.dockerfile == "Dockerfile.prod" and b.target == "prod"
    assert b.args == {"ONE": "1", "FROM_ENV": "env-value"}
    assert b.labels == {"x": "y"} and b.cache_from == ["app:cache"]
    assert c.context == "https://github.com/example/repo.git#main"


def test_command_and_entrypoint(tmp_path):
    s = svc(tmp_path, """
        image: x
        command: sh -c 'echo "hello world"'
        entrypoint: ["/init", "--"]
    """)
    assert s.command == ["sh", "-c", 'echo "hello world"']
    assert s.entrypoint == ["/init", "--"]
    assert svc(tmp_path, "image: x\ncommand: []\n").command == []
    assert svc(tmp_path, "image: x\n").command is None


def test_environment_forms(tmp_path):
    (tmp_path / "a.env").write_text("FROM_FILE=1\nBOTH=file\n")
    (tmp_path / "b.env").write_text("B_FILE=yes\n")
    s = svc(tmp_path, """
        image: x
        env_file:
          - a.env
          - path: b.env
            required: true
          - path: missing.env
            required: false
        environment:
          - BOTH=env
          - NUMBER=1
          - FROM_SHELL
          - NOT_SET
          - EMPTY=
    """, environ={"FROM_SHELL": "shell"})
    assert s.environment == {"FROM_FILE": "1", "BOTH": "env", "B_FILE": "yes", "NUMBER": "1",
                             "FROM_SHELL": "shell", "NOT_SET": None, "EMPTY": ""}
    assert [(e.path, e.required) for e in s.env_file] == [
        (str(tmp_path / "a.env"), True), (str(tmp_path / "b.env"), True),
        (str(tmp_path / "missing.env"), False)]


def test_environment_map_values_become_strings(tmp_path):
    s = svc(tmp_path, "image: x\nenvironment: {A: 1, B: true, C: 1.5, D: null, E: yes}\n")
    assert s.environment == {"A": "1", "B": "true", "C": "1.5", "D": None, "E": "yes"}


def test_env_file_string_form(tmp_path):
    (tmp_path / "app.env").write_text("A=1\n")
    assert svc(tmp_path, "image: x\nenv_file: app.env\n").environment == {"A": "1"}


def test_deploy(tmp_path):
    d = svc(tmp_path, """
        image: x
        deploy:
          mode: replicated
          replicas: 3
          labels: [a=b]
          resources:
            limits: {cpus: "0.5", memory: 1g, pids: 100}
            reservations: {cpus: 0.25, memory: 256M}
          restart_policy: {condition: on-failure, delay: 5s, max_attempts: 3, window: 2m}
          update_config: {parallelism: 2, delay: 10s, order: start-first, failure_action: rollback, monitor: 30s, max_failure_ratio: 0.1}
          rollback_config: {parallelism: 1, order: stop-first}
          placement:
            constraints: [node.labels.zone==a, "node.role!=manager"]
            preferences: [{spread: node.labels.zone}]
            max_replicas_per_node: 2
    """).deploy
    assert d.replicas == 3 and d.mode == "replicated" and d.labels == {"a": "b"}
    assert (d.resources["limits"].cpus, d.resources["limits"].memory, d.resources["limits"].pids) == (
        0.5, 1024**3, 100)
    assert d.resources["reservations"].memory == 256 * 1024**2
    assert (d.restart_policy.condition, d.restart_policy.delay, d.restart_policy.max_attempts,
            d.restart_policy.window) == ("on-failure", 5.0, 3, 120.0)
    u = d.update_config
    assert (u.parallelism, u.delay, u.order, u.failure_action, u.monitor, u.max_failure_ratio) == (
        2, 10.0, "start-first", "rollback", 30.0, 0.1)
    assert d.rollback_config.order == "stop-first"
    assert d.placement.constraints == ["node.labels.zone==a", "node.role!=manager"]
    assert d.placement.preferences == [{"spread": "node.labels.zone"}]
    assert d.placement.max_replicas_per_node == 2


def test_replicas_property(tmp_path):
    assert svc(tmp_path, "image: x\n").replicas == 1
    assert svc(tmp_path, "image: x\nscale: 2\n").replicas == 2
    assert svc(tmp_path, "image: x\ndeploy: {replicas: 4}\n").replicas == 4


def test_secrets_and_configs(tmp_path):
    (tmp_path / "s.txt").write_text("x")
    p = load(tmp_path, """
        services:
          s:
            image: x
            secrets:
              - token
              - source: cert
                target: server.pem
                uid: "100"
                mode: 0440
            configs:
              - app_conf
              - {source: nginx_conf, target: /etc/nginx/nginx.conf, mode: "0444"}
        secrets:
          token: {file: ./s.txt}
          cert: {environment: CERT}
        configs:
          app_conf: {content: "key=value"}
          nginx_conf: {external: true}
    """, environ={"CERT": "pem"})
    s = p.services["s"]
    assert [(r.source, r.target, r.uid, r.mode) for r in s.secrets] == [
        ("token", "/run/secrets/token", None, None), ("cert", "/run/secrets/server.pem", "100", 0o440)]
    assert [(r.source, r.target, r.mode) for r in s.configs] == [
        ("app_conf", "/app_conf", None), ("nginx_conf", "/etc/nginx/nginx.conf", 0o444)]
    assert p.secrets["token"].file == str(tmp_path / "s.txt") and p.secrets["token"].name.endswith("_token")
    assert p.secrets["cert"].environment == "CERT"
    assert p.configs["app_conf"].content == "key=value"
    assert p.configs["nginx_conf"].external and p.configs["nginx_conf"].name == "nginx_conf"


def test_misc_keys(tmp_path):
    s = svc(tmp_path, """
        image: x
        container_name: c1
        hostname: h
        user: 1000
        working_dir: /app
        extra_hosts: ["db:10.0.0.2", "cache=10.0.0.3"]
        cap_add: [NET_ADMIN]
        cap_drop: [ALL]
        stop_signal: SIGTERM
        stop_grace_period: 1m
        logging: {driver: json-file, options: {max-size: 10m, max-file: 3}}
        init: true
        tty: "yes"
        stdin_open: false
        restart: on-failure:3
        labels: {a: b, empty: null}
        profiles: [p1, p1]
        sysctls: [net.core.somaxconn=1024]
        x-custom: {kept: true}
    """, profiles=["p1"])
    assert (s.container_name, s.hostname, s.user, s.working_dir) == ("c1", "h", "1000", "/app")
    assert s.extra_hosts == ["db=10.0.0.2", "cache=10.0.0.3"]
    assert (s.cap_add, s.cap_drop, s.stop_signal, s.stop_grace_period) == (
        ["NET_ADMIN"], ["ALL"], "SIGTERM", 60.0)
    assert s.logging.driver == "json-file" and s.logging.options == {"max-size": "10m", "max-file": "3"}
    assert (s.init, s.tty, s.stdin_open, s.restart) == (True, True, False, "on-failure:3")
    assert s.labels == {"a": "b", "empty": ""}
    assert s.profiles == ["p1"]
    assert s.other["sysctls"] == {"net.core.somaxconn": "1024"}
    assert s.extensions == {"x-custom": {"kept": True}}


def test_restart_no_stays_a_string(tmp_path):
    # YAML 1.1 would read `no` as false; Compose (YAML 1.2) keeps the string.
    assert svc(tmp_path, "image: x\nrestart: no\n").restart == "no"


def test_top_level_names(tmp_path):
    p = load(tmp_path, """
        services:
          s:
            image: x
            volumes: [data:/d, ext:/e, named:/n]
            networks: [front, outside]
        volumes:
          data:
          ext: {external: true}
          named: {name: my-volume, driver: local, driver_opts: {type: none}}
          unused: {}
        networks:
          front: {}
          outside: {external: {name: corp-net}}
    """, project_name="demo")
    assert {k: v.name for k, v in p.volumes.items()} == {"data": "demo_data", "ext": "ext",
                                                         "named": "my-volume"}
    assert p.volumes["named"].driver_opts == {"type": "none"}
    assert {k: (v.name, v.external) for k, v in p.networks.items()} == {
        "front": ("demo_front", False), "outside": ("corp-net", True)}
