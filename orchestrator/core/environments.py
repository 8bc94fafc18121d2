"""Environment files (environments/ENV.yaml): nodes, registry, gates, checks, overlay.

Loading is pure: it reads files and returns typed objects. Nothing here connects to
a node. Secrets (registry password) are resolved only when asked for, so `orch config`
works without credentials, and they are kept out of repr() so they never get printed.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import InputError, Problem
from orchestrator.limits import DOTENV_MAX_BYTES, YAML_MAX_BYTES, check_file, present, read_bounded

ENV_DIR_VARIABLE = "ORCH_ENVIRONMENTS"


DEFAULT_PYTHON = "python3"  # nodes[].python when unset
MAX_PERSIST = 24 * 3600.0  # ssh.persist: a day at most
# nodes[].jump, ProxyJump-style: [user@]host[:port] (an IPv6 host in brackets)
_JUMP_RE = re.compile(r"(?:(?P<user>[^@]+)@)?(?P<host>\[[^\]]+\]|[^:]+)(?::(?P<port>\d+))?")
JUMP_FIX = "write e.g. `jump: admin@bastion.example.com:22`."


def parse_jump(text: str) -> tuple[str | None, str, int] | None:
    """(user or None, host, port) of a `jump:` value; None when it is malformed."""
    m = _JUMP_RE.fullmatch(text)
    port = int(m.group("port") or 22) if m else 0
    if m is None or not 0 < port < 65536:
        return None
    return m.group("user"), m.group("host").strip("[]"), port


@dataclass(frozen=True)
class NodeSpec:
    """A node of the environment file, and how SSH names and reaches it (`address`,
    `known_hosts_name`, `jump_target`)."""

    name: str
    host: str
    port: int = 22
    user: str = "root"
    identity_file: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    jump: str | None = None  # "user@host:port", ProxyJump-style
    python: str = DEFAULT_PYTHON  # the interpreter the agent runs with on this node
    endpoint: str | None = None  # HOST:PORT other nodes send mesh (WireGuard) packets to; None: host
    line: int | None = field(default=None, compare=False)  # in the environment file, for error messages

    def __hash__(self) -> int:  # labels are a dict: hash what names the endpoint
        return hash((self.name, self.host, self.port, self.user, self.identity_file, self.jump, self.python))

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH and paramiko name this host in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def jump_target(self) -> NodeSpec | None:
        """The jump host as a node SSH reaches first (this node's user unless `jump:` names
        one, and its key), or None. A malformed `jump:` is refused when the file is loaded."""
        if not self.jump:
            return None
        parsed = parse_jump(self.jump)
        if parsed is None:
            raise InputError(Problem(f"node {self.name}: jump host '{self.jump}' is not of the form user@host:port",
                                     line=self.line, key="jump", fix=JUMP_FIX))
        user, host, port = parsed
        return NodeSpec(name=f"{self.name} (jump host)", host=host, port=port, user=user or self.user,
                        identity_file=self.identity_file)


@dataclass(frozen=True)
class SSHSettings:
    known_hosts: Path | None = None  # None: the user's ~/.ssh/known_hosts
    connect_timeout: float = 10.0
    command_timeout: float = 600.0
    strict_host_keys: bool = True
    handshakes: int = 32  # SSH handshakes in flight at once, over all nodes
    handshakes_per_server: int = 8  # ... to one sshd (host:port): under its MaxStartups (default 10)
    persist: float = 0.0  # seconds the keeper holds a node's connection between commands; 0: off


@dataclass(frozen=True)
class RegistryCredentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class RegistrySpec:
    address: str | None = None  # host:port
    ca_file: Path | None = None
    username: str | None = None
    username_env: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    credentials_file: Path | None = None  # KEY=VALUE lines (ORCH_REGISTRY_USER/_PASSWORD)
    source: str = ""  # environment file, for error messages
    # host:port of a read-only, anonymous mirror of Docker Hub (the nodes' registry-mirrors
    # entry, same CA): `image: busybox` is pinned to a digest by asking it instead of docker.io.
    mirror: str | None = None
    key: str = "registry"  # where it is in the file: "registry" or "registries[N]", for error messages
    # key -> (line, column) in the environment file ("" for the mapping itself), for error messages
    locations: dict[str, tuple[int | None, int | None]] = field(default_factory=dict, compare=False, repr=False)

    def at(self, key: str) -> dict[str, int | None]:
        """line= and column= of a key of this mapping (else of the mapping), for a Problem."""
        line, column = self.locations.get(key) or self.locations.get("") or (None, None)
        return {"line": line, "column": column}

    def credentials(self, environ: Mapping[str, str] | None = None) -> RegistryCredentials | None:
        """Resolve credentials from the environment, then files; None when none configured."""
        environ = os.environ if environ is None else environ
        from_file: dict[str, str] = {}
        if self.credentials_file is not None:
            from_file = _read_env_file(self.credentials_file, self.source, f"{self.key}.credentials_file",
                                       self.at("credentials_file"))
        user = self.username
        if self.username_env:
            user = environ.get(self.username_env) or from_file.get(self.username_env) or user
        password = None
        if self.password_env:
            password = environ.get(self.password_env) or from_file.get(self.password_env)
        if password is None and self.password_file is not None:
            try:
                raw = read_bounded(self.password_file, DOTENV_MAX_BYTES, "a password file")
                password = raw.decode("utf-8", "replace").strip()
            except OSError as err:
                raise InputError(
                    Problem(
                        f"cannot read the registry password file {self.password_file}: {err.strerror}",
                        file=self.source,
                        key=f"{self.key}.password_file", **self.at("password_file"),
                        fix=getattr(err, "fix", None) or "create the file (mode 0600) or point password_file at it.",
                    )
                ) from None
        if user is None and password is None:
            return None
        if not user:
            raise InputError(self._missing_user(environ))
        if not password:
            raise InputError(self._missing_password())
        return RegistryCredentials(user, password)


    def _missing_user(self, environ: Mapping[str, str]) -> Problem:
        k = self.key
        where = f" or in {self.credentials_file}" if self.credentials_file else ""
        if self.username_env:
            return Problem(
                f"registry credentials are incomplete: {self.username_env} is not set ({k}.username_env names "
                f"it as the variable holding the user name; it is not in the environment{where})",
                file=self.source, key=f"{k}.username_env", **self.at("username_env"),
                fix=f"export {self.username_env} (CI: inject it as a secret variable) or name a credentials_file "
                f"that defines it, or set {k}.username.")
        return Problem(
            f"registry credentials are incomplete: {k}.username or {k}.username_env is not set, but a "
            "password is configured",
            file=self.source, key=f"{k}.username", **self.at("username"),
            fix=f"add `username: NAME` or `username_env: VARIABLE` under {k}:, or drop the password settings "
            "to use the registry anonymously.")

    def _missing_password(self) -> Problem:
        k = self.key
        where = f" or in {self.credentials_file}" if self.credentials_file else ""
        if self.password_env:
            also = f", and the password file {self.password_file} is empty" if self.password_file else ""
            return Problem(
                f"registry credentials are incomplete: {self.password_env} is not set ({k}.password_env names "
                f"it as the variable holding the password; it is not in the environment{where}){also}",
                file=self.source, key=f"{k}.password_env", **self.at("password_env"),
                fix=f"export {self.password_env} (CI: inject it as a secret variable) or name a credentials_file "
                "that defines it.")
        if self.password_file:
            return Problem(
                f"registry credentials are incomplete: the password file {self.password_file} is empty",
                file=self.source, key=f"{k}.password_file", **self.at("password_file"),
                fix="write the password into the file (mode 0600) or point password_file at the right file.")
        return Problem(
            f"registry credentials are incomplete: {k}.password_env or {k}.password_file is not set, but "
            "a user name is configured",
            file=self.source, key=f"{k}.password_env", **self.at("password_env"),
            fix=f"add `password_env: VARIABLE` or `password_file: PATH` under {k}:, or drop the user name "
            "to use the registry anonymously.")


@dataclass(frozen=True)
class Gates:
    approval: bool = False
    verification: bool = False


@dataclass(frozen=True)
class VerifyCheck:
    name: str
    http: str | None = None  # URL template (Jinja2), rendered per node / service at verify time
    service: str | None = None
    status: int = 200
    contains: str | None = None
    timeout: float = 5.0
    retries: int = 3
    command: list[str] | None = None  # run on the controller with the environment's URLs exported
    index: int = 0  # position in verify.checks (error messages say verify.checks[INDEX].KEY)
    # key -> (line, column) in the environment file, for error messages
    locations: dict[str, tuple[int | None, int | None]] = field(default_factory=dict, compare=False, repr=False)

    def key_path(self, key: str | None = None) -> str:
        return f"verify.checks[{self.index}]" + (f".{key}" if key else "")

    def location(self, key: str) -> tuple[int | None, int | None]:
        return self.locations.get(key, (None, None))


@dataclass(frozen=True)
class VerifySettings:
    on_deploy: bool = False
    checks: tuple[VerifyCheck, ...] = ()


@dataclass
class Environment:
    name: str
    file: Path
    nodes: list[NodeSpec]
    ssh: SSHSettings
    registry: RegistrySpec
    promote_from: str | None
    gates: Gates
    verify: VerifySettings
    vars: dict[str, Any]
    overlay_source: Any = None  # located mapping (yamlsrc.YMap) before rendering
    # Other registries' credentials (`registries:`), each for its own host:port only.
    registries: tuple[RegistrySpec, ...] = ()
    mesh: Any = None  # orchestrator.core.mesh.MeshSettings (None: the defaults)
    ingress: Any = None  # orchestrator.core.edge.EdgeSettings (None: the defaults, no ACME)

    @property
    def mesh_enabled(self) -> bool:
        from orchestrator.core.mesh import MeshSettings

        return (self.mesh or MeshSettings()).enabled(len(self.nodes))

    def registry_for(self, address: str) -> RegistrySpec | None:
        """The registry entry (`registry:` or one of `registries:`) whose address is this
        image registry's host:port, or None: the only credentials an image may be pulled with."""
        from agent.wire.protocol import canonical_registry

        address = canonical_registry(address)
        for spec in (self.registry, *self.registries):
            if spec.address and canonical_registry(spec.address) == address:
                return spec
        return None

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def template_context(self) -> dict[str, Any]:
        nodes = [
            {"name": n.name, "host": n.host, "port": n.port, "user": n.user, "labels": dict(n.labels)}
            for n in self.nodes
        ]
        return {
            "env": {"name": self.name, "promote_from": self.promote_from or "", "registry": self.registry.address or ""},
            "vars": self.vars,
            "nodes": nodes,
        }

    def overlay(self):
        """The overlay rendered with Jinja2 (StrictUndefined), as a compose Overlay."""
        from orchestrator.core.compose import Overlay

        if self.overlay_source is None:
            return None
        return Overlay(data=render_templates(self.overlay_source, self.template_context(), str(self.file)), file=str(self.file))


