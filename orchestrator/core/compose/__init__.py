"""Loading Compose files the way `docker compose` does, into typed objects.

    from orchestrator.core.compose import LoadOptions, load_project
    project = load_project(LoadOptions(files=[Path("compose.yaml")]))
    project.services["web"].ports[0].published
    project.to_dict(); project.to_yaml()

Modules: discovery (files, .env, project name), interpolate (${VAR}), envfile
(dotenv syntax), merge (multi-file rules, !reset/!override), include, extends,
paths (relative -> absolute), schema (known keys, types, did-you-mean), profiles,
normalize (raw -> canonical model), checks (cross references), model (dataclasses),
render (to_dict / to_yaml), loader (the pipeline).
"""

from .loader import LoadOptions, Overlay, load_project
from .model import (
    CONDITIONS,
    BuildConfig,
    Config,
    Deploy,
    DependsOn,
    EnvFile,
    FileRef,
    Healthcheck,
    Logging,
    Network,
    Placement,
    PortMapping,
    Project,
    ResourceSpec,
    RestartPolicy,
    Secret,
    Service,
    ServiceNetwork,
    UpdateConfig,
    Volume,
    VolumeMount,
)
from .units import format_duration, parse_bytes, parse_duration

__all__ = [
    "LoadOptions", "Overlay", "load_project", "Project", "Service", "DependsOn", "PortMapping",
    "VolumeMount", "FileRef", "BuildConfig", "Healthcheck", "Deploy", "ResourceSpec",
    "RestartPolicy", "UpdateConfig", "Placement", "ServiceNetwork", "Logging", "EnvFile",
    "Network", "Volume", "Secret", "Config", "CONDITIONS", "parse_duration", "format_duration",
    "parse_bytes",
]
