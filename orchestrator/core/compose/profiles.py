"""Profiles: which services are enabled.

Active profiles come from --profile (repeatable), else COMPOSE_PROFILES (comma
separated, shell or .env). `*` enables every profile. A service without profiles is
always enabled; one with profiles is enabled when one of them is active, or when the
service is named on the command line — which also activates its profiles, so the
other services of those profiles come along, as in `docker compose`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def active_profiles(flags: Iterable[str], variables: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    flags = [p for f in flags for p in str(f).split(",")]
    source = flags if flags else (variables.get("COMPOSE_PROFILES") or "").split(",")
    for p in source:
        p = p.strip()
        if p and p not in out:
            out.append(p)
    return out


def raw_profiles(service: Any) -> list[str]:
    """The profiles: of a raw service mapping (invalid shapes read as none)."""
    if not isinstance(service, dict):
        return []
    value = service.get("profiles")
    if isinstance(value, list):
        return [str(p) for p in value if isinstance(p, (str, int, float))]
    return []


def enabled_services(
    services: Mapping[str, Any], active: list[str], named: Iterable[str]
) -> tuple[set[str], list[str]]:
    """(names of enabled services, active profiles including those of named services)."""
    named = [n for n in named if n in services]
    active = list(active)
    for n in named:
        for p in raw_profiles(services[n]):
            if p not in active:
                active.append(p)
    wildcard = "*" in active
    act = set(active)
    out = set()
    for name, svc in services.items():
        profiles = raw_profiles(svc)
        if not profiles or wildcard or name in named or act.intersection(profiles):
            out.add(name)
    return out, active
