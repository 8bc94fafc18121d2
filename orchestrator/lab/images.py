"""Offline base images: busybox and debian:bookworm built here, since no hub is reachable.

- busybox: FROM scratch with Debian's static busybox and its applet links.
- debian:bookworm (also tagged bookworm-slim, 12, latest): `debootstrap
  --variant=minbase` from Debian's mirror, then `docker import`. The rootfs tarball is
  cached in /var/cache/orch-lab (shared by every lab) so only the first build pays.

They are loaded into the host engine under their public names and pushed to the lab
registry as library/NAME, which the nodes use as their docker.io mirror.
"""

from __future__ import annotations

import fcntl
import io
import os
import tarfile
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.lab import engine, proc
from orchestrator.lab.mounts import remove_tree

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class BaseImage:
    name: str  # public name, e.g. debian
    tags: tuple[str, ...]
    changes: tuple[str, ...]  # docker import --change instructions

    @property
    def repo(self) -> str:
        return f"library/{self.name}"

    @property
    def refs(self) -> list[str]:
        return [f"{self.name}:{t}" for t in self.tags]


BUSYBOX = BaseImage("busybox", ("latest",), ('CMD ["sh"]',))
# bookworm-slim is the same minbase image: close enough for the lab, half the work.
DEBIAN = BaseImage("debian", ("bookworm", "bookworm-slim", "12", "latest"), (f"ENV {PATH_ENV}", 'CMD ["bash"]'))
BASE_IMAGES = (BUSYBOX, DEBIAN)


# ---- pure builders --------------------------------------------------------------


def debootstrap_argv(target: Path, mirror: str) -> list[str]:
    return ["debootstrap", "--variant=minbase", SUITE, str(target), mirror]


def tar_argv(root: Path, out: Path) -> list[str]:
    return ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(out), "."]


def docker_argv(*args: str) -> list[str]:
    """The docker CLI on this machine's engine, the one the lab reads over HOST_SOCKET,
    whatever DOCKER_HOST the caller's shell has (a node's socket, a remote engine)."""
    return ["docker", "--host", f"unix://{engine.HOST_SOCKET}", *args]


def import_argv(tarball: Path, ref: str, changes: tuple[str, ...]) -> list[str]:
    argv = docker_argv("import")
    for c in changes:
        argv += ["--change", c]
    return argv + [str(tarball), ref]


def push_argv(client_config: Path, ref: str) -> list[str]:
    return docker_argv("--config", str(client_config), "push", ref)


def login_argv(client_config: Path, registry: str, user: str) -> list[str]:
    return docker_argv("--config", str(client_config), "login", "--username", user, "--password-stdin", registry)


def mirror_from_sources(texts: list[str]) -> str:
    """The host's Debian mirror (from apt sources, one-line or deb822), else deb.debian.org."""
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("deb ") and " bookworm" in line:
                for word in line.split()[1:]:
                    if word.startswith(("http://", "https://")) and "security" not in word:
                        return word.rstrip("/")
            if line.startswith("URIs:"):
                for word in line.split()[1:]:
                    if word.rstrip("/").endswith("/debian"):
                        return word.rstrip("/")
    return DEFAULT_MIRROR


def debian_sources(mirror: str) -> str:
    """The image's apt sources, laid out like the official image's."""
    security = mirror.rsplit("/", 1)[0] + "/debian-security" if mirror.endswith("/debian") else (
        "http://deb.debian.org/debian-security"
    )
    return (
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )


# What the official images add so apt in a Dockerfile behaves (no services, small layers).
APT_DOCKER_CLEAN = (
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb '
    '/var/cache/apt/*.bin || true"; };\n'
    'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
    '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
    'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
)
POLICY_RC_D = "#!/bin/sh\n# containers start no services when packages are installed\nexit 101\n"


