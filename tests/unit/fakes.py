"""Fakes shared by the unit tests (import them from here, never from another test module)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import requests

from agent.context import Context
from agent.fake import FakeEngine, FakeMeshHost
from agent.operations import OPERATIONS
from agent.wire.protocol import AgentError as RawAgentError
from orchestrator.app import pipeline as P
from orchestrator.app import release as PR
from orchestrator.app import up as PU
from orchestrator.app.workspace import ProjectOptions, load_with_base, load_workspace
from orchestrator.core import releases as R
from orchestrator.core.images import VersionInfo
from orchestrator.core.progress import Progress
from orchestrator.io import ledger as RL
from orchestrator.io import transport as T
from orchestrator.io.images import ImageSet


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


PIPELINE_COMPOSE = """\
name: hello
services:
  api:
    image: api-src
    environment:
      HELLO_ENV: ${HELLO_ENV:-local}
      NOTE: ${NOTE:-one}
      DB_PASSWORD: ${DB_PASSWORD:-hunter22}
    ports: ["8091:8081"]
    healthcheck: {test: ["CMD", "true"], interval: 1s}
  web:
    image: web-src
    ports: ["8090:8080"]
    depends_on: {api: {condition: service_healthy}}
"""

PIPELINE_ENV = """\
name: {name}
{promote}
nodes:
{nodes}
registry: {{address: reg.test:5000}}
gates: {{approval: {approval}, verification: {verification}}}
verify:
  on_deploy: true
  checks:
    - name: home
      service: web
      http: "http://{{{{ node.host }}}}:{{{{ service.port }}}}/"
overlay:
  services:
    api:
      environment:
        HELLO_ENV: "{{{{ env.name }}}}"
