"""Helpers shared by the end-to-end test modules (import them from here, never from
another test module): reading orch's JSON output, HTTP gets with retries, the shop example
as a project of its own, an environment file for the lab's dev-1, and a steady HTTP load."""

from __future__ import annotations

import http.client
import json
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOP_EXAMPLE = ROOT / "examples" / "shop"


def sigint_default() -> None:
    """Popen's preexec_fn for a child the test stops with SIGINT (Ctrl-C). A suite started in
    the background (`make test &`: no job control) hands SIGINT down ignored, and Python then
    never raises KeyboardInterrupt in the child (test_look's stats ran on for 30 s)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _json_or_none(line: str) -> dict | None:
    try:
        found = json.loads(line)
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    assert lines, f"no JSON in output:\n{stdout}"
    return json.loads(lines[-1])


def http_get(url: str, attempts: int = 20, timeout: float = 3.0) -> str:
    for i in range(attempts):
        try:
            return urllib.request.urlopen(url, timeout=timeout).read().decode().strip()
        except OSError:
            if i == attempts - 1:
                raise
            time.sleep(0.25)
    raise AssertionError("unreachable")


class Shop:
    """A copy of examples/shop deployed as its own project on its own host ports."""

    def __init__(self, orch, tmp: Path, env: str, name: str, extra_env: dict | None = None):
        self.run_orch = orch
        self.dir = tmp / "shop"
        shutil.copytree(SHOP_EXAMPLE, self.dir)
        self.env = env
        self.project = f"e2e-{name}-{uuid.uuid4().hex[:6]}"
        base = random.randint(300, 399) * 100
        self.ports = {"WEB_PORT": base, "API_PORT": base + 1, "DB_PORT": base + 2}
        self.vars = {k: str(v) for k, v in self.ports.items()}
        self.vars.update(extra_env or {})

    @property
    def compose(self) -> Path:
        return self.dir / "compose.yaml"

    def orch(self, *args: str, check: bool = True, env: dict | None = None, timeout: float = 600):
        command, *rest = args  # common options right after the command: before any `--`
        return self.run_orch(command, "--env", self.env, "--file", str(self.compose), "-p", self.project, *rest,
                             check=check, env={**self.vars, **(env or {})}, timeout=timeout)

    def up(self, *args: str, env: dict | None = None) -> dict:
        cp = self.orch("up", "--json", *args, env=env)
        final = last_json(cp.stdout)
        assert final["status"] in ("ok", "planned"), cp.stdout + cp.stderr
        final["_stderr"] = cp.stderr
        final["_events"] = [e for e in map(_json_or_none, cp.stdout.splitlines()) if e and "event" in e]
        return final

    def ps(self) -> list[dict]:
        return last_json(self.orch("ps", "--json").stdout)["containers"]

    def ids(self) -> dict[str, str]:
        return {c["name"]: c["id"] for c in self.ps()}

    def down(self) -> None:
        self.orch("down", "--volumes", "--json", check=False)


def env_file(directory, lab, name="dev", extra_nodes=(), known_hosts=None, connect_timeout=3):
    directory.mkdir(parents=True, exist_ok=True)
    node = lab.node("dev-1")
    nodes = [("dev-1", node.address)] + list(extra_nodes)
    text = f"name: {name}\nnodes:\n"
    for n, host in nodes:
        text += f"  - {{name: {n}, host: {host}, user: {lab.ssh_user}, identity_file: {lab.ssh_key}}}\n"
    text += (f"ssh: {{known_hosts: {known_hosts or lab.known_hosts}, connect_timeout: {connect_timeout}}}\n")
    # `image: busybox` is pinned to a digest through the lab's Docker Hub mirror
    text += f"registry: {{mirror: {lab.registry_mirror}, ca_file: {lab.ca_cert}}}\n"
    (directory / f"{name}.yaml").write_text(text)
    return directory


class Load:
    """GET / at a fixed rate, each on a new connection; every answer is recorded."""

    def __init__(self, host, port, rate):
        self.host, self.port, self.interval = host, port, 1.0 / rate
        self.results = []  # (due at, finished at, body or None, error, connected at)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=24)
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, sent):
        body, error = None, ""
        began = time.monotonic()  # >= sent: when the connection was really opened
        try:
            c = http.client.HTTPConnection(self.host, self.port, timeout=5)
            c.request("GET", "/", headers={"Connection": "close"})
            r = c.getresponse()
            data = r.read().decode()
            c.close()
            if r.status == 200:
                body = data
            else:
                error = "HTTP %d %s" % (r.status, data[:80])
        except Exception as exc:  # any failure counts
            error = "%s: %s" % (type(exc).__name__, exc)
        with self._lock:
            self.results.append((sent, time.monotonic(), body, error, began))

    def answered_since(self, mark):
        """Requests opened at or after `mark` that have finished (answered or failed)."""
        with self._lock:
            return [r for r in self.results if r[4] >= mark]

    def wait_for(self, n, mark, what, timeout=120):
        """Wait until n requests opened after `mark` have finished: the load really ran
        through that step. A wait with a generous deadline, not a speed check."""
        deadline = time.monotonic() + timeout
        while len(self.answered_since(mark)) < n:
            assert time.monotonic() < deadline, (
                "only %d of %d requests opened %s had finished after %d s" % (len(self.answered_since(mark)), n,
                                                                             what, timeout))
            time.sleep(0.05)

    def _run(self):
        next_at = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(min(next_at - now, 0.05))
                continue
            self._pool.submit(self._one, next_at)
            next_at += self.interval

    def start(self):
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)
        self.seconds = time.monotonic() - self.started
        return sorted(self.results)


def get(host, port):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", "/")
    r = c.getresponse()
    return r.status, r.read().decode()


# --------------------------------------------------------------------------- without a registry

# A web image of its own: a 3 MB base layer, then SIZE random bytes and TEXT in one layer.
REGISTRYLESS_DOCKERFILE = """\
FROM busybox
RUN head -c 3000000 /dev/urandom > /base
RUN mkdir -p /www && head -c {size} /dev/urandom > /www/blob && echo "{text}" > /www/index.html
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
"""


def registry_manifest(node: str, repository: str, digest: str) -> dict:
    """The manifest in a node's loopback registry, read inside the node's network namespace."""
    code = ("import urllib.request,sys;r=urllib.request.Request(sys.argv[1],headers={'Accept':"
            "'application/vnd.docker.distribution.manifest.v2+json'});print(urllib.request.urlopen(r).read().decode())")
    url = f"http://127.0.0.1:47055/v2/{repository}/manifests/{digest}"
    cp = subprocess.run(["ip", "netns", "exec", f"orch-lab.{node}", "python3", "-c", code, url],
                        capture_output=True, text=True, timeout=30, check=True)
    return json.loads(cp.stdout)


def drop_repository(repository: str) -> None:
    """The test's images out of the nodes' transfer registries (kept there for the next
    transfer otherwise): its repository and the blobs no other repository links."""
    import glob
    import shutil

    for v2 in glob.glob("/var/lib/orch-agent/engines/*/transfer/storage/docker/registry/v2"):
        repo = Path(v2, "repositories", repository)
        if not repo.is_dir():
            continue
        def linked(root):
            return {Path(x).name for pat in ("_layers/sha256/*", "_manifests/revisions/sha256/*")
                    for x in glob.glob(str(Path(root, pat)))}
        mine = linked(repo)
        others = set()
        for other in glob.glob(f"{v2}/repositories/*/*"):
            if Path(other) != repo:
                others |= linked(other)
        for h in mine - others:
            shutil.rmtree(Path(v2, "blobs", "sha256", h[:2], h), ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)
        try:
            repo.parent.rmdir()  # <project>/, now empty
        except OSError:
            pass


def lab_nodes_yaml(lab, *names: str) -> str:
    """`nodes:` and `ssh:` of an environment file on these lab nodes (Debian's python3)."""
    entries = "".join(f"  - {{name: {n}, host: {lab.node(n).address}, user: {lab.ssh_user}, "
                      f"identity_file: {lab.ssh_key}, python: /usr/bin/python3}}\n" for n in names)
    return "nodes:\n" + entries + f"ssh: {{known_hosts: {lab.known_hosts}}}\n"
