"""Labels the agent puts on everything it creates, and the names it gives them.

The agent recognises a container, network or volume as its own only by these labels;
anything without PROJECT is someone else's and is never touched.
"""

from __future__ import annotations

from typing import Dict, Optional

PREFIX = "io.orch"
PROJECT = PREFIX + ".project"
SERVICE = PREFIX + ".service"
REPLICA = PREFIX + ".replica"
ENV = PREFIX + ".env"
# Hash of the container's desired configuration, computed by the controller
# (agent.wire.spec.config_hash); a different hash means "recreate".
CONFIG_HASH = PREFIX + ".config-hash"
RELEASE = PREFIX + ".release"
# JSON {field: short hash} of the ContainerSpec's top-level fields, so the controller
# can say *which* part of the configuration changed (not part of the config hash).
CONFIG_PARTS = PREFIX + ".config-parts"
# For networks and volumes: the Compose-level name inside the project ("default", "data").
NAME = PREFIX + ".name"
MANAGED_BY = PREFIX + ".managed-by"
MANAGED_BY_VALUE = "orch-agent"

RESERVED_PREFIX = PREFIX + "."


def container_name(project: str, service: str, replica: int) -> str:
    return "%s-%s-%d" % (project, service, replica)


# A replaced container is kept, stopped and renamed "<name>-prev", until the release that
# replaced it is live, so a rollback needs no pull and no re-create. Canonical names end
# in the replica number, so no canonical name ever ends in this suffix.
RETIRED_SUFFIX = "-prev"


def retired_name(name: str) -> str:
    return name + RETIRED_SUFFIX


def is_retired(name: str) -> bool:
    return name.endswith(RETIRED_SUFFIX)


def server_name(service: str, replica: int, container_id: str) -> str:
    """The ingress (HAProxy) server name of a container: stable across its renames,
    different for the old and the new container of one replica."""
    return "%s-%d-%s" % (service, replica, container_id[:8])


def network_name(project: str, name: str) -> str:
    return "%s_%s" % (project, name)


def volume_name(project: str, name: str) -> str:
    return "%s_%s" % (project, name)


def container_labels(
    project: str,
    service: str,
    replica: int,
    env: str,
    config_hash: str,
    release: Optional[str],
    user_labels: Optional[Dict[str, str]] = None,
    config_parts: str = "",
) -> Dict[str, str]:
    labels = dict(user_labels or {})
    labels.update(
        {
            MANAGED_BY: MANAGED_BY_VALUE,
            PROJECT: project,
            SERVICE: service,
            REPLICA: str(replica),
            ENV: env,
            CONFIG_HASH: config_hash,
        }
    )
    if release:
        labels[RELEASE] = release
    if config_parts:
        labels[CONFIG_PARTS] = config_parts
    return labels


def resource_labels(project: str, name: str, env: str = "") -> Dict[str, str]:
    labels = {MANAGED_BY: MANAGED_BY_VALUE, PROJECT: project, NAME: name}
    if env:
        labels[ENV] = env
    return labels


def filters(project: Optional[str] = None, service: Optional[str] = None, env: Optional[str] = None) -> list:
    """Docker label filters selecting our objects (all of ours when project is None)."""
    out = [PROJECT + "=" + project] if project else [PROJECT]
    if service:
        out.append(SERVICE + "=" + service)
    if env:
        out.append(ENV + "=" + env)
    return out


def is_ours(labels: Optional[Dict[str, str]]) -> bool:
    return bool(labels) and PROJECT in labels


def env_of(labels: Optional[Dict[str, str]]) -> str:
    """The environment an object was made for ("" for objects from before env labels)."""
    return (labels or {}).get(ENV) or ""


def other_env(labels: Optional[Dict[str, str]], env: str) -> str:
    """The other environment an object belongs to, or "" when `env` may touch it: one
    project deployed by two environments to one engine would share every name, so an
    environment never changes or removes what another one made (agent.owner)."""
    found = env_of(labels)
    return found if found and found != (env or "") else ""