"""

PIPELINE_NODES = {"dev": ["d1"], "test": ["t1"], "prod": ["p1", "p2"]}
PERF = R.Performer(user="Ada <ada@example.com>", host="ci-1", login="ada")


def digest(text):
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class World:
    """The hello project (api, web) in three environments dev -> test -> prod over fake nodes
    (the agent's real operations on FakeEngines), with fake images, HTTP checks and performer;
    up(), promote() and rollback() run the pipeline's use cases."""

    def __init__(self, tmp_path):
        self.dir = tmp_path / "app"
        self.dir.mkdir()
        self.nodes = {}
        for env, names in PIPELINE_NODES.items():
            for i, n in enumerate(names):
                node = FakeNode(n, tmp_path / "state" / n)
                node.engine.id = f"FAKE:{n}"
                self.nodes[n] = node
        self.connects = []
        self.version = 1
        self.environ = {}
        self.checks_ok = True
        self.checked = []
        self.images_calls = 0
        self.images_error = None
        self.write_compose(PIPELINE_COMPOSE)
        envs = self.dir / "environments"
        envs.mkdir()
        for env, names in PIPELINE_NODES.items():
            promote = {"dev": "", "test": "promote_from: dev", "prod": "promote_from: test"}[env]
            nodes = "\n".join(f"  - {{name: {n}, host: 10.250.0.{200 + i}}}" for i, n in enumerate(names))
            (envs / f"{env}.yaml").write_text(PIPELINE_ENV.format(
                name=env, promote=promote, nodes=nodes, approval=str(env == "prod").lower(),
                verification=str(env == "prod").lower()))

    def write_compose(self, text):
        (self.dir / "compose.yaml").write_text(textwrap.dedent(text))

    def pins(self, project):
        return {n: f"reg.test:5000/{project.name}/{n}@{digest(f'{n}-v{self.version}')}" for n in project.services}

    def prepare_images(self, project, env, **kw):
        self.images_calls += 1
        if self.images_error is not None:
            raise self.images_error
        pins = self.pins(project)
        for node in self.nodes.values():
            for ref in pins.values():
                node.engine.registry.add(ref)
        return ImageSet(VersionInfo(f"v{self.version}", "override"), pins)

    def connector(self, environment, progress, project=None):
        self.connects.append(environment.name)
        return {n.name: self.nodes[n.name] for n in environment.nodes}

    def http(self, target):
        from orchestrator.core.verify import CheckResult

        self.checked.append(target.url)
        return CheckResult(target.name, "http", target.url, self.checks_ok, 1, 0.0, target.node, target.service,
                           200 if self.checks_ok else 500, "" if self.checks_ok else "HTTP 500 (expected 200)")

    def seams(self, **kw):
        base = dict(connector=self.connector, images=self.prepare_images, preflight=lambda env, services: None,
                    check_runners={"http": self.http}, performer=PERF, environ=self.environ)
        base.update(kw)
        return P.Seams(**base)

    def workspaces(self, env):
        return load_with_base(ProjectOptions(files=[self.dir / "compose.yaml"], env_name=env), environ=self.environ)

    def up(self, env="dev", **opts):
        ws, base = self.workspaces(env)
        return PU.up(ws, base, P.PipelineOptions(**opts), Progress(), self.seams())

    def environment(self, env):
        from orchestrator.core.environments import load_environment

        return load_environment(env, self.dir / "environments")

    def promote(self, to, approve=False, **opts):
        target = self.environment(to)
        source = self.environment(target.promote_from)
        today = self.workspaces(to)[1]
        return PR.promote("hello", target, source, P.PipelineOptions(approve=approve, **opts), Progress(),
                         self.seams(), today=today, working_dir=self.dir)

    def rollback(self, env="prod", to=None, **opts):
        ws, _ = self.workspaces(env)
        return PR.rollback("hello", ws.environment, P.PipelineOptions(**opts), to=to, progress=Progress(),
                          seams=self.seams(), today=ws.project, working_dir=self.dir)

    def history(self, env):
        sessions = {n: self.nodes[n] for n in PIPELINE_NODES[env]}
        return RL.ReleaseLedger(sessions, "hello", env).history()

    def running(self, env):
        """{service: {image, env}} of the running containers (one per service, checked equal)."""
        out = {}
        for n in PIPELINE_NODES[env]:
            for rec in self.nodes[n].engine.records.values():
                info = rec["info"]
                if info["labels"].get("io.orch.project") != "hello" or info["state"] != "running":
                    continue
                env_list = rec["body"].get("Env") or []
                entry = {"image": info["image"], "env": dict(e.split("=", 1) for e in env_list),
                         "release": info["labels"].get("io.orch.release")}
                svc = info["labels"]["io.orch.service"]
                assert out.setdefault(svc, entry)["image"] == entry["image"]
        return out


# `orch config` in a subprocess on a one-service project (hostile input, template sandbox)
ENV_FILE = "name: dev\nnodes:\n  - name: dev-1\n    host: 127.0.0.1\n"
SERVICE = "services:\n  web:\n    image: busybox\n"


def orch_process(args: list[str], cwd: Path) -> tuple[int, dict, str]:
    """`orch ARGS --json` in a new process in cwd: (exit code, final object, stderr)."""
    proc = subprocess.run([sys.executable, "-c", "from orchestrator.cli import main; main()", *args, "--json"],
                          cwd=cwd, capture_output=True, text=True, timeout=10)
    assert "Traceback" not in proc.stderr, proc.stderr
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    return proc.returncode, final, proc.stderr


def refused(cwd: Path, *args: str) -> dict:
    """The one problem `orch config` reports, after checking it is exit 2."""
    code, final, stderr = orch_process(["config", *args], cwd)
    assert code == 2, (final, stderr)
    problems = final["error"]["problems"]
    assert len(problems) == 1, problems
    assert problems[0].get("fix"), problems
    return problems[0]


# A scripted HTTP session for the registry client (no network)
DIGEST = "sha256:" + "a" * 64


class FakeResponse:
    def __init__(self, status=200, headers=None, body=b"", json_body=None):
        self.status_code = status
        self.headers = requests.structures.CaseInsensitiveDict(headers or {})
        import json

        self.content = json.dumps(json_body).encode() if json_body is not None else body
        self.text = self.content.decode()

    def json(self):
        import json

        return json.loads(self.content)


class FakeSession:
    """Answers requests from a handler(method, url, headers, auth, params) -> FakeResponse or exception."""

    def __init__(self, handler):
        self.handler = handler
        self.calls = []
        self.sent = []  # (method, url, body) of the requests that carried one

    def request(self, method, url, headers=None, auth=None, verify=None, timeout=None, stream=False,
                allow_redirects=True, data=None):
        self.calls.append((method, url, dict(headers or {}), auth, verify))
        if data is not None:
            self.sent.append((method, url, data))
        out = self.handler(method, url, headers or {}, auth, None)
        if isinstance(out, Exception):
            raise out
        return out

    def get(self, url, params=None, auth=None, verify=None, timeout=None):
        self.calls.append(("GET", url, {}, auth, verify, params))
        out = self.handler("GET", url, {}, auth, params)
        if isinstance(out, Exception):
            raise out
        return out


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeBlobRegistry:
    """A registry's blobs and manifests by digest, per repository (the RegistryClient calls
    orchestrator.io.archive uses); records every write."""

    def __init__(self, address: str):
        self.address = address
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.writes: list[tuple[str, str, str]] = []

    def add_image(self, repo: str, layers: list[bytes]) -> str:
        config = json.dumps({"rootfs": {"diff_ids": [_sha256(x) for x in layers]}}).encode()
        for b in [config, *layers]:
            self.blobs[(repo, _sha256(b))] = b
        body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                           "config": {"digest": _sha256(config), "size": len(config)},
                           "layers": [{"digest": _sha256(x), "size": len(x)} for x in layers]}).encode()
        self.manifests[(repo, _sha256(body))] = ("application/vnd.docker.distribution.manifest.v2+json", body)
        return _sha256(body)

    def manifest(self, repo, digest, accept=()):
        from orchestrator.io.registry_client import Manifest

        media, body = self.manifests[(repo, digest)]
        return Manifest(media, digest, body)

    def blob(self, repo, digest):
        return self.blobs[(repo, digest)]

    def blob_exists(self, repo, digest):
        return (repo, digest) in self.blobs

    def put_blob(self, repo, digest, data):
        assert _sha256(data) == digest and (repo, digest) not in self.blobs
        self.blobs[(repo, digest)] = data
        self.writes.append(("blob", repo, digest))

    def put_manifest(self, repo, ref, media, body):
        self.manifests[(repo, ref)] = (media, body)
        self.writes.append(("manifest", repo, ref))
        return _sha256(body)

    def manifest_digest(self, repo, ref):
        return ref if (repo, ref) in self.manifests else None