# --------------------------------------------------------------------------- discovery


def environments_dir(project_dir: Path | None = None, explicit: Path | None = None) -> Path:
    """--environments DIR, then $ORCH_ENVIRONMENTS, then PROJECT_DIR/environments."""
    if explicit is not None:
        return Path(explicit).resolve()
    if os.environ.get(ENV_DIR_VARIABLE):
        return Path(os.environ[ENV_DIR_VARIABLE]).resolve()
    return (Path(project_dir or Path.cwd()) / "environments").resolve()


def list_environments(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(
        p.stem for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
    )


def load_environment(
    name: str, environments_dir: Path | None = None, project_dir: Path | None = None
) -> Environment:
    directory = environments_dir or globals()["environments_dir"](project_dir)
    candidates = [directory / f"{name}.yaml", directory / f"{name}.yml"]
    path = next((p for p in candidates if present(p)), None)
    if path is None:
        known = list_environments(directory)
        hint = _near(name, known)
        fix = f"did you mean '{hint}'? " if hint else ""
        fix += (
            f"available: {', '.join(known)}." if known else
            f"create {directory}/{name}.yaml, or point --environments / {ENV_DIR_VARIABLE} at your environments folder."
        )
        raise InputError(Problem(f"no environment named '{name}' in {directory}", fix=fix))
    return parse_environment(path, expected_name=name)


def load_all(directory: Path) -> dict[str, Environment]:
    return {name: load_environment(name, directory) for name in list_environments(directory)}


def pipeline_order(envs: Mapping[str, Environment]) -> list[str]:
    """Environments in promotion order (dev, test, prod): promote_from edges, topologically."""
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(sorted(envs))
    problems = []
    for env in envs.values():
        if env.promote_from is None:
            continue
        if env.promote_from not in envs:
            problems.append(
                Problem(
                    f"promote_from names an unknown environment '{env.promote_from}'",
                    file=str(env.file),
                    key="promote_from",
                    fix=f"use one of: {', '.join(sorted(envs))}.",
                )
            )
            continue
        graph.add_edge(env.promote_from, env.name)
    if problems:
        raise InputError(problems)
    try:
        cycle = nx.find_cycle(graph)
        names = [edge[0] for edge in cycle] + [cycle[0][0]]
        raise InputError(
            Problem(
                "the promotion pipeline has a cycle: " + " -> ".join(names),
                file=str(envs[names[0]].file),
                key="promote_from",
                fix="one environment (the first stage, e.g. dev) must have no promote_from.",
            )
        )
    except nx.NetworkXNoCycle:
        pass
    return list(nx.lexicographical_topological_sort(graph))


# --------------------------------------------------------------------------- parsing

_TOP_KEYS = {"name", "nodes", "ssh", "registry", "registries", "promote_from", "gates", "verify", "vars", "overlay",
             "mesh", "ingress"}
_NODE_KEYS = {"name", "host", "port", "user", "identity_file", "labels", "jump", "python", "endpoint"}
# A program name or an absolute path, run as argv[0] (never through a shell string).
_PYTHON_RE = re.compile(r"^[A-Za-z0-9_.+-]+$|^/[A-Za-z0-9_./+-]+$")
_SSH_KEYS = {"known_hosts", "connect_timeout", "command_timeout", "strict_host_keys", "handshakes",
             "handshakes_per_server", "persist"}
_REGISTRY_KEYS = {"address", "ca_file", "username", "username_env", "password_env", "password_file", "credentials_file",
                  "mirror"}
_REGISTRIES_KEYS = _REGISTRY_KEYS - {"mirror"}  # registries[]: credentials for other registries
_GATE_KEYS = {"approval", "verification"}
_VERIFY_KEYS = {"on_deploy", "checks"}
_CHECK_KEYS = {"name", "http", "service", "status", "contains", "timeout", "retries", "command"}


class _Reader:
    """Walks a located YAML tree collecting problems with file, line and key path."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def problem(self, node, key, path: str, message: str, fix: str | None = None) -> None:
        loc = _loc_of(node, key)
        self.problems.append(
            Problem(message, file=self.file, line=loc[0], column=loc[1], key=path, fix=fix)
        )

    def file_path(self, parent, key, path: str, env_file: Path, limit: int = YAML_MAX_BYTES) -> Path | None:
        """A path key naming a file read later (by orch, paramiko or ssl): refused now when
        it is a device, FIFO or socket (a read would never end) or over `limit`."""
        p = _path(self.typed(parent, key, path, (str,), "a path"), env_file)
        refused = check_file(p, limit, "this file") if p is not None else None
        if refused is not None:
            self.problem(parent, key, path, f"cannot use {p}: {refused.strerror}", fix=refused.fix)
        return p

    def mapping(self, parent, key, path: str, known: set[str], value=None) -> dict:
        value = parent.get(key) if value is None and parent is not None else value
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(parent, key, path, f"must be a mapping, not {_kind(value)}")
            return {}
        for k in value:
            if not isinstance(k, str) or k not in known:
                near = _near(str(k), sorted(known))
                fix = f"did you mean '{near}'?" if near else f"known keys: {', '.join(sorted(known))}."
                self.problem(value, k, f"{path}.{k}" if path else str(k), f"unknown key '{k}'", fix)
        return value

    def typed(self, parent, key, path, types, kind: str, default=None):
        if key not in parent or parent[key] is None:
            return default
        value = parent[key]
        if isinstance(value, bool) and bool not in types:
            ok = False
        else:
            ok = isinstance(value, types)
        if not ok:
            self.problem(parent, key, path, f"must be {kind}, not {_kind(value)} ({value!r})",
                         fix=f"give {path} {kind}, or leave it out for the default"
                             + (f" ({default!r})" if default is not None else ""))
            return default
        return value


def _jump(r: _Reader, raw: dict, p: str) -> str | None:
    jump = r.typed(raw, "jump", f"{p}.jump", (str,), "a string like user@host:port")
    if jump and parse_jump(jump) is None:
        r.problem(raw, "jump", f"{p}.jump", f"jump host '{jump}' is not of the form [user@]host[:port] "
                  "(a port from 1 to 65535)", fix=JUMP_FIX)
        return None
    return jump


def parse_environment(path: Path, expected_name: str | None = None) -> Environment:
    from orchestrator.core.environment_sections import _parse_ingress, _parse_registries, _parse_ssh, _parse_verify
    from orchestrator.core.mesh import check_endpoint, parse_mesh
    from orchestrator.core.yamlsrc import load_yaml_file

    file = str(path)
    doc = load_yaml_file(path)
    r = _Reader(file)
    if doc is None:
        raise InputError(Problem("the environment file is empty", file=file, fix="add at least `nodes:`."))
    if not isinstance(doc, dict):
        raise InputError(
            Problem(f"the top level must be a mapping, not {_kind(doc)}", file=file, line=1,
                    fix="start the file with keys such as `name:`, `nodes:`, `registry:`.")
        )
    r.mapping(None, None, "", _TOP_KEYS, value=doc)

    name = r.typed(doc, "name", "name", (str,), "a string", default=path.stem)
    if expected_name and name != expected_name:
        r.problem(doc, "name", "name", f"the file {path.name} declares name '{name}'",
                  fix=f"rename the file to {name}.yaml or set name: {expected_name}.")

    nodes: list[NodeSpec] = []
    raw_nodes = doc.get("nodes")
    if raw_nodes is None:
        r.problems.append(Problem("no nodes listed", file=file, key="nodes",
                                  fix="add `nodes:` with at least one `- name: ..., host: ...`."))
    elif isinstance(raw_nodes, list) and not raw_nodes:
        r.problem(doc, "nodes", "nodes", "no nodes listed: the list is empty, so there is nowhere to deploy",
                  fix="list at least one node: `nodes: [{name: ..., host: ...}]`.")
    elif not isinstance(raw_nodes, list):
        r.problem(doc, "nodes", "nodes", f"must be a list, not {_kind(raw_nodes)}")
    else:
        seen = set()
        for i, raw in enumerate(raw_nodes):
            p = f"nodes[{i}]"
            if not isinstance(raw, dict):
                r.problem(raw_nodes, i, p, f"must be a mapping, not {_kind(raw)}")
                continue
            r.mapping(None, None, p, _NODE_KEYS, value=raw)
            node_name = r.typed(raw, "name", f"{p}.name", (str,), "a string")
            host = r.typed(raw, "host", f"{p}.host", (str,), "a string")
            if not node_name or not host:
                r.problem(raw_nodes, i, p, "a node needs both name and host",
                          fix="write e.g. `- {name: web-1, host: 10.0.0.5}`.")
                continue
            if node_name in seen:
                r.problem(raw, "name", f"{p}.name", f"node name '{node_name}' is used twice",
                          fix="give every node a unique name.")
            seen.add(node_name)
            labels = raw.get("labels") or {}
            if not isinstance(labels, dict):
                r.problem(raw, "labels", f"{p}.labels", f"must be a mapping, not {_kind(labels)}")
                labels = {}
            port = r.typed(raw, "port", f"{p}.port", (int,), "a port number", default=22)
            if not (0 < port < 65536):
                r.problem(raw, "port", f"{p}.port", f"port {port} is out of range", fix="use 1-65535.")
            python = r.typed(raw, "python", f"{p}.python", (str,), "a program name or an absolute path",
                             default=DEFAULT_PYTHON)
            if not _PYTHON_RE.match(python):
                r.problem(raw, "python", f"{p}.python", f"'{python}' is not a program name or an absolute path",
                          fix="write e.g. `python: /usr/bin/python3` (no spaces, no arguments).")
                python = DEFAULT_PYTHON
            nodes.append(
                NodeSpec(
                    name=node_name,
                    host=host,
                    port=port,
                    user=r.typed(raw, "user", f"{p}.user", (str,), "a string", default="root") or "root",
                    identity_file=r.file_path(raw, "identity_file", f"{p}.identity_file", path),
                    labels={str(k): str(v) for k, v in labels.items()},
                    jump=_jump(r, raw, p),
                    python=python,
                    endpoint=check_endpoint(r, raw, p),
                    line=_loc_of(raw_nodes, i)[0],
                )
            )

    ssh = _parse_ssh(r, doc, path)

    # `registry: none` (or no `registry:`): images go to the nodes over SSH (deploying
    # without a registry, orchestrator.app.transfer).
    no_registry = isinstance(doc.get("registry"), str) and doc["registry"].strip().lower() == "none"
    if isinstance(doc.get("registry"), str) and not no_registry:
        r.problem(doc, "registry", "registry", f"must be a mapping or `none`, not a string ({doc['registry']!r})",
                  fix="write `registry: none` to deploy without a registry (images go to the nodes over SSH), "
                  "or `registry: {address: HOST:PORT, ...}`.")
        no_registry = True
    raw_reg = {} if no_registry else r.mapping(doc, "registry", "registry", _REGISTRY_KEYS)
    s = lambda k: r.typed(raw_reg, k, f"registry.{k}", (str,), "a string")  # noqa: E731
    registry = RegistrySpec(
        address=s("address"),
        ca_file=r.file_path(raw_reg, "ca_file", "registry.ca_file", path),
        username=s("username"),
        username_env=s("username_env"),
        password_env=s("password_env"),
        password_file=r.file_path(raw_reg, "password_file", "registry.password_file", path, DOTENV_MAX_BYTES),
        credentials_file=r.file_path(raw_reg, "credentials_file", "registry.credentials_file", path, DOTENV_MAX_BYTES),
        source=file,
        mirror=s("mirror"),
        locations=_locations(doc, "registry", raw_reg),
    )

    registries = _parse_registries(r, doc, registry, path)

    promote_from = r.typed(doc, "promote_from", "promote_from", (str,), "an environment name")
    raw_gates = r.mapping(doc, "gates", "gates", _GATE_KEYS)
    gates = Gates(
        approval=r.typed(raw_gates, "approval", "gates.approval", (bool,), "true or false", False),
        verification=r.typed(raw_gates, "verification", "gates.verification", (bool,), "true or false", False),
    )
    verify = _parse_verify(r, doc)
    mesh = parse_mesh(r, doc, len(nodes))
    ingress = _parse_ingress(r, doc, path)

    raw_vars = doc.get("vars") or {}
    if not isinstance(raw_vars, dict):
        r.problem(doc, "vars", "vars", f"must be a mapping, not {_kind(raw_vars)}")
        raw_vars = {}
    overlay = doc.get("overlay")
    if overlay is not None and not isinstance(overlay, dict):
        r.problem(doc, "overlay", "overlay", f"must be a Compose fragment (a mapping), not {_kind(overlay)}",
                  fix="write e.g. `overlay: {services: {web: {environment: {MODE: prod}}}}`.")
        overlay = None

    if r.problems:
        raise InputError(r.problems)
    env = Environment(
        name=name, file=path.resolve(), nodes=nodes, ssh=ssh, registry=registry,
        promote_from=promote_from, gates=gates, verify=verify, vars=dict(raw_vars),
        overlay_source=overlay, registries=registries, mesh=mesh, ingress=ingress,
    )
    return env


def render_templates(node, context: dict[str, Any], file: str, prefix: str = "overlay"):
    """Render every string value of a located tree with Jinja2 (sandboxed, StrictUndefined).

    `prefix` is the key path of `node` in the file, for error messages.
    """
    import jinja2

    from orchestrator.core import templates
    from orchestrator.core.yamlsrc import iter_located, map_strings

    jenv = templates.environment(keep_trailing_newline=True)
    problems: list[Problem] = []
    names = ", ".join(sorted(context))

    def key_at(loc) -> str:  # only on errors: find which value is written at loc
        for path, value, where in iter_located(node):
            if isinstance(value, str) and where == loc:
                return f"{prefix}.{path}" if not path.startswith("[") else prefix + path
        return prefix

    def problem(message: str, loc, fix: str) -> None:
        problems.append(Problem(message, file=file, line=loc.line, column=loc.column, key=key_at(loc), fix=fix))

    def render(text: str, loc) -> str:
        if "{{" not in text and "{%" not in text and "{#" not in text:
            return text
        try:
            return templates.render(jenv.from_string(text), context)
        except jinja2.UndefinedError as err:
            problem(f"template error: {err.message}", loc, f"define it under vars: or use one of: {names}.")
        except jinja2.TemplateSyntaxError as err:
            problem(f"template syntax error: {err.message}", loc, "close every {{ ... }} and {% ... %}.")
        except templates.TemplateFailed as err:
            problem(err.message, loc, err.fix)
        return text

    rendered = map_strings(node, render)
    if problems:
        raise InputError(problems)
    return rendered


# --------------------------------------------------------------------------- helpers


def _locations(parent, key, mapping) -> dict[str, tuple[int | None, int | None]]:
    """(line, column) of the mapping parent[key] ("") and of each of its keys."""
    out = {"": _loc_of(parent, key)}
    if isinstance(mapping, dict):
        out.update({k: _loc_of(mapping, k) for k in mapping if isinstance(k, str)})
    return out


def _read_env_file(path: Path, source: str, key: str = "registry.credentials_file",
                   at: Mapping[str, int | None] | None = None) -> dict[str, str]:
    try:
        text = read_bounded(path, DOTENV_MAX_BYTES, "a credentials file").decode("utf-8", "replace")
    except OSError as err:
        raise InputError(
            Problem(f"cannot read the registry credentials file {path}: {err.strerror}", file=source,
                    key=key, **(at or {}),
                    fix=getattr(err, "fix", None)
                    or "bring the lab up (`orch lab up`) or point credentials_file at your file.")
        ) from None
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out[k.strip().removeprefix("export ").strip()] = v.strip().strip("'\"")
    return out


def _path(value: str | None, env_file: Path) -> Path | None:
    if not value:
        return None
    p = Path(os.path.expanduser(os.path.expandvars(value)))
    return p if p.is_absolute() else (env_file.parent / p).resolve()


def _loc_of(node, key) -> tuple[int | None, int | None]:
    if node is None:
        return (None, None)
    try:
        loc = node.loc_of(key) if key is not None else node.loc
    except Exception:
        loc = getattr(node, "loc", None)
    if loc is None:
        return (None, None)
    return (loc.line, loc.column)


def _near(word: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return match[0] if match else None


def _kind(value) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), next(
                (n for t, n in ((dict, "a mapping"), (list, "a list"), (str, "a string")) if isinstance(value, t)),
                type(value).__name__))
