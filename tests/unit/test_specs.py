"""orchestrator.core.specs: Compose service + environment + placement -> agent ServiceSpec JSON."""

import base64
import textwrap
from pathlib import Path

import pytest

from agent.wire.spec import ServiceSpec, config_hash
from orchestrator.errors import InputError
from orchestrator.core.placement import Slot
from orchestrator.core.specs import compile_blueprint, node_infos
from orchestrator.io.files import local_sources
from orchestrator.app.workspace import ProjectOptions, load_workspace

ENV = """\
name: {name}
nodes:
  - {{name: n1, host: 10.250.0.201, labels: {{role: web}}}}
  - {{name: n2, host: 10.250.0.202, labels: {{role: web}}}}
  - {{name: n3, host: 10.250.0.203, labels: {{role: db}}}}
"""


def workspace(tmp_path: Path, compose: str, env: str = "dev", files: dict | None = None, environ=None):
    (tmp_path / "compose.yaml").write_text(textwrap.dedent(compose))
    envs = tmp_path / "environments"
    envs.mkdir(exist_ok=True)
    (envs / f"{env}.yaml").write_text(ENV.format(name=env))
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    return load_workspace(ProjectOptions(files=[tmp_path / "compose.yaml"], env_name=env),
                          environ=environ if environ is not None else {})


def blueprint(tmp_path, compose, **kw):
    ws = workspace(tmp_path, compose, **kw)
    return ws, compile_blueprint(ws.project, ws.environment, sources=local_sources())


def units_for(ws, bp, existing=()):
    slots = bp.place(node_infos(ws.environment), existing)
    return bp.units(slots, [n.name for n in ws.environment.nodes])


SHOP = """\
name: shop
services:
  db:
    image: busybox
    command: ["httpd", "-f", "-p", "5432"]
    volumes: [data:/data]
    ports: ["5432:5432"]
    healthcheck: {test: ["CMD", "true"], interval: 1s, retries: 3}
    deploy:
      placement: {constraints: ["node.labels.role == db"]}
  migrate:
    image: busybox
    command: echo migrated
    restart: "no"
    depends_on: {db: {condition: service_healthy}}
  api:
    image: busybox
    environment: {A: "1", EMPTY: ""}
    env_file: [api.env]
    ports: ["8081:8081"]
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
    healthcheck: {test: "wget -q -O /dev/null http://127.0.0.1:8081/", interval: 1s}
  web:
    image: busybox
    ports: ["8080:80"]
    depends_on: {api: {condition: service_healthy}}
    deploy: {replicas: 2, placement: {constraints: ["node.labels.role == web"]}}
volumes:
  data: {}
"""


def test_every_service_becomes_a_valid_agent_spec_with_its_hash(tmp_path):
    ws, bp = blueprint(tmp_path, SHOP, files={"api.env": "FROM_FILE=yes\nA=overridden-by-environment\n"})
    assert bp.waves == [["db"], ["migrate"], ["api"], ["web"]]
    units, _ = units_for(ws, bp)
    assert sorted(units) == [("api", "n1"), ("db", "n3"), ("migrate", "n1"), ("web", "n1"), ("web", "n2")]
    for unit in units.values():
        spec = ServiceSpec.from_dict(unit.spec)  # the agent accepts it as is
        assert spec.config_hash == config_hash(unit.spec["container"]) == unit.config_hash
        assert spec.project == "shop" and spec.env == "dev"
        assert set(unit.spec["config_parts"]) >= {"environment", "image", "command"}
    api = units[("api", "n1")].spec["container"]
    assert api["environment"] == {"A": "1", "EMPTY": "", "FROM_FILE": "yes"}  # env_file merged, environment wins
    assert api["healthcheck"]["test"][0] == "CMD-SHELL"
    assert units[("web", "n1")].replicas == (1,) and units[("web", "n2")].replicas == (2,)


