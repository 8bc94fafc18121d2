"""Fakes shared by the unit tests (import them from here, never from another test module)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

from agent.context import Context
from agent.fake import FakeEngine, FakeMeshHost
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError as RawAgentError
from orchestrator.app.workspace import ProjectOptions, load_workspace
from orchestrator.io import transport as T


class FakeClock:
    """A fake monotonic clock for the agent's and the controller's waits: calling it gives
    the time; sleep() only moves it on, records what was slept, and then runs the
    on_sleep hooks with the new time (what is due then happens "during" the sleep)."""

    START = 1000.0

    def __init__(self) -> None:
        self.now = self.START
        self.slept: list[float] = []
        self.on_sleep: list = []

    def __call__(self) -> float:
        return self.now

    @property
    def elapsed(self) -> float:
        return self.now - self.START

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        for hook in list(self.on_sleep):
            hook(self.now)


IMAGES = ["busybox", "job", "fail", "sick", "slow"]
BEHAVIOURS = {"job": "exit:0", "fail": "exit:3", "sick": "unhealthy"}


class FakeNode:
    """The SSHNode interface over the agent's real operations and a FakeEngine."""

    def __init__(self, name, state_dir):
        self.name = name
        self.engine = FakeEngine(images=IMAGES, behaviours=BEHAVIOURS)
        self.mesh_host = FakeMeshHost(name)  # never the real host: no link, firewall or daemon here
        self.state_dir = state_dir
        self.calls = []
        self.lock = threading.Lock()
        self.prefetched_state = None
        self.closed = False
        self.fail_state = None

    def _ctx(self, emit):
        clock = FakeClock()
        return Context(engine_factory=lambda: self.engine, state_dir=str(self.state_dir), emit=emit,
                       clock=clock, sleep=clock.sleep, mesh_host=self.mesh_host)

    def call(self, op, args=None, on_event=None, timeout=None):
        with self.lock:
            self.calls.append((op, args or {}))
            if op == "state" and self.fail_state is not None:
                raise self.fail_state
            emit = (lambda t, **d: on_event(dict(d, type=t))) if on_event else (lambda t, **d: None)
            try:
                return OPERATIONS[op](self._ctx(emit), args or {})
            except RawAgentError as err:
                raise T.AgentError(self.name, op, err.kind, err.message, err.details) from None

    @contextmanager
    def stream(self, op, args=None):
        events = []
        result = self.call(op, args, on_event=events.append)

        class S:
            def __iter__(self):
                return iter(events)

        s = S()
        s.result = result
        yield s

    def lock_session(self):
        """Like SSHNode.lock_session (the deploy lock): the same agent operations."""
        node = self

        class Session:
            closed = False

            def call(self, op, args=None, on_event=None, timeout=None):
                return node.call(op, args, on_event, timeout)

            def close(self):
                self.closed = True

        return Session()

    def close(self):
        self.closed = True

    def ops(self, name=None):
        return [op for op, _ in self.calls if name is None or op == name]

    def applied(self):
        return [a["spec"]["service"] for op, a in self.calls if op == "rollout"]


ENV = """\
name: {name}
nodes:
  - {{name: n1, host: 10.250.0.201, labels: {{role: web}}}}
  - {{name: n2, host: 10.250.0.202, labels: {{role: web}}}}
"""

SHOP = """\
name: shop
services:
  db:
    image: busybox
    ports: ["5432:5432"]
    volumes: [data:/data]
    healthcheck: {test: ["CMD", "true"], interval: 1s}
    restart: always
  migrate:
    image: job
    restart: "no"
    depends_on: {db: {condition: service_healthy}}
  api:
    image: busybox
    environment: {VERSION: "${VERSION:-1}"}
    ports: ["8081:8081"]
    healthcheck: {test: ["CMD", "true"], interval: 1s}
    depends_on:
      db: {condition: service_healthy}
      migrate: {condition: service_completed_successfully}
  web:
    image: busybox
    ports: ["8080:80"]
    depends_on: {api: {condition: service_healthy}}
    deploy: {replicas: 2}
  worker:
    image: busybox
    depends_on: [api]
volumes:
  data: {}
"""


def ws(lab, compose=SHOP, env="dev", environ=None):
    (lab.dir / "compose.yaml").write_text(textwrap.dedent(compose))
    envs = lab.dir / "environments"
    envs.mkdir(exist_ok=True)
    (envs / f"{env}.yaml").write_text(ENV.format(name=env))
    return load_workspace(ProjectOptions(files=[lab.dir / "compose.yaml"], env_name=env), environ=environ or {})


# A real agent process (agent.rpc over a FakeEngine) on a state dir, as sshd starts it:
# it ends on end of input, and gives up on SIGTERM as on a lost lease (orch lock break).
_AGENT_PROCESS = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, %r)
    from agent.fake import FakeEngine, FakeMeshHost
    from agent.rpc import Server
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    sys.stdout = sys.stderr
    server = Server(sys.stdin.buffer, out, FakeEngine, sys.argv[1])
    server.give_up_on_sigterm()
    sys.exit(server.finish(server.serve()))
""") % str(Path(__file__).resolve().parents[2])


class AgentProcess:
    """One agent process; call() sends a request and returns its answer (events skipped)."""

    def __init__(self, state: str):
        self.p = subprocess.Popen([sys.executable, "-c", _AGENT_PROCESS, state], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE)
        self.n = 0

    def call(self, op: str, args: dict) -> dict:
        self.n += 1
        self.p.stdin.write((json.dumps({"v": 1, "id": self.n, "op": op, "args": args}) + "\n").encode())
        self.p.stdin.flush()
        while True:
            msg = json.loads(self.p.stdout.readline())
            if msg.get("id") == self.n and "event" not in msg:
                return msg
