"""Commands and configuration files the lab builds, as plain data (no root, no Docker)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import yaml

from orchestrator.lab import dockerd, images, netns, nodes, packages, pki, registry, sshd, state
from orchestrator.lab.model import build_spec

SPEC = build_spec("orch-lab", "10.250.0.0/24", "dev=1,test=1,prod=2")
DEV = SPEC.node("dev-1")
CREDS = registry.Credentials("orch", "s3cret", "abc123")


def test_node_network_commands():
    argvs = netns.node_net_argvs(SPEC, DEV)
    assert argvs[0] == ["ip", "netns", "add", "orch-lab.dev-1"]
    assert argvs[1] == ["ip", "link", "add", "orchlab0-11", "type", "veth", "peer", "name", "eth0", "netns", "orch-lab.dev-1"]
    assert argvs[2] == ["ip", "link", "set", "orchlab0-11", "master", "orchlab0", "up"]
    # inside the namespace via nsenter (ip netns exec would remount /sys)
    assert all(a[:3] == ["nsenter", "--net=/run/netns/orch-lab.dev-1", "--"] for a in argvs[3:])
    assert argvs[4][3:] == ["ip", "link", "set", "eth0", "address", "02:6c:0a:fa:00:0b"]  # fixed, from the address
    assert argvs[5][3:] == ["ip", "addr", "add", "10.250.0.11/24", "dev", "eth0"]
    assert argvs[-1][3:] == ["ip", "route", "add", "default", "via", "10.250.0.1"]


def test_bridge_commands():
    assert netns.bridge_argvs(SPEC) == [
        ["ip", "link", "add", "orchlab0", "type", "bridge"],
        ["ip", "addr", "replace", "10.250.0.1/24", "dev", "orchlab0"],
        ["ip", "link", "set", "orchlab0", "up"],
    ]


def test_iptables_rules_are_tagged_with_the_lab():
    rules = netns.iptables_rules(SPEC)
    assert ("nat", "POSTROUTING") in [(t, c) for t, c, _ in rules]
    for table, chain, rule in rules:
        assert "orch-lab:orch-lab" in rule
        assert netns.iptables_check_argv(table, chain, rule)[:6] == ["iptables", "-w", "-t", table, "-C", chain]
        assert netns.iptables_insert_argv(table, chain, rule)[4:7] == ["-I", chain, "1"]


def test_tagged_rules_picks_exactly_this_labs_rules():
    save = "\n".join(
        [
            "-P FORWARD DROP",
            '-A FORWARD -i orchlab0 -m comment --comment orch-lab:orch-lab -j ACCEPT',
            '-A FORWARD -i orchlabab12c -m comment --comment orch-lab:orch-lab-e2e -j ACCEPT',
            "-A FORWARD -j DOCKER-USER",
        ]
    )
    assert netns.tagged_rules(save, "orch-lab:orch-lab") == [
        ["FORWARD", "-i", "orchlab0", "-m", "comment", "--comment", "orch-lab:orch-lab", "-j", "ACCEPT"]
    ]


def test_route_conflicts_ignore_the_labs_own_bridge():
    routes = [
        {"dst": "default", "gateway": "192.0.2.1", "dev": "eth0"},
        {"dst": "10.250.0.0/24", "dev": "orchlab0"},
        {"dst": "10.250.0.0/16", "dev": "wg0"},
        {"dst": "172.17.0.0/16", "dev": "docker0"},
    ]
    assert netns.route_conflicts(routes, "10.250.0.0/24", {"orchlab0"}) == ["10.250.0.0/16 dev wg0"]
    assert netns.route_conflicts(routes[:2], "10.250.0.0/24", {"orchlab0"}) == []


def test_daemon_json_isolates_each_node_engine():
    cfg = json.loads(dockerd.render_daemon_json(SPEC, DEV))
    assert cfg["data-root"] == "/var/lib/orch-lab/nodes/dev-1/docker"
    assert cfg["exec-root"] == "/run/orch-lab/dev-1/exec"
    assert cfg["hosts"] == ["unix:///run/orch-lab/dev-1/docker.sock"]
    assert cfg["pidfile"] == "/run/orch-lab/dev-1/docker.pid"
    assert cfg["bip"] == DEV.bip
    assert cfg["registry-mirrors"] == ["https://10.250.0.1:5001"]
    assert cfg["cgroup-parent"] == "/orch-lab/dev-1"
    assert cfg["deprecated-key-path"] == "/var/lib/orch-lab/nodes/dev-1/key.json"  # own engine ID
    others = [json.loads(dockerd.render_daemon_json(SPEC, n)) for n in SPEC.nodes if n is not DEV]
    for key in ("data-root", "exec-root", "hosts", "pidfile", "bip", "containerd-namespace", "deprecated-key-path"):
        assert all(o[key] != cfg[key] for o in others), key


def test_dockerd_runs_in_the_nodes_namespaces():
    assert dockerd.dockerd_argv(SPEC, DEV) == [
        "nsenter",
        "--net=/run/netns/orch-lab.dev-1",
        "--uts=/run/orch-lab/ns/dev-1.uts",
        "--",
        "dockerd",
        "--config-file",
        "/var/lib/orch-lab/nodes/dev-1/daemon.json",
    ]


def test_sshd_config_points_sessions_at_the_node_engine():
    text = sshd.render_config(SPEC, DEV)
    lines = set(text.splitlines())
    assert "ListenAddress 10.250.0.11:22" in lines
    assert "HostKey /var/lib/orch-lab/nodes/dev-1/ssh_host_ed25519_key" in lines
    assert "AuthorizedKeysFile /var/lib/orch-lab/authorized_keys" in lines
    assert "PasswordAuthentication no" in lines
    assert "SetEnv DOCKER_HOST=unix:///run/orch-lab/dev-1/docker.sock ORCH_LAB_NODE=dev-1" in lines
    assert "Subsystem sftp internal-sftp" in lines
    argv = sshd.sshd_argv(SPEC, DEV)
    assert argv[:4] == ["nsenter", "--net=/run/netns/orch-lab.dev-1", "--uts=/run/orch-lab/ns/dev-1.uts", "--"]
    # its own mount namespace, /run/wireguard bound to the node's directory (the nodes share
    # this machine's /run, WireGuard's control sockets live there), then exec sshd
    assert argv[4:9] == ["unshare", "--mount", "--propagation", "slave", "--"]
    assert argv[argv.index("sh") + 1:argv.index("sh") + 6] == [
        "/run/orch-lab/dev-1/wireguard", "/run/wireguard", "/etc/skel/.bashrc", "/root/.bashrc", "--"]
    assert argv[-5:] == ["/usr/sbin/sshd", "-D", "-e", "-f", "/var/lib/orch-lab/nodes/dev-1/sshd_config"]


def test_registry_config_authenticated_and_mirror_read_only():
    main = yaml.safe_load(registry.render(SPEC, CREDS, mirror=False))
    mirror = yaml.safe_load(registry.render(SPEC, CREDS, mirror=True))
    assert main["http"]["addr"] == "10.250.0.1:5000"
    assert mirror["http"]["addr"] == "10.250.0.1:5001"
    assert main["auth"]["htpasswd"]["path"] == "/var/lib/orch-lab/registry/htpasswd"
    assert "auth" not in mirror
    assert mirror["storage"]["maintenance"]["readonly"] == {"enabled": True}
    assert main["storage"]["filesystem"] == mirror["storage"]["filesystem"]  # one storage
    for cfg in (main, mirror):
        assert cfg["http"]["tls"] == {
            "certificate": "/var/lib/orch-lab/registry/tls.crt",
            "key": "/var/lib/orch-lab/registry/tls.key",
        }
    assert registry.registry_argv(Path("/x.yml")) == ["docker-registry", "serve", "/x.yml"]


def test_htpasswd_is_bcrypt_and_verifies(tmp_path):
    import bcrypt

    line = registry.htpasswd_line("orch", "s3cret")
    user, hashed = line.strip().split(":", 1)
    assert user == "orch" and hashed.startswith("$2y$")
    assert bcrypt.checkpw(b"s3cret", ("$2b$" + hashed[4:]).encode())
    (tmp_path / "htpasswd").write_text(line)
    assert registry.htpasswd_matches(tmp_path / "htpasswd", CREDS)
    assert not registry.htpasswd_matches(tmp_path / "htpasswd", registry.Credentials("orch", "wrong", "x"))


def test_credentials_env_file_round_trips():
    text = registry.env_file(SPEC, CREDS)
    env = registry.parse_env_file(text)
    assert env == {"ORCH_REGISTRY": "10.250.0.1:5000", "ORCH_REGISTRY_USER": "orch", "ORCH_REGISTRY_PASSWORD": "s3cret"}


def test_lab_env_lists_facts_but_no_secret():
    text = state.render_lab_env(SPEC)
    env = registry.parse_env_file(text)
    assert env["ORCH_LAB_SSH_KEY_FILE"] == "/var/lib/orch-lab/id_ed25519"
    assert env["ORCH_LAB_KNOWN_HOSTS"] == "/var/lib/orch-lab/known_hosts"
    assert env["ORCH_LAB_CA"] == "/var/lib/orch-lab/ca.crt"
    assert env["ORCH_REGISTRY_ENV_FILE"] == "/var/lib/orch-lab/registry.env"
    assert env["ORCH_LAB_NODE_PROD_2"] == "10.250.0.32"
    assert "PASSWORD" not in text


def test_lab_env_sources_cleanly_in_a_shell_and_orch_masks_none_of_it(tmp_path):
    # As docs/lab.md says to use it: `set -a; . lab.env; set +a`. A value with a space
    # ran a command; a path under a name ending in _KEY was masked as a secret.
    import subprocess

    from agent.wire.redact import secret_name

    path = tmp_path / "lab.env"
    path.write_text(state.render_lab_env(SPEC))
    cp = subprocess.run(["bash", "-c", f"set -a; . {path}; set +a; env"], capture_output=True, text=True)
    assert cp.returncode == 0 and cp.stderr == ""
    shell = dict(line.split("=", 1) for line in cp.stdout.splitlines() if line.startswith("ORCH_"))
    assert shell == registry.parse_env_file(path.read_text())
    assert shell["ORCH_LAB_NODES"] == ",".join(n.name for n in SPEC.nodes)
    assert not [name for name in shell if secret_name(name)]


def test_ca_trust_dirs_cover_registry_and_mirror():
    assert registry.cert_dirs(SPEC) == [
        Path("/etc/docker/certs.d/10.250.0.1:5000"),
        Path("/etc/docker/certs.d/10.250.0.1:5001"),
    ]


def test_pki_commands():
    ca = pki.ca_argv(Path("/s/ca/ca.key"), Path("/s/ca.crt"), "orch-lab")
    assert ca[:3] == ["openssl", "req", "-x509"] and "basicConstraints=critical,CA:TRUE" in ca
    assert "subjectAltName=IP:10.250.0.1" in pki.server_ext("10.250.0.1")
    assert pki.ssh_keygen_argv(Path("/k"), "c") == ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "c", "-f", "/k"]
    assert pki.known_hosts_line("10.250.0.11", 22, "ssh-ed25519 AAAAkey dev-1@orch-lab") == "10.250.0.11 ssh-ed25519 AAAAkey"
    assert pki.known_hosts_line("10.250.0.11", 2222, "ssh-ed25519 AAAA") == "[10.250.0.11]:2222 ssh-ed25519 AAAA"


def test_uts_namespace_command():
    assert nodes.uts_argv(Path("/run/orch-lab/ns/dev-1.uts"), "dev-1") == [
        "unshare", "--uts=/run/orch-lab/ns/dev-1.uts", "hostname", "dev-1",
    ]


def test_base_image_commands():
    assert images.debootstrap_argv(Path("/c/root"), "http://deb.debian.org/debian") == [
        "debootstrap", "--variant=minbase", "bookworm", "/c/root", "http://deb.debian.org/debian",
    ]
    argv = images.import_argv(Path("/c/d.tar"), "debian:bookworm", images.DEBIAN.changes)
    assert argv[:4] == ["docker", "--host", "unix:///var/run/docker.sock", "import"] and argv[-2:] == ["/c/d.tar", "debian:bookworm"]
    assert 'CMD ["bash"]' in argv
    # this machine's engine, whatever DOCKER_HOST says (once it pointed at a node's socket)
    assert images.push_argv(Path("/cfg"), "r/x:1") == ["docker", "--host", "unix:///var/run/docker.sock",
                                                       "--config", "/cfg", "push", "r/x:1"]
    assert "--password-stdin" in images.login_argv(Path("/cfg"), "10.250.0.1:5000", "orch")
    assert images.registry_refs("10.250.0.1:5000")[0] == "10.250.0.1:5000/library/busybox:latest"
    assert {i.repo for i in images.BASE_IMAGES} == {"library/busybox", "library/debian"}
    assert set(images.DEBIAN.tags) >= {"bookworm", "bookworm-slim"}


def test_debian_mirror_comes_from_the_hosts_apt_sources():
    deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    assert images.mirror_from_sources([deb822]) == "http://mirror.example/debian"
    one_line = "deb http://ftp.example/debian/ bookworm main\ndeb http://security.example/debian-security bookworm-security main"
    assert images.mirror_from_sources([one_line]) == "http://ftp.example/debian"
    assert images.mirror_from_sources([""]) == "http://deb.debian.org/debian"
    assert "bookworm-security" in images.debian_sources("http://deb.debian.org/debian")


def test_busybox_rootfs_has_the_applets_and_basic_files():
    data = images.busybox_tar(b"\x7fELF-fake", ["/bin/sh", "/usr/bin/wget", "/sbin/ifconfig", "/bin/busybox"])
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        members = {m.name: m for m in tf.getmembers()}
    assert members["bin/busybox"].isfile() and members["bin/busybox"].mode == 0o755
    assert members["bin/sh"].issym() and members["bin/sh"].linkname == "/bin/busybox"
    assert members["usr/bin/wget"].issym()
    assert members["tmp"].mode == 0o1777
    assert "etc/passwd" in members and "etc/group" in members
    assert images.busybox_tar(b"x", ["/bin/sh"]) == images.busybox_tar(b"x", ["/bin/sh"])  # reproducible


def test_static_elf_detection():
    import sys

    assert not images.is_static_elf(b"#!/bin/sh\n")
    assert not images.is_static_elf(Path(sys.executable).resolve().read_bytes()[:65536] + b"\0" * 65536)


def test_missing_packages_are_found_by_program():
    present = {"ip", "ss", "nsenter", "unshare", "umount", "iptables", "docker", "sshd", "ssh-keygen", "openssl", "tar"}
    need = packages.missing_packages(lambda p: "/x" if p in present else None, busybox_static=False)
    assert need == ["busybox-static", "debootstrap", "dnsmasq-base", "docker-registry", "docker.io", "pebble",
                    "tcpdump", "wireguard-go", "wireguard-tools"]
    assert packages.install_argvs(["a"])[-1] == ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "a"]