def test_the_release_id_goes_into_every_spec_as_the_units_are_built(tmp_path):
    ws, bp = blueprint(tmp_path, SHOP, files={"api.env": ""})
    slots = bp.place(node_infos(ws.environment))
    order = [n.name for n in ws.environment.nodes]
    released, _ = bp.units(slots, order, release="7")
    dry, _ = bp.units(slots, order)  # a dry run numbers no release
    assert released.keys() == dry.keys()
    assert {u.spec["release"] for u in released.values()} == {"7"}
    assert {u.spec["release"] for u in dry.values()} == {""}
    for key, unit in released.items():  # the id labels the containers; it recreates nothing
        assert ServiceSpec.from_dict(unit.spec).release == "7"
        assert unit.config_hash == dry[key].config_hash and unit.spec["config_parts"] == dry[key].spec["config_parts"]


def test_readiness_is_the_strongest_condition_any_dependent_asks(tmp_path):
    _, bp = blueprint(tmp_path, SHOP, files={"api.env": ""})
    assert {n: s.wait for n, s in bp.services.items()} == {
        "db": "healthy", "migrate": "completed", "api": "healthy", "web": "running"}


def mesh_units(ws, bp, observed=None):
    from orchestrator.app.mesh import layout

    lay = layout(ws.environment, ws.project.name, bp, observed or {})
    slots = bp.place(node_infos(ws.environment), ())
    return lay, bp.units(slots, [n.name for n in ws.environment.nodes], mesh=lay)


def test_with_the_mesh_every_network_gets_a_subnet_per_node_and_names_resolve_there(tmp_path):
    ws, bp = blueprint(tmp_path, SHOP, files={"api.env": ""})
    lay, (units, warnings) = mesh_units(ws, bp)
    assert lay.node_slots == {"n1": 0, "n2": 1, "n3": 2}
    k = lay.net_slots["default"]
    n1, n3 = units[("api", "n1")].spec, units[("db", "n3")].spec
    assert n1["networks"]["default"]["subnet"] == f"10.208.{k}.0/24"
    assert n1["networks"]["default"]["mesh_slot"] == k
    assert n3["networks"]["default"]["subnet"] == f"10.208.{64 + k}.0/24"
    assert n1["container"]["dns"] == ["10.208.0.1"] and n3["container"]["dns"] == ["10.208.64.1"]
    assert n1["container"]["dns_search"] == [f"n{k}.orch.internal"]
    # no cross-node extra_hosts any more: db on n3 is reached through the mesh by its name
    assert n1["container"].get("extra_hosts", []) == []
    assert units[("api", "n1")].cross_node == (("db", ("n3",)),)
    assert not warnings
    ServiceSpec.from_dict(n1)  # the agent accepts it


def test_without_the_mesh_a_dependency_on_another_node_is_a_warning(tmp_path):
    ws, bp = blueprint(tmp_path, SHOP, files={"api.env": ""})
    _, warnings = units_for(ws, bp)
    assert any("api on n1 depends on db, which runs only on n3, and the environment's mesh is off" in w
               for w in warnings)


def test_a_user_extra_host_is_kept(tmp_path):
    ws, bp = blueprint(tmp_path, """\
        services:
          db:
            image: busybox
            deploy: {placement: {constraints: ["node.labels.role == db"]}}
          app:
            image: busybox
            extra_hosts: ["db=10.250.0.99", "other:10.250.0.98"]
            depends_on: [db]
    """)
    units, _ = units_for(ws, bp)
    assert units[("app", "n1")].spec["container"]["extra_hosts"] == ["db:10.250.0.99", "other:10.250.0.98"]


def test_placement_is_per_service_and_stable(tmp_path):
    ws, bp = blueprint(tmp_path, """\
        services:
          a: {image: busybox}
          b: {image: busybox}
          web: {image: busybox, deploy: {replicas: 3}}
    """)
    slots = bp.place(node_infos(ws.environment))
    # without replicas a service runs on the first eligible node, whatever else runs there
    assert [s.node for s in slots["a"]] == ["n1"] and [s.node for s in slots["b"]] == ["n1"]
    assert [s.node for s in slots["web"]] == ["n1", "n2", "n3"]
    again = bp.place(node_infos(ws.environment), [Slot("web", 1, "n3"), Slot("web", 2, "n1"), Slot("a", 1, "n2")])
    assert [s.node for s in again["web"]] == ["n3", "n1", "n2"]
    assert [s.node for s in again["a"]] == ["n2"]


