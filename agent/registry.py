"""Which function serves an operation, imported on first use.

Every session starts with hello and a `state` read, and a no-op deploy adds only the lock and
the ledger: those come from light modules. Every other operation is looked up in
agent.operations.OPERATIONS, whose import (rollout, ingress, mesh, certificates, transfer:
about 0.1 s on a small node) is paid only by a session that needs one of them.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

# op -> (module, function); tests/unit/test_agent_registry.py checks each is the very
# function agent.operations.OPERATIONS registers.
LIGHT: Dict[str, Tuple[str, str]] = {
    "hello": ("agent.basics", "op_hello"),
    "info": ("agent.basics", "op_info"),
    "state": ("agent.basics", "op_state"),
    "lock_acquire": ("agent.lock", "op_lock_acquire"),
    "lock_release": ("agent.lock", "op_lock_release"),
    "lock_status": ("agent.lock", "op_lock_status"),
    "release_list": ("agent.ledger", "op_release_list"),
    "release_get": ("agent.ledger", "op_release_get"),
    "release_put": ("agent.ledger", "op_release_put"),
}

Operation = Callable[[Any, Dict[str, Any]], Dict[str, Any]]


class Operations(Mapping):
    """agent.operations.OPERATIONS, with the light operations served without importing it."""

    def get(self, op: str, default: Optional[Operation] = None) -> Optional[Operation]:  # type: ignore[override]
        if op in LIGHT:
            module, name = LIGHT[op]
            return getattr(importlib.import_module(module), name)
        return self._all().get(op, default)

    def __getitem__(self, op: str) -> Operation:
        found = self.get(op)
        if found is None:
            raise KeyError(op)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    @staticmethod
    def _all() -> Dict[str, Operation]:
        from agent.operations import OPERATIONS

        return OPERATIONS
