"""From the Compose model to what each node's agent is asked to run. Pure: no network.

Two steps, so that everything the user got wrong is found before any connection:

1. `compile_blueprint(project, environment, services)` (compile.py) validates the project
   for deployment and turns every service into the shared part of its agent spec (the
   ContainerSpec JSON of agent.wire.spec: ports, volumes and networks in
   ports_volumes_networks.py, secret and config contents in secrets_configs.py), its
   readiness (what a rollout waits for; healthcheck and restart: readiness.py) and its
   placement request. Compose keys that cannot be honoured are refused (InputError) or
   ignored with one warning per key (keys.py; docs/compose-support.md lists which).
2. `Blueprint.units(slots, node_order, mesh, release)` (blueprint.py) takes the placement
   (service -> replica slots on nodes) and makes one `Unit` per (service, node): the
   ServiceSpec JSON sent to that node's agent, with the id of the release being deployed,
   its networks in the environment's service mesh and the config hash
   (agent.wire.spec.config_hash) that decides recreation.

Pure: the contents of secret/config files and variables named in the Compose file come in
through `Sources` (orchestrator.io.files.local_sources reads the controller's).
"""

from orchestrator.core.specs.blueprint import (Blueprint, ServiceBlueprint, Unit, check_port_conflicts,
                                               place_services)
from orchestrator.core.specs.compile import compile_blueprint, node_infos
from orchestrator.core.specs.keys import IGNORED, REFUSED, x_orch_warnings
from orchestrator.core.specs.readiness import READINESS
from orchestrator.core.specs.secrets_configs import MAX_FILE_BYTES, Sources

__all__ = [
    "Blueprint", "ServiceBlueprint", "Unit", "check_port_conflicts", "place_services",
    "MAX_FILE_BYTES", "READINESS", "Sources", "compile_blueprint", "node_infos",
    "IGNORED", "REFUSED", "x_orch_warnings",
]