def test_networks_volumes_secrets_configs_and_resources(tmp_path):
    ws, bp = blueprint(tmp_path, """\
        name: shop
        services:
          api:
            image: busybox
            command: ["sleep", "1000"]
            entrypoint: ["/bin/sh", "-c"]
            user: "1000"
            working_dir: /srv
            cap_add: [NET_ADMIN]
            init: true
            stop_grace_period: 3s
            labels: {tier: back}
            restart: on-failure:3
            networks:
              front: {aliases: [backend]}
              back: {}
            volumes: ["data:/data:ro", "/var/log/app:/logs", {type: tmpfs, target: /tmp}]
            tmpfs: [/run/cache]
            secrets: [db_password, {source: api_key, target: key.txt, mode: 0440}]
            configs: [{source: app_conf, target: /etc/app.conf}]
            deploy:
              resources:
                limits: {cpus: "0.5", memory: 64M, pids: 100}
                reservations: {memory: 32M}
            shm_size: 1m
        networks:
          front: {}
          back: {name: custom-back}
        volumes:
          data: {}
        secrets:
          db_password: {file: ./db_password.txt}
          api_key: {environment: API_KEY}
        configs:
          app_conf: {content: "listen 80\\n"}
    """, files={"db_password.txt": "s3cret\n"}, environ={"API_KEY": "k-123"})
    units, _ = units_for(ws, bp)
    spec = units[("api", "n1")].spec
    ServiceSpec.from_dict(spec)
    c = spec["container"]
    assert c["command"] == ["sleep", "1000"] and c["entrypoint"] == ["/bin/sh", "-c"]
    assert c["user"] == "1000" and c["working_dir"] == "/srv" and c["cap_add"] == ["NET_ADMIN"]
    assert c["init"] is True and c["stop_grace_period"] == 3.0 and c["restart"] == "on-failure:3"
    assert c["labels"] == {"tier": "back"}
    assert c["networks"] == [{"name": "back", "aliases": []}, {"name": "front", "aliases": ["backend"]}]
    assert spec["networks"] == {"back": {"name": "custom-back", "driver": "bridge"}, "front": {"driver": "bridge"}}
    assert c["volumes"] == [
        {"type": "volume", "target": "/data", "read_only": True, "source": "data"},
        {"type": "bind", "source": "/var/log/app", "target": "/logs", "read_only": False},
        {"type": "tmpfs", "target": "/tmp"},
        {"type": "tmpfs", "target": "/run/cache"},
    ]
    assert spec["volumes"] == {"data": {}}
    secrets = {s["name"]: s for s in c["secrets"]}
    assert base64.b64decode(secrets["db_password"]["content"]) == b"s3cret\n"
    assert secrets["db_password"]["mode"] == 0o400 and secrets["db_password"]["target"] == "/run/secrets/db_password"
    assert base64.b64decode(secrets["api_key"]["content"]) == b"k-123"
    assert secrets["api_key"]["target"] == "/run/secrets/key.txt" and secrets["api_key"]["mode"] == 0o440
    assert c["configs"] == [{"name": "app_conf", "target": "/etc/app.conf",
                             "content": base64.b64encode(b"listen 80\n").decode(), "mode": 0o444}]
    assert c["resources"] == {"cpus": 0.5, "memory": 64 * 1024 * 1024, "pids_limit": 100,
                              "memory_reservation": 32 * 1024 * 1024, "shm_size": 1024 * 1024}


