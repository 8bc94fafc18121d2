"""A copy of examples/hello as its own project (-p e2e...-XXXXXX) on its own host ports,
for the pipeline tests (test_pipeline, test_rollback, test_registry_down).

Every command runs in the copy's folder with HELLO_WEB_PORT / HELLO_API_PORT set, so
two test modules (or `make demo`) never collide on a node's ports.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from .helpers import http_get, last_json

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hello"
ORCH = str(Path(sys.executable).parent / "orch")
ENVS = ("dev", "test", "prod")
HOSTS = {"dev": ["10.250.0.11"], "test": ["10.250.0.21"], "prod": ["10.250.0.31", "10.250.0.32"]}


def events(stdout: str) -> list[dict]:
    return [json.loads(ln) for ln in stdout.strip().splitlines() if ln.startswith('{"event"')]


class Hello:
    def __init__(self, tmp: Path, tag: str):
        self.dir = tmp / "hello"
        shutil.copytree(EXAMPLE, self.dir)
        self.name = f"e2e{tag}-{uuid.uuid4().hex[:6]}"
        base = random.randint(410, 499) * 100 + random.randint(0, 48) * 2
        self.web_port, self.api_port = base, base + 1
        self.vars = {"HELLO_WEB_PORT": str(self.web_port), "HELLO_API_PORT": str(self.api_port),
                     "ORCH_LOCK_WAIT": os.environ.get("ORCH_LOCK_WAIT", "600")}

    def run(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 900
            ) -> subprocess.CompletedProcess:
        cp = subprocess.run([ORCH, *args], cwd=self.dir, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **self.vars, **(env or {})})
        if check:
            assert cp.returncode == 0, f"orch {' '.join(args)} exited {cp.returncode}:\n{cp.stdout[-4000:]}\n" \
                                       f"{cp.stderr[-4000:]}"
        return cp

    def popen(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen([ORCH, *args], cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**os.environ, **self.vars, **(env or {})})

    # commands with the project's name where they take it
    def up(self, env: str, *args: str, check: bool = True, **kw) -> tuple[dict, subprocess.CompletedProcess]:
        cp = self.run("up", "--env", env, "-p", self.name, "--json", *args, check=check, **kw)
        return last_json(cp.stdout), cp

    def promote(self, to: str, *args: str, check: bool = True, **kw) -> tuple[dict, subprocess.CompletedProcess]:
        cp = self.run("promote", self.name, "--to", to, "--json", *args, check=check, **kw)
        return last_json(cp.stdout), cp

    def verify(self, env: str, check: bool = True) -> tuple[dict, subprocess.CompletedProcess]:
        cp = self.run("verify", "--env", env, "-p", self.name, "--json", check=check)
        return last_json(cp.stdout), cp

    def rollback(self, env: str, *args: str, check: bool = True) -> tuple[dict, subprocess.CompletedProcess]:
        cp = self.run("rollback", "--env", env, "-p", self.name, "--json", *args, check=check)
        return last_json(cp.stdout), cp

    def ps(self, env: str) -> list[dict]:
        return last_json(self.run("ps", "--env", env, "-p", self.name, "--json").stdout)["containers"]

    def history(self, env: str) -> dict:
        return last_json(self.run("history", "--env", env, "-p", self.name, "--json").stdout)

    def digests(self, env: str) -> dict[str, set[str]]:
        """{service: {digest of every running replica}} from `orch ps --json`."""
        out: dict[str, set[str]] = {}
        for c in self.ps(env):
            assert c["state"] == "running" and c["health"] == "healthy", c
            out.setdefault(c["service"], set()).add(c["digest"])
        return out

    def health(self, env: str) -> list[dict]:
        return [json.loads(http_get(f"http://{h}:{self.api_port}/health.json")) for h in HOSTS[env]]

    def down_everywhere(self) -> None:
        for env in ENVS:
            self.run("down", "--env", env, "-p", self.name, "--json", check=False)

    def remove_local_images(self) -> None:
        """Drop this project's tags from the host engine (the layers stay cached)."""
        try:
            from orchestrator.io.images import docker_client

            api = docker_client().api
            for image in api.images():
                for tag in image.get("RepoTags") or []:
                    if f"/{self.name}/" in tag:
                        api.remove_image(tag)
        except Exception:
            pass
