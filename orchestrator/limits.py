"""Limits on what orch reads, and the one bounded-read helper every file goes through.

Compose and environment files come from repositories that CI jobs holding SSH keys
read, so a hostile file must fail fast (exit 2) instead of exhausting the runner:
every file is read with `read_bounded` (at most LIMIT + 1 bytes, regular files only,
so /dev/zero or a FIFO cannot hang a read), YAML is built within a node budget
(`orchestrator.core.yamlsrc`), interpolation and templates within a depth and size.
The numbers are documented in docs/reference/limits.md; keep both in step.
"""

from __future__ import annotations

import errno
import os
import stat

# Files, by kind (bytes). The 5,000-service benchmark file is 2.2 MB.
YAML_MAX_BYTES = 8 * 1024 * 1024  # Compose files, includes, extends, environment files
DOTENV_MAX_BYTES = 1024 * 1024  # .env, env_file, include env_file, registry credentials/password files
SECRET_MAX_BYTES = 1024 * 1024  # secret and config files (agent.wire.spec.MAX_FILE_BYTES: one JSON line)

# YAML documents (orchestrator.core.yamlsrc).
YAML_MAX_DEPTH = 100  # nested mappings/lists; Compose itself needs fewer than 10
YAML_MAX_ALIAS_NODES = 250_000  # values built again because an alias (*name) repeats them
YAML_MAX_ALIAS_CHARS = 10_000_000  # characters of the scalars those repeated values hold

# ${VAR:-${OTHER:-...}} nesting (orchestrator.core.compose.interpolate).
INTERPOLATION_MAX_DEPTH = 32

# Jinja2 templates (environment overlays, verify checks): the longest string or list
# one operation may make, and the longest rendered value.
TEMPLATE_MAX_CHARS = 1024 * 1024


class FileRefused(OSError):
    """A file orch will not read: not a regular file, or over its size limit.

    An OSError, so callers that report `cannot read FILE: <strerror>` keep working;
    `fix` says what to do instead.
    """

    def __init__(self, code: int, reason: str, fix: str):
        super().__init__(code, reason)
        self.fix = fix


def human_size(n: int) -> str:
    """1048576 -> '1 MiB' (the limits are whole KiB/MiB)."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def _not_regular(mode: int, what: str) -> FileRefused:
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return FileRefused(errno.EINVAL, f"it is {kind}, not a regular file",
                       f"point it at a regular file ({what} is read whole, so devices, FIFOs and sockets are refused)")


def _too_large(limit: int, what: str) -> FileRefused:
    return FileRefused(errno.EFBIG, f"it is larger than {human_size(limit)}, the limit for {what}",
                       f"keep {what} under {human_size(limit)} (docs/reference/limits.md)")


def present(path: str | os.PathLike) -> bool:
    """Whether something other than a directory is at `path`.

    Used instead of is_file() where a file is looked for, so a device or FIFO put
    there reaches read_bounded and is refused by name instead of passing for absent.
    """
    return os.path.exists(path) and not os.path.isdir(path)


def check_file(path: str | os.PathLike, limit: int, what: str = "the file") -> FileRefused | None:
    """What read_bounded would refuse, by stat alone (no read): None when fine or absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing or unreadable: reported by whoever reads it
    if stat.S_ISDIR(st.st_mode):
        return None
    if not stat.S_ISREG(st.st_mode):
        return _not_regular(st.st_mode, what)
    return _too_large(limit, what) if st.st_size > limit else None


def open_regular(path: str | os.PathLike, what: str = "the file") -> int:
    """A read-only descriptor on the regular file `path` (the caller closes it).

    Raises as os.open() does, IsADirectoryError, and FileRefused for a device, FIFO or
    socket, checked on the opened file (no window between a stat and the open).
    """
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        if not stat.S_ISREG(mode):
            raise _not_regular(mode, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str | os.PathLike, limit: int, what: str = "the file") -> bytes:
    """The bytes of the regular file `path`, refusing it when it holds more than `limit`.

    Raises FileNotFoundError, IsADirectoryError, PermissionError... as open() does, and
    FileRefused for a device, FIFO or socket, or a file larger than `limit`. Reads at
    most limit + 1 bytes whatever the file claims (procfs files say they are empty).
    """
    fd = open_regular(path, what)
    try:
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise _too_large(limit, what)
    return data