def test_changing_a_secret_changes_the_hash(tmp_path):
    compose = """\
        services:
          api: {image: busybox, secrets: [pw]}
        secrets:
          pw: {file: ./pw.txt}
    """
    ws, bp = blueprint(tmp_path, compose, files={"pw.txt": "one"})
    first = units_for(ws, bp)[0][("api", "n1")].config_hash
    ws, bp = blueprint(tmp_path, compose, files={"pw.txt": "two"})
    assert units_for(ws, bp)[0][("api", "n1")].config_hash != first


def test_deploy_restart_policy_maps_to_the_engine_policy(tmp_path):
    _, bp = blueprint(tmp_path, """\
        services:
          a: {image: busybox, deploy: {restart_policy: {condition: on-failure, max_attempts: 2}}}
          b: {image: busybox, deploy: {restart_policy: {condition: none}}}
          c: {image: busybox, deploy: {restart_policy: {condition: any}}}
          d: {image: busybox}
          e: {image: busybox, restart: unless-stopped, deploy: {restart_policy: {condition: none}}}
    """)
    assert {n: s.restart for n, s in bp.services.items()} == {
        "a": "on-failure:2", "b": "no", "c": "always", "d": "no", "e": "unless-stopped"}


def test_refused_keys_are_bad_input_naming_file_line_and_key(tmp_path):
    with pytest.raises(InputError) as err:
        blueprint(tmp_path, """\
            services:
              a:
                image: busybox
                network_mode: host
              b:
                image: busybox
                privileged: true
                security_opt: ["no-new-privileges"]
              c:
                build: ./c
        """)
    text = err.value.render()
    assert "network_mode: host is not supported" in text and "services.a.network_mode" in text
    assert "compose.yaml:4" in text
    assert "privileged: true is not supported" in text
    assert "security_opt is not supported" in text
    assert "service c has no image:" in text


def test_ignored_keys_warn_once_per_key(tmp_path):
    _, bp = blueprint(tmp_path, """\
        services:
          a: {image: busybox, container_name: x, dns: [1.1.1.1], logging: {driver: syslog}}
          b: {image: busybox, dns: [1.1.1.1], deploy: {update_config: {parallelism: 1}}}
    """)
    assert "ignored dns (services: a, b): the node engine's DNS settings are used" in bp.warnings
    assert any(w.startswith("ignored container_name (services: a)") for w in bp.warnings)
    assert any(w.startswith("ignored logging (services: a)") for w in bp.warnings)
    assert not any("update_config" in w for w in bp.warnings)  # read since rolling updates


def test_bind_mount_of_a_project_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="cannot work on remote nodes"):
        blueprint(tmp_path, """\
            services:
              a: {image: busybox, volumes: ["./conf:/etc/conf"]}
        """)


def test_one_shot_that_restarts_cannot_be_waited_for(tmp_path):
    with pytest.raises(InputError, match="must complete .* restart: always"):
        blueprint(tmp_path, """\
            services:
              job: {image: busybox, restart: always}
              app:
                image: busybox
                depends_on: {job: {condition: service_completed_successfully}}
        """)


def test_healthy_condition_without_healthcheck_warns(tmp_path):
    _, bp = blueprint(tmp_path, """\
        services:
          db: {image: busybox}
          app: {image: busybox, depends_on: {db: {condition: service_healthy}}}
    """)
    assert any(w.startswith("db: a dependent waits for it to be healthy") for w in bp.warnings)


def test_port_clash_on_one_node_is_bad_input_before_connecting(tmp_path):
    with pytest.raises(InputError, match="publishes host port 8080/tcp but 2 of its replicas are placed on node n3"):
        blueprint(tmp_path, """\
            services:
              web:
                image: busybox
                ports: ["8080:80"]
                deploy: {replicas: 2, placement: {constraints: ["node.labels.role == db"]}}
        """)
    with pytest.raises(InputError, match="services a and b both publish host port 80/tcp on node n1"):
        blueprint(tmp_path, """\
            services:
              a: {image: busybox, ports: ["80:80"]}
              b: {image: busybox, ports: ["80:81"]}
        """)


