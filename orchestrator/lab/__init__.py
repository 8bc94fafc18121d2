"""The local lab: real DEV/TEST/PROD nodes (netns + own dockerd + own sshd) and a
TLS registry on one Linux machine. `orch lab up|down|status`; see docs/lab.md.

Public API (cheap to import: stdlib only):
    lab_info(name=None) -> LabInfo   facts of a lab that is up (paths, addresses)
    LabInfo, NodeInfo                 see orchestrator.lab.info
    DEFAULT_NAME                      "orch-lab"
The effectful entry points are orchestrator.lab.up.up, .down.down, .status.check.
"""

from orchestrator.lab.info import LabInfo, NodeInfo, lab_info
from orchestrator.lab.model import DEFAULT_NAME

__all__ = ["DEFAULT_NAME", "LabInfo", "NodeInfo", "lab_info"]
