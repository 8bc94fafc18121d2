"""Running commands and finding/stopping the lab's processes.

Every command is an argv list (never a shell string). Lab daemons are recognised by
a path unique to the lab in their argv (their config file), or by living in one of
the lab's network namespaces, so nothing else on the machine is ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from orchestrator.errors import OrchError

Argv = Sequence[str]


class CommandFailed(OrchError):
    def __init__(self, argv: Argv, returncode: int, output: str, *, fix: str | None = None):
        tail = "\n".join(output.strip().splitlines()[-8:])
        msg = f"`{' '.join(argv)}` failed (exit {returncode})"
        if tail:
            msg += f": {tail}"
        super().__init__(msg, fix=fix)
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


def run(
    argv: Argv,
    *,
    check: bool = True,
    input: str | bytes | None = None,
    timeout: float | None = 120,
    fix: str | None = None,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run argv, capture stdout+stderr as text; raise CommandFailed on error if check."""
    data = input.encode() if isinstance(input, str) else input
    try:
        cp = subprocess.run(
            list(argv),
            input=data,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            env=env,
        )
    except FileNotFoundError:
        raise OrchError(
            f"`{argv[0]}` is not installed.",
            fix="run `make lab` (installs the lab's Debian packages) or apt-get install it",
        ) from None
    except subprocess.TimeoutExpired as err:
        raise OrchError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s.") from err
    out = cp.stdout.decode(errors="replace")
    result = subprocess.CompletedProcess(cp.args, cp.returncode, out, "")
    if check and cp.returncode != 0:
        raise CommandFailed(argv, cp.returncode, out, fix=fix)
    return result


def capture(argv: Argv, timeout: float = 30) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) kept apart: for output that is parsed (JSON), where a
    warning on stderr must not end up in the middle of it."""
    try:
        cp = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except FileNotFoundError:
        raise OrchError(f"`{argv[0]}` is not installed.",
                        fix="run `make lab` (installs the lab's Debian packages) or apt-get install it") from None
    except subprocess.TimeoutExpired as err:
        raise OrchError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s.") from err
    return cp.returncode, cp.stdout, cp.stderr


def ok(argv: Argv, timeout: float = 30) -> bool:
    """True when argv exits 0 (output discarded): for checks like `iptables -C`."""
    try:
        return (
            subprocess.run(
                list(argv),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
            ).returncode
            == 0
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False


# Daemons get a clean environment: nothing of the caller's (DOCKER_HOST, proxies,
# REGISTRY_* overrides) leaks into the lab.
DAEMON_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def spawn(argv: Argv, log: Path, env: dict | None = None) -> int:
    """Start a long-lived daemon detached from us (own session, output to its log).

    The lab outlives the `orch` process that started it, like a service would. env:
    variables added to DAEMON_ENV (the daemon's own settings, e.g. pebble's).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"--- orch lab: starting {' '.join(argv)} at {time.ctime()}\n".encode())
        fh.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={**DAEMON_ENV, **(env or {})},
            cwd="/",
        )
    # We never wait() for it; a reaper thread is not needed because the CLI exits soon
    # and the daemon is re-parented to init. Keep the Popen from warning on GC.
    proc.returncode = 0
    return proc.pid


@dataclass(frozen=True)
class Proc:
    pid: int
    argv: tuple[str, ...]
    netns: str  # e.g. "net:[4026531840]"


def process_table() -> list[Proc]:
    """A snapshot of every process (pid, argv, network namespace)."""
    procs = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                raw = fh.read()
            netns = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if not raw:  # kernel threads and zombies
            continue
        argv = tuple(a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0"))
        procs.append(Proc(pid, argv, netns))
    return procs


def find(procs: Iterable[Proc], marker: str, program: str | None = None) -> list[Proc]:
    """Processes with `marker` (e.g. a lab config path) as one argument.

    Daemons that retitle themselves (sshd: "sshd: /usr/sbin/sshd -f PATH [listener]")
    are matched on the words of their title.
    """
    out = []
    for p in procs:
        words = p.argv if marker in p.argv else tuple(w for a in p.argv for w in a.split())
        if marker not in words:
            continue
        name = os.path.basename(p.argv[0].split()[0] if p.argv[0] else "").rstrip(":")
        if program is None or name == program:
            out.append(p)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # state is the field after "(comm)"; Z = zombie counts as gone
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def argv_of(pid: int) -> tuple[str, ...] | None:
    """The argv of a live process, or None when it is gone (or a zombie)."""
    if not alive(pid):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    return tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)


def clear_stale_pidfile(path: Path, is_owner: Callable[[tuple[str, ...]], bool]) -> bool:
    """Remove a pid file unless its pid is a live process that is_owner(argv) accepts.

    After a machine restart /run may survive (it is not a tmpfs everywhere) while
    pids are handed out again, so a pid file can name an unrelated live process.
    Returns True when the file was removed.
    """
    try:
        pid = int(path.read_text().strip() or 0)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        pid = 0
    argv = argv_of(pid) if pid > 1 else None
    if argv is not None and is_owner(argv):
        return False
    path.unlink(missing_ok=True)
    return True


def stop(pids: Iterable[int], timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL what is left."""
    pids = [p for p in pids if p > 1]
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    wait_until(lambda: not any(alive(p) for p in pids), timeout)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    wait_until(lambda: not any(alive(p) for p in pids), 5)


def wait_until(cond: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            start = max(0, size - 65536)
            fh.seek(start)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    if start:  # the first line is cut off
        text = text.partition("\n")[2]
    return "\n".join(text.splitlines()[-lines:])


def log_excerpt(path: Path, lines: int = 10) -> str:
    """The last lines of a daemon log that are not routine info/debug chatter."""
    text = tail(path, 400)
    keep = [ln for ln in text.splitlines() if "level=info" not in ln and "level=debug" not in ln]
    return "\n".join(keep[-lines:]) if keep else "\n".join(text.splitlines()[-lines:])


def which(program: str) -> str | None:
    from shutil import which as _which

    # root's PATH may lack sbin when run through sudo -E or a minimal CI shell
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return _which(program, path=path)
