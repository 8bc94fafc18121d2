"""Several Compose files merged by Compose's rules (and overlays, by the same rules)."""

from __future__ import annotations

import textwrap

import pytest

from orchestrator.core.compose import LoadOptions, Overlay, load_project
from orchestrator.errors import InputError
from orchestrator.core.yamlsrc import parse_yaml


def load(tmp_path, *texts, **kw):
    files = []
    for i, text in enumerate(texts):
        f = tmp_path / ("compose.yaml" if i == 0 else f"override{i}.yaml")
        f.write_text(textwrap.dedent(text))
        files.append(f)
    kw.setdefault("environ", {})
    return load_project(LoadOptions(files=files, working_dir=tmp_path, **kw))


BASE = """
services:
  web:
    image: nginx:1.25
    command: ["nginx", "-g", "daemon off;"]
    entrypoint: /docker-entrypoint.sh
    environment:
      A: "1"
      B: "2"
    labels: ["tier=front", "team=web"]
    ports: ["80:80", "443:443"]
    volumes: ["./html:/usr/share/nginx/html", "cache:/cache"]
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost"]
      interval: 10s
      retries: 3
    depends_on: [db]
    networks: [front]
    secrets: [cert]
    dns: [1.1.1.1]
    build:
      context: ./web
      args: {VERSION: "1", MODE: dev}
    logging:
      driver: json-file
      options: {max-size: 10m}
    deploy:
      resources:
        limits: {memory: 256M, cpus: "0.5"}
  db:
    image: postgres
networks:
  front: {}
  back: {}
volumes:
  cache: {}
secrets:
  cert: {file: ./cert.pem}
  key: {file: ./key.pem}
"""


def test_scalars_replace_and_mappings_merge(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            image: nginx:1.27
            healthcheck: {interval: 30s}
            deploy: {resources: {limits: {memory: 512M}}}
    """)
    web = p.services["web"]
    assert web.image == "nginx:1.27"
    assert web.healthcheck.interval == 30.0 and web.healthcheck.retries == 3
    assert web.deploy.resources["limits"].memory == 512 * 1024**2
    assert web.deploy.resources["limits"].cpus == 0.5


def test_command_entrypoint_and_healthcheck_test_replace(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            command: ["echo", "hi"]
            entrypoint: ["/bin/sh", "-c"]
            healthcheck: {test: ["CMD", "true"]}
    """)
    web = p.services["web"]
    assert web.command == ["echo", "hi"]
    assert web.entrypoint == ["/bin/sh", "-c"]
    assert web.healthcheck.test == ["CMD", "true"]


def test_sequences_append(tmp_path):
    p = load(tmp_path, BASE, "services: {web: {dns: [8.8.8.8], cap_add: [NET_ADMIN]}}")
    assert p.services["web"].other["dns"] == ["1.1.1.1", "8.8.8.8"]
    assert p.services["web"].cap_add == ["NET_ADMIN"]


def test_environment_labels_and_build_args_merge_by_key(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            environment: ["B=two", "C=3"]
            labels: {team: platform, extra: "yes"}
            build: {args: ["MODE=prod", "NEW=1"]}
    """)
    web = p.services["web"]
    assert web.environment == {"A": "1", "B": "two", "C": "3"}
    assert web.labels == {"tier": "front", "team": "platform", "extra": "yes"}
    assert web.build.args == {"VERSION": "1", "MODE": "prod", "NEW": "1"}


def test_ports_dedupe_by_ip_published_target_protocol(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            ports: ["443:443", "8080:80", "127.0.0.1:9000:9000", "443:443/udp"]
    """)
    got = [(x.host_ip, x.published, x.target, x.protocol) for x in p.services["web"].ports]
    assert got == [
        (None, "80", 80, "tcp"), (None, "443", 443, "tcp"), (None, "8080", 80, "tcp"),
        ("127.0.0.1", "9000", 9000, "tcp"), (None, "443", 443, "udp"),
    ]


