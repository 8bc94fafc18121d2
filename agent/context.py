"""What an operation runs with (Context): the engine, the state directory, events,
cancellation, a clock. Every operation takes (ctx, args)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from agent.wire.protocol import CANCELLED, AgentError


@dataclass
class Context:
    """What an operation may use: the engine, the state directory, events, cancellation."""

    engine_factory: Callable[[], Any]
    state_dir: str
    emit: Callable[..., None] = lambda type_, **data: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # The engine's ID without connecting the docker SDK (rpc.Server: engine.engine_id_from_socket),
    # so the deploy lock costs no SDK import; None: ask the engine.
    engine_id: Optional[Callable[[], str]] = None
    # The node's ingress for rollouts (agent.rollout.IngressDriver); None: the real one.
    ingress: Any = None
    # What the mesh changes on the host (agent.mesh.host.NodeHost); None: the real one.
    mesh_host: Any = None
    # A reader for queries without the docker SDK (rpc.Server: agent.engine_reads), or
    # None when there is none or the SDK is connected already; None: use the engine.
    reader: Optional[Callable[[], Any]] = None
    _engine: Any = None

    @property
    def engine(self) -> Any:
        # Lazy, so hello/version work on a node whose Docker Engine is down.
        if self._engine is None:
            self._engine = self.engine_factory()
        return self._engine

    @property
    def reads(self) -> Any:
        """For operations that only read containers (containers(), container())."""
        if self._engine is None and self.reader is not None:
            found = self.reader()
            if found is not None:
                return found
        return self.engine

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise AgentError(CANCELLED, "cancelled by the controller")

    def data_dir(self) -> str:
        """Per-engine data (secret files, later the ledger): several engines may share a
        filesystem (the local lab), so data is keyed by the engine's ID."""
        raw = self.engine_id() if self.engine_id is not None else self.engine.engine_id()
        engine_id = raw.replace(":", "-").replace("/", "-") or "default"
        return os.path.join(self.state_dir, "engines", engine_id)