def is_static_elf(data: bytes) -> bool:
    """True for an ELF executable without an interpreter (PT_INTERP) header."""
    import struct

    if data[:4] != b"\x7fELF":
        return False
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
    for i in range(phnum):
        p_type, = struct.unpack_from(end + "I", data, phoff + i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def busybox_tar(busybox: bytes, applets: list[str]) -> bytes:
    """A root filesystem: /bin/busybox, a link per applet, and the few files tools expect."""
    buf = io.BytesIO()
    mtime = 0  # reproducible layer

    def add(name: str, *, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, data: bytes = b"", link: str = ""):
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, mtime, link
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        tf.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        dirs = {"bin", "etc", "root", "tmp", "home", "var", "var/spool", "var/spool/mail", "var/www", "usr", "usr/bin", "usr/sbin", "sbin"}
        for a in applets:
            parent = os.path.dirname(a.strip("/"))
            while parent:
                dirs.add(parent)
                parent = os.path.dirname(parent)
        for d in sorted(dirs):
            mode = {"tmp": 0o1777, "root": 0o700}.get(d, 0o755)
            add(d, kind=tarfile.DIRTYPE, mode=mode)
        add("bin/busybox", mode=0o755, data=busybox)
        for a in sorted({a.strip("/") for a in applets}):
            if a != "bin/busybox":
                add(a, kind=tarfile.SYMTYPE, mode=0o777, link="/bin/busybox")
        add("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        add("etc/group", data=b"root:x:0:\nnobody:x:65534:\n")
    return buf.getvalue()


# ---- effects --------------------------------------------------------------------


@contextmanager
def cache_lock(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def host_mirror() -> str:
    texts = []
    for p in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            texts.append(p.read_text())
        except OSError:
            pass
    return mirror_from_sources(texts)


def build_busybox(cache: Path) -> Path:
    out = cache / "busybox-rootfs.tar"
    if out.exists():
        return out
    path = Path(proc.which("busybox") or "/bin/busybox")
    data = path.read_bytes() if path.exists() else b""
    if not is_static_elf(data):
        raise OrchError(
            f"{path} is not a static busybox, so it cannot run FROM scratch.",
            fix="apt-get install busybox-static (it replaces the dynamic busybox)",
        )
    applets = proc.run([str(path), "--list-full"]).stdout.split()
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(busybox_tar(data, applets))
    tmp.rename(out)
    return out


def build_debian(cache: Path, log) -> Path:
    out = cache / f"debian-{SUITE}-minbase-{_arch()}.tar"
    if out.exists():
        return out
    for stale in cache.glob("tmp-debian-*"):  # a killed build (we hold the cache lock)
        remove_tree(stale)
    work = Path(tempfile.mkdtemp(prefix="tmp-debian-", dir=cache))
    root = work / "root"
    mirror = host_mirror()
    log(f"building debian:{SUITE} with debootstrap from {mirror} (about a minute, cached afterwards)")
    started = time.monotonic()
    try:
        cp = proc.run(debootstrap_argv(root, mirror), check=False, timeout=1800)
        if cp.returncode != 0:
            (cache / "debootstrap.log").write_text(cp.stdout)
            raise OrchError(
                f"debootstrap of Debian {SUITE} failed (exit {cp.returncode}). Last lines:\n"
                + "\n".join(cp.stdout.strip().splitlines()[-10:]),
                fix=f"check that {mirror} is reachable from this machine, then run "
                "`orch lab up` again",
            )
        _minimise(root, mirror)
        tmp = work / "rootfs.tar"
        proc.run(tar_argv(root, tmp), timeout=600)
        tmp.rename(out)
    finally:
        remove_tree(work)
    log(f"debian:{SUITE} rootfs cached at {out} ({time.monotonic() - started:.0f} s)")
    return out


def _minimise(root: Path, mirror: str) -> None:
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*", "var/log/*.log"):
        for f in root.glob(pattern):
            if f.is_file():
                f.unlink()
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(debian_sources(mirror))
    (root / "etc/apt/apt.conf.d/docker-clean").write_text(APT_DOCKER_CLEAN)
    (root / "etc/apt/apt.conf.d/docker-no-languages").write_text('Acquire::Languages "none";\n')
    rc = root / "usr/sbin/policy-rc.d"
    rc.write_text(POLICY_RC_D)
    rc.chmod(0o755)
    (root / "etc/hostname").write_text("localhost\n")  # docker bind-mounts its own


def _arch() -> str:
    return proc.run(["dpkg", "--print-architecture"]).stdout.strip() or "amd64"


def ensure_host_images(cache: Path, log) -> list[str]:
    """Make every base image exist in the host engine; returns refs that were imported.

    A tag already present (the lab's own, or the real one pulled elsewhere) is kept.
    """
    imported = []
    with cache_lock(cache):
        for img in BASE_IMAGES:
            have = {r for r in img.refs if engine.image(engine.HOST_SOCKET, r)}
            if len(have) == len(img.refs):
                continue
            if have:  # some tags there: add the rest from one of them
                src = min(have)
            else:
                tarball = build_busybox(cache) if img is BUSYBOX else build_debian(cache, log)
                src = img.refs[0]
                log(f"importing {src} into the host engine")
                proc.run(import_argv(tarball, src, img.changes), timeout=600)
                imported.append(src)
            for ref in img.refs:
                if ref != src and ref not in have:
                    proc.run(docker_argv("tag", src, ref))
    return imported


def ensure_pushed(registry: str, client_config: Path, user: str, password: str, digest_of, log) -> list[str]:
    """Push each base image tag to the lab registry unless it already has those bytes.

    digest_of(repo, tag) -> the registry's manifest digest or None.
    """
    pushed = []
    logged_in = False
    for img in BASE_IMAGES:
        for tag in img.tags:
            ref = f"{img.name}:{tag}"
            target = f"{registry}/{img.repo}:{tag}"
            local = engine.image(engine.HOST_SOCKET, ref) or {}
            remote = digest_of(img.repo, tag)
            if remote and f"{registry}/{img.repo}@{remote}" in (local.get("RepoDigests") or []):
                continue
            if not logged_in:
                client_config.mkdir(mode=0o700, parents=True, exist_ok=True)
                proc.run(login_argv(client_config, registry, user), input=password)
                logged_in = True
            log(f"pushing {ref} to {target}")
            proc.run(docker_argv("tag", ref, target))
            proc.run(push_argv(client_config, target), timeout=900)
            pushed.append(target)
    return pushed


def registry_refs(registry: str) -> list[str]:
    return [f"{registry}/{img.repo}:{tag}" for img in BASE_IMAGES for tag in img.tags]


def remove_registry_tags(registry: str) -> None:
    """Untag the names `lab up` gave the base images for this registry (images stay)."""
    refs = [r for r in registry_refs(registry) if engine.image(engine.HOST_SOCKET, r)]
    if refs:
        proc.run(docker_argv("rmi", "--no-prune", *refs), check=False)