# --------------------------------------------------------------------------- HTTPS at the edge

class FakeEdgeNode:
    """A node's ingress routes, certificate store and certificate daemon in memory: the
    agent.wire.tls operations as agent.certs answers them (fake certificates: the
    fingerprint changes with each order), plus ingress_status's frontends."""

    def __init__(self, name):
        self.name = name
        self.calls = []
        self.frontends = []  # ServiceIngress dicts (project, env, service, route)
        self.certs = {}  # (env, host) -> CertInfo dict
        self.certd = {}  # env -> {"config": CertdConfig dict, "running": bool}
        self.orders = 0
        self.issuer = None  # the FakeEdgeNode a follower pulls from

    def route(self, project, env, service, hosts, tls="auto"):
        self.frontends.append({"project": project, "env": env, "service": service,
                               "route": {"hosts": list(hosts), "tls": tls}})

    def ops(self, prefix=""):
        return [op for op, _ in self.calls if op.startswith(prefix)]

    def _status(self, env):
        from agent.wire.tls import CertdConfig, CertdResult, config_id, secret_id

        d = self.certd.get(env)
        if d is None:
            return None
        cfg = CertdConfig.parse(d["config"])
        certs = tuple(self._info(env, h) for h in cfg.hosts if (env, h) in self.certs)
        return CertdResult(env=env, role=cfg.role, certs=certs, running=d["running"], config_id=config_id(cfg),
                           secret_id=secret_id(cfg.secret))

    def _info(self, env, host):
        from agent.wire.tls import CertInfo

        return CertInfo.from_dict(self.certs[(env, host)])

    def _issue(self, env, host, source="auto", fingerprint=None):
        self.orders += 1
        self.certs[(env, host)] = {"host": host, "source": source, "env": env,
                                   "fingerprint": fingerprint or f"{self.name}-{host}-{self.orders}".ljust(64, "0"),
                                   "issuer": "Pebble Intermediate CA", "not_before": "2026-12-01T00:00:00Z",
                                   "not_after": "2099-01-01T00:00:00Z", "names": [host], "loaded": True}

    def call(self, op, args=None, on_event=None, timeout=None):
        from agent.wire.tls import CertdConfig, CertPut, parse_ensure

        args = args or {}
        self.calls.append((op, args))
        env = args.get("env", "")
        if op == "ingress_status":
            return {"frontends": [dict(f) for f in self.frontends]}
        if op == "tls_certs":
            st = self._status(env)
            return {"certs": [self.certs[k] for k in sorted(self.certs) if k[0] == env],
                    "certd": st.to_dict() if st else None}
        if op == "tls_cert_put":
            import hashlib

            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import Encoding

            put = CertPut.parse(args)
            leaf = x509.load_pem_x509_certificates(put.cert_pem.encode())[0]
            self._issue(put.env, put.host, "files", fingerprint=hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest())
            return {"cert": self.certs[(put.env, put.host)]}
        if op == "tls_cert_remove":
            return {"removed": self.certs.pop((env, args["host"]), None) is not None}
        if op == "certd_configure":
            cfg = CertdConfig.parse(args)
            self.certd[cfg.env] = {"config": cfg.to_dict(), "running": True}
            return self._status(cfg.env).to_dict()
        if op == "certd_ensure":
            env, hosts, force = parse_ensure(args)
            cfg = CertdConfig.parse(self.certd[env]["config"])
            ordered = [h for h in (hosts or cfg.hosts) if force or (env, h) not in self.certs]
            for h in ordered:
                self._issue(env, h)
            from dataclasses import replace

            return replace(self._status(env), ordered=tuple(ordered)).to_dict()
        if op == "certd_pull":
            cfg = CertdConfig.parse(self.certd[env]["config"])
            for h in cfg.hosts:
                if self.issuer is not None and (env, h) in self.issuer.certs:
                    self.certs[(env, h)] = dict(self.issuer.certs[(env, h)])
            return self._status(env).to_dict()
        if op == "certd_status":
            st = self._status(env)
            return st.to_dict() if st else {"env": env, "role": ""}
        if op == "certd_leave":
            left = self.certd.pop(env, None) is not None
            for k in [k for k, c in self.certs.items() if k[0] == env and c["source"] == "auto"]:
                del self.certs[k]
            return {"left": left}
        raise AssertionError(f"FakeEdgeNode: unexpected op {op}")