def test_unsatisfiable_constraint_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="no node satisfies the placement constraints of service a"):
        blueprint(tmp_path, """\
            services:
              a: {image: busybox, deploy: {placement: {constraints: ["node.labels.role == gpu"]}}}
        """)


def test_selected_services_bring_their_dependencies(tmp_path):
    ws = workspace(tmp_path, SHOP, files={"api.env": ""})
    bp = compile_blueprint(ws.project, ws.environment, ["api"], sources=local_sources())
    assert bp.waves == [["db"], ["migrate"], ["api"]]
    assert bp.project_services == {"db", "migrate", "api", "web"}


def test_images_override_pins_a_reference(tmp_path):
    ws = workspace(tmp_path, SHOP, files={"api.env": ""})
    digest = "10.250.0.1:5000/shop/api@sha256:" + "a" * 64
    bp = compile_blueprint(ws.project, ws.environment, images={"api": digest}, sources=local_sources())
    assert bp.services["api"].container["image"] == digest


def test_reserved_labels_are_refused(tmp_path):
    with pytest.raises(InputError, match="io.orch. prefix"):
        blueprint(tmp_path, """\
            services:
              a: {image: busybox, labels: {io.orch.project: x}}
        """)


def test_docs_name_every_refused_and_ignored_key():
    from orchestrator.core.specs import IGNORED, REFUSED

    doc = (Path(__file__).resolve().parents[2] / "docs" / "compose-support.md").read_text()
    assert REFUSED and IGNORED
    missing = [k for k in list(REFUSED) + list(IGNORED) if f"`{k}`" not in doc]
    assert missing == []


