"""The lab's state on disk: its spec (lab.json), the exported facts (lab.env) and a lock.

The spec is what `lab status`/`lab down` and the LabInfo API read, so they need no
options; the lock keeps two `lab up`/`lab down` of one lab from interleaving.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from orchestrator.lab.model import SSH_PORT, SSH_USER, LabPaths, LabSpec


def load_spec(paths: LabPaths) -> LabSpec | None:
    try:
        return LabSpec.from_json(json.loads(paths.spec_file.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_spec(spec: LabSpec) -> None:
    p = spec.paths
    p.state.mkdir(parents=True, exist_ok=True)
    os.chmod(p.state, 0o755)
    write_if_changed(p.spec_file, json.dumps(spec.to_json(), indent=2) + "\n")


def env_var_name(node_name: str) -> str:
    return "ORCH_LAB_NODE_" + node_name.upper().replace("-", "_")


def render_lab_env(spec: LabSpec) -> str:
    """Facts for environments/*.yaml and scripts (no secrets: those are in registry.env)."""
    p = spec.paths
    lines = [
        "# The lab's facts, written by `orch lab up`. Use: set -a; . THIS_FILE; set +a",
        f"ORCH_LAB_NAME={spec.name}",
        f"ORCH_LAB_SUBNET={spec.subnet}",
        f"ORCH_LAB_HOST={spec.host_address}",
        f"ORCH_LAB_SSH_USER={SSH_USER}",
        f"ORCH_LAB_SSH_PORT={SSH_PORT}",
        f"ORCH_LAB_SSH_KEY_FILE={p.client_key}",
        f"ORCH_LAB_KNOWN_HOSTS={p.known_hosts}",
        f"ORCH_LAB_CA={p.ca_cert}",
        f"ORCH_REGISTRY={spec.registry}",
        f"ORCH_REGISTRY_MIRROR={spec.mirror}",
        f"ORCH_REGISTRY_ENV_FILE={p.registry_env}",
        f"ORCH_LAB_ACME_DIRECTORY={spec.acme_directory}",
        f"ORCH_LAB_ACME_CA={p.acme_ca}",
        f"ORCH_LAB_DNS={spec.dns_server}",
        f"ORCH_LAB_NODES={','.join(n.name for n in spec.nodes)}",  # no space: `. lab.env` in a shell
    ]
    lines += [f"{env_var_name(n.name)}={n.address}" for n in spec.nodes]
    return "\n".join(lines) + "\n"


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write text unless the file already holds it; True when it changed."""
    try:
        if path.read_text() == text:
            if (path.stat().st_mode & 0o777) != mode:
                os.chmod(path, mode)
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    tmp.replace(path)
    return True


@contextmanager
def locked(paths: LabPaths, log=None):
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log("another `orch lab` command is working on this lab; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
