"""The Debian packages the lab needs, found by the programs it runs; installed if missing."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.errors import OrchError
from orchestrator.lab import proc

# program -> Debian package providing it
PROGRAMS = {
    "ip": "iproute2",
    "ss": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "umount": "mount",
    "iptables": "iptables",
    "dockerd": "docker.io",
    "docker": "docker.io",
    "docker-registry": "docker-registry",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "debootstrap": "debootstrap",
    "openssl": "openssl",
    "tar": "tar",
    # the service mesh on the nodes (docs/networking.md); tcpdump for its e2e capture
    "wg": "wireguard-tools",
    "wireguard-go": "wireguard-go",
    "dnsmasq": "dnsmasq-base",
    "tcpdump": "tcpdump",
    # the lab's ACME server (acme.py); dnsmasq above is also its resolver (dns.py)
    "pebble": "pebble",
}
STATIC_BUSYBOX = ("/bin/busybox", "busybox-static")


def missing_packages(which=proc.which, busybox_static=None) -> list[str]:
    """Packages to install so every program the lab runs is there (sorted, unique)."""
    need = {pkg for prog, pkg in PROGRAMS.items() if which(prog) is None}
    if busybox_static is None:
        busybox_static = _busybox_is_static()
    if not busybox_static:
        need.add(STATIC_BUSYBOX[1])
    return sorted(need)


def _busybox_is_static() -> bool:
    from orchestrator.lab.images import is_static_elf

    try:
        with open(STATIC_BUSYBOX[0], "rb") as fh:
            return is_static_elf(fh.read())
    except OSError:
        return False


def install_argvs(packages: list[str]) -> list[list[str]]:
    return [
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
    ]


def ensure(log) -> None:
    need = missing_packages()
    if not need:
        return
    fix = f"install them: apt-get install {' '.join(need)} (or run `make lab`)"
    if os.environ.get("ORCH_LAB_NO_INSTALL") or not Path("/usr/bin/apt-get").exists():
        raise OrchError(f"the lab needs Debian packages that are missing: {', '.join(need)}.", fix=fix)
    log(f"installing missing packages: {' '.join(need)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in install_argvs(need):
        cp = proc.run(argv, check=False, timeout=1800, env=env)
        if cp.returncode != 0:
            raise OrchError(
                f"could not install {', '.join(need)}: `{' '.join(argv)}` failed:\n"
                + "\n".join(cp.stdout.strip().splitlines()[-8:]),
                fix=fix + " once the package mirror is reachable",
            )
    still = missing_packages()
    if still:
        raise OrchError(f"packages still missing after installing: {', '.join(still)}.", fix=fix)