def test_a_service_to_build_without_its_built_image_says_what_orch_up_does(tmp_path):
    """compile_blueprint gets the built images from the build step (orch up builds services
    with build: and pins them); without one, the message must not send the user to `orch build`."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "Dockerfile").write_text("FROM busybox\n")
    ws = workspace(tmp_path, """\
        services:
          web: {build: ./app}
        """)
    with pytest.raises(InputError) as err:
        compile_blueprint(ws.project, ws.environment, sources=local_sources())
    [p] = err.value.problems
    assert p.key == "services.web.image" and "orch build" not in p.render()
    assert "has build:, but no image was built" in p.message and "orch up --env dev" in p.fix
    # with the image the build step made, it compiles
    compile_blueprint(ws.project, ws.environment, images={"web": "10.250.0.1:5000/x/web@sha256:" + "a" * 64},
                      sources=local_sources())


def test_x_orch_keys_are_warned_about_once_per_service(tmp_path):
    ws, bp = blueprint(tmp_path, """\
        x-orch: {ingress: true}
        x-other: {kept: yes}
        services:
          web:
            image: busybox
            ports: ["8080:80"]
            x-orch:
              ingress: {port: 8080}
              colour: blue
              min_healthy_tme: 5s
          db:
            image: busybox
            x-notes: {ok: true}
        """)
    x_orch = [w for w in bp.warnings if "x-orch" in w]
    assert x_orch == [
        "x-orch at the top level is not read by orch (x-orch settings belong in a service); it is ignored",
        "web: x-orch.colour is not a setting orch knows; it is ignored",
        "web: x-orch.min_healthy_tme is not a setting orch knows (did you mean x-orch.min_healthy_time?); it is ignored",
    ]
    assert not [w for w in bp.warnings if "db:" in w or "x-other" in w or "x-notes" in w]
    # the extensions themselves are kept as they are
    assert ws.project.services["web"].extensions["x-orch"] == {"ingress": {"port": 8080}, "colour": "blue",
                                                               "min_healthy_tme": "5s"}
    assert ws.project.extensions["x-other"] == {"kept": "yes"}


def test_ingress_port_is_owned_by_the_ingress_not_the_containers(tmp_path):
    _, bp = blueprint(tmp_path, """\
        services:
          web:
            image: busybox
            ports: ["8080:80", "9090:90"]
            deploy: {replicas: 3}
            x-orch: {ingress: {port: 8080, health: {path: /healthz, interval: 1s, rise: 3}}}
        """)
    web = bp.services["web"]
    assert [p.get("published") for p in web.container["ports"]] == [9090]  # 8080 is HAProxy's
    assert web.ingress.published == 8080 and web.ingress.target == 80
    assert web.ingress.agent_args()["health"] == {"path": "/healthz", "interval": 1.0, "rise": 3}
    assert web.policy.order == "start-first"  # the default behind the ingress
    assert web.policy.failure_action == "rollback" and web.policy.parallelism == 1


def test_update_config_and_health_gate_are_read(tmp_path):
    _, bp = blueprint(tmp_path, """\
        services:
          api:
            image: busybox
            deploy:
              replicas: 4
              update_config: {parallelism: 2, delay: 2s, order: start-first, failure_action: pause,
                              monitor: 10s, max_failure_ratio: 0.25}
            x-orch: {min_healthy_time: 3s, healthy_deadline: 1m}
          plain:
            image: busybox
        """)
    p = bp.services["api"].policy
    assert (p.parallelism, p.delay, p.order, p.failure_action, p.monitor, p.max_failure_ratio) == (
        2, 2.0, "start-first", "pause", 10.0, 0.25)
    assert (p.min_healthy_time, p.healthy_deadline) == (3.0, 60.0)
    q = bp.services["plain"].policy
    assert (q.parallelism, q.order, q.failure_action, q.monitor) == (1, "stop-first", "rollback", 0.0)  # Swarm: 5s
    assert q.min_healthy_time is None


def test_readiness_unset_waits_1s_for_a_container_without_healthcheck_and_0s_counts_it_once_running():
    from orchestrator.core.rollout import UpdatePolicy, readiness

    assert readiness(UpdatePolicy()) == (1.0, 0.0)  # unset: a crash at start fails the batch
    assert readiness(UpdatePolicy(min_healthy_time=0.0)) == (0.0, 0.0)  # docker compose up --wait
    assert readiness(UpdatePolicy(min_healthy_time=3.0)) == (0.0, 3.0)  # Nomad's: every new one holds 3s


@pytest.mark.parametrize("x_orch, expected", [
    ("{ingress: {port: 9000}}", "x-orch.ingress.port 9000 is not a published TCP port of the service"),
    ("{ingress: {port: 8080, protocol: tcp}}", "x-orch.ingress.protocol 'tcp' is not supported"),
    ("{ingress: {port: 8080, health: healthz}}", "must start with / and contain no spaces"),
    ("{ingress: {port: 8080, health: {path: /, rise: 0}}}", "rise 0 must be a whole number from 1 to 100"),
    ("{ingress: {prot: 8080}}", "x-orch.ingress has no setting 'prot'"),
    ("{ingress: {port: 8080, health: {interval: 10ms}}}", "x-orch.ingress.health.interval must be"),
    ("{min_healthy_time: soon}", "x-orch.min_healthy_time 'soon' is not a duration"),
])
def test_bad_x_orch_settings_are_bad_input_with_location(tmp_path, x_orch, expected):
    from orchestrator.errors import InputError

    with pytest.raises(InputError) as info:
        blueprint(tmp_path, f"""\
            services:
              web:
                image: busybox
                ports: ["8080:80"]
                x-orch: {x_orch}
            """)
    text = info.value.render()
    assert expected in text and "compose.yaml:5:" in text and "services.web.x-orch" in text
    assert info.value.exit_code == 2


def test_start_first_with_host_ports_warns_it_is_stop_first(tmp_path):
    _, bp = blueprint(tmp_path, """\
        services:
          web:
            image: busybox
            ports: ["8080:80"]
            deploy: {update_config: {order: start-first}}
        """)
    assert any("web: update_config.order is start-first, but its replicas publish host ports (8080)" in w
               for w in bp.warnings)