def test_volumes_secrets_configs_dedupe_by_target(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            volumes: ["./other:/usr/share/nginx/html:ro", "logs:/logs"]
            secrets: [{source: key, target: cert}]
        volumes: {logs: {}}
    """)
    vols = [(v.source, v.target, v.read_only) for v in p.services["web"].volumes]
    assert vols == [(str(tmp_path / "other"), "/usr/share/nginx/html", True),
                    ("cache", "/cache", False), ("logs", "/logs", False)]
    assert [(s.source, s.target) for s in p.services["web"].secrets] == [("key", "/run/secrets/cert")]


def test_depends_on_and_networks_merge_as_maps(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            depends_on:
              db: {condition: service_healthy}
              cache: {condition: service_started}
            networks:
              back: {aliases: [www]}
          cache: {image: redis}
          db:
            healthcheck: {test: ["CMD", "true"]}
    """)
    web = p.services["web"]
    assert {k: v.condition for k, v in web.depends_on.items()} == {
        "db": "service_healthy", "cache": "service_started"}
    assert list(web.networks) == ["front", "back"]
    assert web.networks["back"].aliases == ["www"]


def test_build_string_merges_with_mapping(tmp_path):
    p = load(tmp_path, BASE, "services: {web: {build: ./web2}}")
    b = p.services["web"].build
    assert b.context == str(tmp_path / "web2") and b.args == {"VERSION": "1", "MODE": "dev"}


def test_logging_replaced_when_driver_differs(tmp_path):
    p = load(tmp_path, BASE, "services: {web: {logging: {driver: syslog, options: {tag: web}}}}")
    assert p.services["web"].logging.driver == "syslog"
    assert p.services["web"].logging.options == {"tag": "web"}
    p = load(tmp_path, BASE, "services: {web: {logging: {options: {max-file: '3'}}}}")
    assert p.services["web"].logging.options == {"max-size": "10m", "max-file": "3"}


