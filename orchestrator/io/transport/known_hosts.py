"""known_hosts: fingerprints, reading and appending entries, and the strict host-key policy
paramiko connects with (an unknown key is refused, or recorded when not strict; a changed
key is always refused)."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from orchestrator.io.transport.errors import HostKeyChanged, TransportError, UnknownHostKey
from orchestrator.core.environments import NodeSpec
from orchestrator.io.transport.options import SSHOptions


def fingerprint(key: Any) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key: 'SHA256:base64-without-padding'."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def load_known_hosts(path: Path) -> Any:
    import paramiko

    keys = paramiko.HostKeys()
    if path.is_file():
        try:
            keys.load(str(path))
        except (OSError, paramiko.SSHException) as err:
            raise TransportError(
                f"cannot read known_hosts file {path}: {err}",
                fix="fix or remove the malformed line, or point ssh.known_hosts at another file.",
            ) from None
    return keys


_KNOWN: dict[Path, tuple[tuple[int, int, int], Any]] = {}
_KNOWN_LOCK = threading.Lock()


def known_hosts(path: Path) -> Any:
    """The known_hosts file parsed (paramiko.HostKeys; read it, never change it), once per
    process while the file is unchanged: paramiko's parse compares each line with every
    line before it, so parsing the file of a hundred nodes for each of their connections
    cost more CPU than the handshakes themselves. A malformed file is a readable error."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return load_known_hosts(path)  # empty
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)  # an appended key (accept-new) changes it
    with _KNOWN_LOCK:
        cached = _KNOWN.get(path)
        if cached is None or cached[0] != stamp:
            cached = _KNOWN[path] = (stamp, load_known_hosts(path))
        return cached[1]


def append_known_host(path: Path, name: str, key: Any) -> None:
    """Append one line; never rewrites the file (keeps comments and hashed entries)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{name} {key.get_name()} {key.get_base64()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # parallel trusts append whole lines
        os.write(fd, line.encode("ascii"))
    finally:
        os.close(fd)


def _unknown_key_error(target: NodeSpec, key: Any, options: SSHOptions) -> UnknownHostKey:
    fp = fingerprint(key)
    return UnknownHostKey(
        f"{target.name} ({target.address}): unknown host key {key.get_name()} {fp}; "
        f"refusing to connect (strict host key checking, {options.known_hosts_path}).",
        node=target.name,
        fingerprint=fp,
        key_type=key.get_name(),
        fix=f"check the fingerprint out of band, then run: {options.trust_command()}",
    )


def changed_key_error(target: NodeSpec, got: Any, expected: Any, options: SSHOptions) -> HostKeyChanged:
    new, old = fingerprint(got), fingerprint(expected) if expected is not None else "?"
    return HostKeyChanged(
        f"{target.name} ({target.address}): WARNING: THE HOST KEY HAS CHANGED. The node now presents "
        f"{got.get_name()} {new}, but {options.known_hosts_path} records {old}. This is either a "
        "reinstalled node or someone intercepting the connection; orch refuses to connect.",
        node=target.name,
        fingerprint=new,
        expected=old,
        fix=f"verify the new fingerprint out of band; if the node was really reinstalled, remove the old "
        f"entry with `ssh-keygen -R '{target.known_hosts_name}' -f {options.known_hosts_path}` and run "
        f"{options.trust_command()}.",
    )


class HostKeyPolicy:
    """paramiko policy for keys missing from known_hosts: refuse (strict) or accept-new."""

    def __init__(self, target: NodeSpec, options: SSHOptions):
        self.target = target
        self.options = options

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if self.options.strict_host_keys:
            raise _unknown_key_error(self.target, key, self.options)
        append_known_host(self.options.known_hosts_path, hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
