"""Parsing the machine's state: mounts, processes, the lab's leftovers (no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestrator.errors import OrchError
from orchestrator.lab import cgroups, down, mounts, proc, state
from orchestrator.lab.model import build_spec

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
44 43 0:4 net:[4026532179] /run/netns/orch-lab.dev-1 rw shared:3 - nsfs nsfs rw
45 27 0:4 uts:[4026532249] /run/orch-lab/ns/dev-1.uts rw - nsfs nsfs rw
60 22 254:0 /var/lib/orch-lab/nodes/dev-1/docker/overlay2 /var/lib/orch-lab/nodes/dev-1/docker/overlay2 rw - ext4 /dev/vda rw
61 60 0:50 / /var/lib/orch-lab/nodes/dev-1/docker/overlay2/abc/merged rw - overlay overlay rw
62 22 0:51 / /var/lib/orch-lab-e2e/x rw - tmpfs tmpfs rw
63 22 0:52 / /tmp/with\\040space rw - tmpfs tmpfs rw
70 22 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
71 22 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
"""


def test_mountinfo_parsing_and_deepest_first():
    ms = mounts.parse_mountinfo(MOUNTINFO)
    assert mounts.Mount("/tmp/with space", "tmpfs") in ms
    assert mounts.under(ms, [Path("/var/lib/orch-lab")]) == [
        "/var/lib/orch-lab/nodes/dev-1/docker/overlay2/abc/merged",
        "/var/lib/orch-lab/nodes/dev-1/docker/overlay2",
    ]  # and not /var/lib/orch-lab-e2e: a prefix of the name is not a parent dir
    assert mounts.umount_argv("/x") == ["umount", "--lazy", "/x"]


def test_cgroup_hierarchies():
    ms = mounts.parse_mountinfo(MOUNTINFO)
    assert cgroups.hierarchies(ms) == [Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/unified")]


def test_find_matches_argv_and_retitled_daemons():
    procs = [
        proc.Proc(10, ("dockerd", "--config-file", "/var/lib/orch-lab/nodes/dev-1/daemon.json"), "net:[1]"),
        proc.Proc(11, ("dockerd",), "net:[2]"),
        proc.Proc(12, ("sshd: /usr/sbin/sshd -D -e -f /var/lib/orch-lab/nodes/dev-1/sshd_config [listener] 0 of 64",), "net:[1]"),
        proc.Proc(13, ("vim", "/var/lib/orch-lab/nodes/dev-1/sshd_config"), "net:[2]"),
    ]
    assert [p.pid for p in proc.find(procs, "/var/lib/orch-lab/nodes/dev-1/daemon.json", "dockerd")] == [10]
    assert [p.pid for p in proc.find(procs, "/var/lib/orch-lab/nodes/dev-1/sshd_config", "sshd")] == [12]


def test_lab_processes_are_recognised_by_their_paths_only():
    spec = build_spec("orch-lab", "10.250.0.0/24", "dev=1")
    procs = [
        proc.Proc(1, ("docker-registry", "serve", "/var/lib/orch-lab/registry/registry.yml"), "n"),
        proc.Proc(2, ("containerd", "--config", "/run/orch-lab/dev-1/exec/containerd/containerd.toml"), "n"),
        proc.Proc(3, ("docker-registry", "serve", "/var/lib/orch-lab-e2e/registry/registry.yml"), "n"),
        proc.Proc(4, ("dockerd",), "n"),
    ]
    assert [p.pid for p in down.lab_processes(spec, procs)] == [1, 2]


def test_node_names_for_down_include_the_machines_leftovers(tmp_path, monkeypatch):
    spec = build_spec("orch-lab-unit-none", "10.250.0.0/24", "dev=1")  # no such lab here
    monkeypatch.setattr(down.netns, "lab_netns", lambda prefix: [prefix + "prod-7"])
    assert down.node_names(spec) == ["dev-1", "prod-7"]


def test_run_reports_failures_with_output():
    with pytest.raises(proc.CommandFailed) as err:
        proc.run(["sh", "-c", "echo broken >&2; exit 3"], fix="do X")
    assert "exit 3" in err.value.render() and "broken" in err.value.render() and "do X" in err.value.render()
    with pytest.raises(OrchError) as err:
        proc.run(["definitely-not-a-program-xyz"])
    assert "not installed" in err.value.render()
    assert proc.ok(["true"]) and not proc.ok(["false"])


def test_tail_and_wait_until(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert proc.tail(log, 3) == "line 97\nline 98\nline 99"
    assert proc.tail(tmp_path / "missing") == "(no log)"
    assert proc.wait_until(lambda: True, 0)
    assert not proc.wait_until(lambda: False, 0.2)


def test_process_table_sees_this_process():
    me = [p for p in proc.process_table() if p.pid == os.getpid()]
    assert me and me[0].netns.startswith("net:[")


def test_write_if_changed(tmp_path):
    f = tmp_path / "a" / "f"
    assert state.write_if_changed(f, "x\n", 0o600)
    assert not state.write_if_changed(f, "x\n", 0o600)
    assert (f.stat().st_mode & 0o777) == 0o600
    assert state.write_if_changed(f, "y\n", 0o600)


def test_remove_tree_deletes_plain_trees(tmp_path):
    d = tmp_path / "t"
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "f").write_text("x")
    mounts.remove_tree(d)
    assert not d.exists()
    mounts.remove_tree(d)  # absent: nothing to do


def test_leftovers_describe():
    left = down.Leftovers(processes=["1 dockerd"], netns=[], links=["orchlab0"], mounts=[], paths=[])
    assert left.any()
    assert left.describe() == "processes: 1 dockerd; interfaces: orchlab0"


def test_lab_commands_refuse_to_run_without_root(monkeypatch):
    from orchestrator.errors import InputError
    from orchestrator.lab import up

    monkeypatch.setattr(up.os, "geteuid", lambda: 1000)
    with pytest.raises(InputError) as err:
        up.up("orch-lab")
    assert err.value.exit_code == 2 and "root" in err.value.render() and "sudo" in err.value.render()
    with pytest.raises(InputError):
        down.down("orch-lab")
