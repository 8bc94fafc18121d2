"""Hostile input is bad input: exit 2 naming file and key, fast (security finding 4).

One case of each kind runs `orch config` in a child process (exit code, no traceback);
the matrices load the workspace in a thread, as `orch config` does. The timeouts are
only hang guards.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from orchestrator import limits
from orchestrator.errors import InputError
from tests.unit.fakes import ENV_FILE, SERVICE, orch_process, refused

def load_refused(cwd: Path, *args: str) -> dict:
    """Like refused(), in this process: the InputError load_workspace raises, as a dict."""
    from orchestrator.app.workspace import ProjectOptions, load_workspace

    opts = ProjectOptions(working_dir=cwd, env_name="dev" if "dev" in args else None)
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = load_workspace(opts, environ={})
        except Exception as err:  # noqa: BLE001 - inspected below
            box["result"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "loading did not finish in 10 s"
    err = box["result"]
    assert isinstance(err, InputError), err
    assert len(err.problems) == 1 and err.problems[0].fix, err.problems
    return {k: v for k, v in err.problems[0].__dict__.items() if v is not None}


# --------------------------------------------------------------------------- hostile YAML
def alias_bomb(key: str) -> str:
    """The 9-by-8 "billion laughs" (about 390 bytes), its last level under `key`."""
    lines = ['x-a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    prev = "a"
    for name in "bcdefgh":
        lines.append(f"x-{name}: &{name} [" + ",".join(["*" + prev] * 9) + "]")
        prev = name
    lines.append(f"{key}: *h")
    return "\n".join(lines) + "\n"


def deep(key: str) -> str:
    return f"{key}: " + "[" * 600 + "]" * 600 + "\n"


HOSTILE_YAML = {
    "alias bomb": (alias_bomb, "aliases expand to more than"),
    "deep nesting": (deep, "nested deeper than 100 levels"),
}


def place(tmp_path: Path, where: str, body: str) -> tuple[list[str], str]:
    """Put a hostile YAML body (top-level keys) into the file `where`; (orch args, file named)."""
    if where == "compose":
        (tmp_path / "compose.yaml").write_text(SERVICE + body)
        return [], "compose.yaml"
    if where == "include":
        (tmp_path / "compose.yaml").write_text("include: [inc.yaml]\n" + SERVICE)
        (tmp_path / "inc.yaml").write_text("services:\n  db:\n    image: busybox\n" + body)
        return [], "inc.yaml"
    if where == "extends":
        (tmp_path / "compose.yaml").write_text(
            "services:\n  web:\n    extends: {file: base.yaml, service: base}\n")
        (tmp_path / "base.yaml").write_text("services:\n  base:\n    image: busybox\n" + body)
        return [], "base.yaml"
    assert where == "environment"
    (tmp_path / "compose.yaml").write_text(SERVICE)
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "dev.yaml").write_text(ENV_FILE + body)
    return ["--env", "dev"], "dev.yaml"


@pytest.mark.parametrize("where", ["compose", "include", "extends", "environment"])
@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_hostile_yaml_is_refused_with_file_and_key(tmp_path, case, where):
    make, message = HOSTILE_YAML[case]
    key = "vars" if where == "environment" else "x-hostile"
    args, file = place(tmp_path, where, make(key))
    problem = load_refused(tmp_path, *args)
    assert message in problem["message"]
    assert problem["file"].endswith(file) and problem["line"] > 0
    if case == "alias bomb":
        assert problem["key"].startswith("x-")  # the alias that crossed the budget
    else:
        assert problem["key"].startswith(key + "[0][0]")


@pytest.mark.parametrize("case", sorted(HOSTILE_YAML))
def test_orch_config_exits_2_on_hostile_yaml(tmp_path, case):
    make, message = HOSTILE_YAML[case]
    (tmp_path / "compose.yaml").write_text(SERVICE + make("x-hostile"))
    problem = refused(tmp_path)
    assert message in problem["message"] and problem["file"] == "compose.yaml"


def test_orch_config_exits_2_on_a_dev_zero_secret(tmp_path):
    (tmp_path / "compose.yaml").write_text(SERVICE + "    secrets: [s]\nsecrets:\n  s:\n    file: /dev/zero\n")
    problem = refused(tmp_path)
    assert (problem["file"], problem["line"], problem["key"]) == ("compose.yaml", 7, "secrets.s.file")
    assert "/dev/zero: it is a character device, not a regular file" in problem["message"]


def test_alias_bomb_is_named_where_the_alias_is_written(tmp_path):
    (tmp_path / "compose.yaml").write_text(
        "x-a: &a [" + ",".join(['"' + "x" * 20 + '"'] * 400) + "]\n"
        + "x-b: &b [" + ",".join(["*a"] * 400) + "]\n" + SERVICE + "    labels:\n      many: *b\n")
    problem = refused(tmp_path)
    assert "aliases expand to more than 250,000 values" in problem["message"]
    # x-b copies 160,400 values (under the budget); the alias under labels crosses it
    assert (problem["line"], problem["column"], problem["key"]) == (7, 7, "services.web.labels.many")


def test_ordinary_anchors_and_merge_keys_still_load(tmp_path):
    services = "".join(f"  s{i}:\n    <<: *defaults\n    image: busybox\n" for i in range(200))
    (tmp_path / "compose.yaml").write_text(
        "x-defaults: &defaults\n  restart: always\n  labels: {a: '1', b: '2'}\n  environment: [A=1, B=2]\n"
        "services:\n" + services)
    code, final, stderr = orch_process(["config"], tmp_path)
    assert code == 0, stderr
    assert final["project"]["services"]["s199"]["labels"] == {"a": "1", "b": "2"}


def test_merge_keys_at_scale_stay_within_the_alias_budget():
    from orchestrator.core.yamlsrc import parse_yaml

    defaults = "".join(f"  k{i}: v{i}\n" for i in range(20))
    services = "".join(f"  s{i}:\n    <<: *d\n    image: busybox\n" for i in range(5000))
    doc = parse_yaml("x-d: &d\n" + defaults + "services:\n" + services, "compose.yaml")
    assert doc["services"]["s4999"]["k19"] == "v19" and len(doc["services"]) == 5000


# --------------------------------------------------------------------------- interpolation
DEEP_INTERPOLATION = "${A:-" * 2000 + "x" + "}" * 2000


def test_deep_interpolation_in_compose_is_refused(tmp_path):
    (tmp_path / "compose.yaml").write_text(SERVICE + f"    environment:\n      X: '{DEEP_INTERPOLATION}'\n")
    problem = refused(tmp_path)
    assert "interpolation nested deeper than 32 levels" in problem["message"]
    assert problem["file"] == "compose.yaml" and problem["line"] == 5
    assert problem["key"] == "services.web.environment.X"


def test_deep_interpolation_in_dotenv_is_refused(tmp_path):
    (tmp_path / "compose.yaml").write_text(SERVICE)
    (tmp_path / ".env").write_text(f"GOOD=1\nX={DEEP_INTERPOLATION}\n")
    problem = refused(tmp_path)
    assert "interpolation nested deeper than 32 levels" in problem["message"]
    assert problem["file"] == ".env" and problem["line"] == 2 and "X:" in problem["message"]


def test_interpolation_nesting_up_to_the_limit_works(tmp_path):
    value = "${A:-" * 32 + "deep" + "}" * 32
    (tmp_path / "compose.yaml").write_text(SERVICE + f"    environment:\n      X: '{value}'\n")
    code, final, stderr = orch_process(["config"], tmp_path)
    assert code == 0, stderr
    assert final["project"]["services"]["web"]["environment"]["X"] == "deep"


# --------------------------------------------------------------------------- files
def huge(path: Path, limit: int) -> None:
    with open(path, "w") as fh:
        fh.write("# padding\n" * (limit // 10 + 1))


@pytest.mark.parametrize("where", ["compose", "include", "extends", "environment", ".env", "env_file"])
@pytest.mark.parametrize("case", ["/dev/zero", "huge"])
def test_devices_and_huge_files_are_refused(tmp_path, where, case):
    if where in (".env", "env_file"):
        (tmp_path / "compose.yaml").write_text(SERVICE + ("    env_file: app.env\n" if where == "env_file" else ""))
        target, args, limit = tmp_path / ("app.env" if where == "env_file" else ".env"), [], limits.DOTENV_MAX_BYTES
    else:
        args, name = place(tmp_path, where, "")
        target, limit = next(tmp_path.rglob(name)), limits.YAML_MAX_BYTES
        target.unlink()
    if case == "/dev/zero":
        target.symlink_to("/dev/zero")
        expected = "it is a character device, not a regular file"
    else:
        huge(target, limit)
        expected = f"larger than {limit // (1024 * 1024)} MiB"
    problem = load_refused(tmp_path, *args)
    assert expected in problem["message"]
    assert problem["file"].endswith(target.name) and target.name in problem["message"]


@pytest.mark.parametrize("section", ["secrets", "configs"])
@pytest.mark.parametrize("case", ["/dev/zero", "fifo", "huge"])
def test_secret_and_config_files_are_refused(tmp_path, section, case):
    target = tmp_path / "data"
    if case == "/dev/zero":
        target.symlink_to("/dev/zero")
    elif case == "fifo":
        os.mkfifo(target)
    else:
        target.write_bytes(b"x" * (limits.SECRET_MAX_BYTES + 1))
    (tmp_path / "compose.yaml").write_text(SERVICE + f"    {section}: [s]\n{section}:\n  s:\n    file: ./data\n")
    problem = load_refused(tmp_path)
    assert problem["file"] == "compose.yaml" and problem["line"] == 7
    assert problem["key"] == f"{section}.s.file"
    assert {"/dev/zero": "character device", "fifo": "a FIFO", "huge": "larger than 1 MiB"}[case] in problem["message"]


@pytest.mark.parametrize("which", ["credentials_file", "password_file"])
def test_registry_credential_files_are_read_bounded(tmp_path, which):
    """Read when credentials are needed: a file that became a device since is refused too."""
    from orchestrator.core.environments import RegistrySpec

    registry = RegistrySpec(address="127.0.0.1:5000", username="me", password_env="PW", source="dev.yaml",
                            **{which: Path("/dev/zero")})
    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("r", _catch(registry.credentials, {})), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "reading /dev/zero did not finish"
    err = box["r"]
    assert isinstance(err, InputError), err
    assert err.problems[0].key == f"registry.{which}" and err.problems[0].file == "dev.yaml"
    assert "character device" in err.problems[0].message


@pytest.mark.parametrize("key, section", [
    ("credentials_file", "registry"), ("password_file", "registry"), ("ca_file", "registry"),
    ("known_hosts", "ssh"), ("identity_file", "nodes[0]"),
])
def test_environment_file_paths_that_are_devices_are_refused(tmp_path, key, section):
    from orchestrator.core.environments import parse_environment

    env = tmp_path / "dev.yaml"
    if section == "nodes[0]":
        env.write_text(ENV_FILE + f"    {key}: /dev/zero\n")
    else:
        env.write_text(ENV_FILE + f"{section}:\n  {key}: /dev/zero\n")
    with pytest.raises(InputError) as info:
        parse_environment(env)
    [problem] = info.value.problems
    line = 5 if section == "nodes[0]" else 6
    assert (problem.file, problem.line, problem.key) == (str(env), line, f"{section}.{key}")
    assert "/dev/zero: it is a character device, not a regular file" in problem.message and problem.fix


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001 - the test inspects it
        return err


def test_read_bounded_refuses_a_fifo_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(limits.FileRefused, match="a FIFO, not a regular file"):
        limits.read_bounded(fifo, 100)
    assert time.monotonic() - t0 < 5


def test_read_bounded_reads_up_to_the_limit(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 100)
    assert limits.read_bounded(f, 100) == b"x" * 100
    with pytest.raises(limits.FileRefused, match="larger than 99 bytes"):
        limits.read_bounded(f, 99)
    with pytest.raises(IsADirectoryError):
        limits.read_bounded(tmp_path, 100)


def test_build_context_hash_skips_devices_and_fifos(tmp_path):
    """The source version hashes every file of a build context: a FIFO or /dev/zero there must not hang it."""
    from orchestrator.io.images import content_hash

    (tmp_path / "app.txt").write_text("hello")
    before = content_hash([tmp_path])
    (tmp_path / "zero").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo")
    box: dict = {}
    worker = threading.Thread(target=lambda: box.setdefault("r", _catch(content_hash, [tmp_path])), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "hashing the build context did not finish"
    assert isinstance(box["r"], str) and box["r"] != before  # their names still count
    (tmp_path / "app.txt").write_text("hello!")
    assert content_hash([tmp_path]) != box["r"]