def test_reset_tag_removes_a_key(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            ports: !reset []
            healthcheck: !reset null
            environment:
              A: !reset null
    """)
    web = p.services["web"]
    assert web.ports == [] and web.healthcheck is None
    assert web.environment == {"B": "2"}


def test_override_tag_replaces_instead_of_merging(tmp_path):
    p = load(tmp_path, BASE, """
        services:
          web:
            ports: !override ["8443:443"]
            environment: !override {ONLY: "me"}
    """)
    web = p.services["web"]
    assert [(x.published, x.target) for x in web.ports] == [("8443", 443)]
    assert web.environment == {"ONLY": "me"}


def test_reset_in_a_single_file_just_drops_the_key(tmp_path):
    p = load(tmp_path, "services: {web: {image: nginx, ports: !reset ['80:80']}}")
    assert p.services["web"].ports == []


def test_x_keys_are_replaced(tmp_path):
    p = load(tmp_path, "x-a: {b: 1, c: 2}\nservices: {web: {image: nginx}}\n", "x-a: {d: 3}\n")
    assert p.extensions == {"x-a": {"d": 3}}


def test_a_services_x_orch_merges_its_mappings_and_replaces_its_lists(tmp_path):
    """An environment's overlay (or an override file) changes x-orch.ingress.hosts and keeps
    tls and target; other x- keys of a service are still replaced whole, as in Compose."""
    p = load(tmp_path,
             "services: {web: {image: nginx, x-orch: {ingress: {hosts: [a.example.com, b.example.com], tls: auto,"
             " target: 80}, min_healthy_time: 2s}, x-other: {k: 1, j: 2}}}\n",
             "services: {web: {x-orch: {ingress: {hosts: [c.example.com], hsts: true}}, x-other: {k: 3}}}\n")
    web = p.services["web"].extensions
    assert web["x-orch"] == {"ingress": {"hosts": ["c.example.com"], "tls": "auto", "target": 80, "hsts": True},
                             "min_healthy_time": "2s"}
    assert web["x-other"] == {"k": 3}
    p = load(tmp_path, "services: {web: {image: nginx, x-orch: {ingress: {hosts: [a.example.com], tls: auto}}}}\n",
             "services: {web: {x-orch: !override {ingress: {hosts: [c.example.com]}}}}\n")
    assert p.services["web"].extensions["x-orch"] == {"ingress": {"hosts": ["c.example.com"]}}


def test_relative_paths_resolve_against_the_first_files_folder(tmp_path):
    (tmp_path / "deploy").mkdir()
    base = tmp_path / "compose.yaml"
    base.write_text("services: {web: {image: nginx, volumes: ['./a:/a']}}\n")
    other = tmp_path / "deploy" / "extra.yaml"
    other.write_text("services: {web: {volumes: ['./b:/b'], build: ./ctx}}\n")
    p = load_project(LoadOptions(files=[base, other], working_dir=tmp_path, environ={}))
    web = p.services["web"]
    assert [v.source for v in web.volumes] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert web.build.context == str(tmp_path / "ctx")


def test_later_file_locations_are_kept(tmp_path):
    p = load(tmp_path, BASE, "services:\n  web:\n    image: nginx:2\n")
    assert p.locate("services.web.image").file == "override1.yaml"
    assert p.locate("services.web.command").file == "compose.yaml"
    assert p.services["web"].loc.file == "compose.yaml"


def test_type_conflict_across_files_is_reported_at_the_override(tmp_path):
    with pytest.raises(InputError) as info:
        load(tmp_path, BASE, "services:\n  web:\n    ports: '8080:80'\n")
    (p,) = info.value.problems
    assert (p.file, p.line, p.key) == ("override1.yaml", 3, "services.web.ports")
    assert "expected a list" in p.message


def test_overlay_is_merged_last_with_its_own_file_name(tmp_path):
    overlay = parse_yaml("services:\n  web:\n    image: nginx:${TAG:-9}\n    deploy:\n      replicas: lots\n",
                         "environments/prod.yaml")
    with pytest.raises(InputError) as info:
        load(tmp_path, BASE, overlays=[Overlay(data=overlay, file="environments/prod.yaml",
                                               interpolate=True)])
    (p,) = info.value.problems
    assert (p.file, p.line, p.key) == ("environments/prod.yaml", 5, "services.web.deploy.replicas")
    overlay = parse_yaml("services:\n  web:\n    image: nginx:${TAG:-9}\n    environment: {A: x}\n", "prod.yaml")
    p = load(tmp_path, BASE, overlays=[Overlay(data=overlay, file="prod.yaml", interpolate=True)])
    assert p.services["web"].image == "nginx:9"
    assert p.services["web"].environment["A"] == "x"
    assert p.locate("services.web.image").file == "prod.yaml"
    # the overlay object itself is not modified
    assert overlay["services"]["web"]["image"] == "nginx:${TAG:-9}"


def test_overlay_is_not_interpolated_by_default(tmp_path):
    overlay = parse_yaml("services: {web: {environment: {PASS: 'a$b${c'}}}\n", "o.yaml")
    p = load(tmp_path, BASE, overlays=[Overlay(data=overlay, file="o.yaml")])
    assert p.services["web"].environment["PASS"] == "a$b${c"


def test_overlay_paths_resolve_against_the_project_dir(tmp_path):
    overlay = parse_yaml("services: {web: {volumes: ['./prod-html:/usr/share/nginx/html']}}\n", "o.yaml")
    p = load(tmp_path, BASE, overlays=[Overlay(data=overlay, file="o.yaml")])
    assert p.services["web"].volumes[0].source == str(tmp_path / "prod-html")


def test_null_override_keeps_the_base_value(tmp_path):
    p = load(tmp_path, BASE, "services:\n  web:\n    networks:\n    environment:\n    image: nginx:2\n")
    web = p.services["web"]
    assert list(web.networks) == ["front"] and web.environment == {"A": "1", "B": "2"}
    assert web.image == "nginx:2"
