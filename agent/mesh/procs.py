"""Small process helpers for the mesh's long-running programs (wireguard-go, dnsmasq, the
mesh daemon): find by pid file or command line in this network namespace, start
detached, stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import List, Optional

SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin", "/usr/local/bin", "/bin")


def which(program: str) -> Optional[str]:
    found = shutil.which(program)
    if found:
        return found
    for d in SBIN:
        path = os.path.join(d, program)
        if os.access(path, os.X_OK):
            return path
    return None


def cmdline(pid: int) -> List[str]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def same_netns(pid: int) -> bool:
    try:
        return os.readlink("/proc/%d/ns/net" % pid) == os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def read_pid(path: str, marker: str) -> Optional[int]:
    """The pid in `path` if that process is alive, in this network namespace, and its
    command line contains `marker` (a pid file can outlive its process)."""
    try:
        with open(path) as fh:
            pid = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or not same_netns(pid):
        return None
    return pid if any(marker in a for a in cmdline(pid)) else None


def find(argv_prefix: List[str]) -> List[int]:
    """Processes in this network namespace whose command line starts with argv_prefix
    (program compared by base name)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        args = cmdline(pid)
        if len(args) < len(argv_prefix):
            continue
        if os.path.basename(args[0]) != argv_prefix[0] or args[1:len(argv_prefix)] != argv_prefix[1:]:
            continue
        if same_netns(pid):
            out.append(pid)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def stop(pids: List[int], timeout: float = 5.0) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run(argv: List[str], input_text: Optional[str] = None, timeout: float = 20.0, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=input_text, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=timeout, env=env)


def spawn(argv: List[str], log_path: str, env=None) -> int:
    """Start argv detached (own session, stdio on a log file), outliving the agent."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env)
    return proc.pid
