"""Fuzz orch's parsers with hypothesis for a bounded time: `make fuzz` (FUZZ_SECONDS, default 120).

Property, for every target: any input yields a result or the error the parser is meant
to raise (controller: OrchError, i.e. InputError, exit 2; agent: AgentError, a
bad_request answer), never another exception, and never slowly (a hypothesis deadline
per input). Targets: the Compose loader (YAML, interpolation, merge, normalise, checks),
interpolation alone, .env files, environment files (with overlay templates and verify
checks), and the agent's request parser, validators and spec parser.

Prints, per target, the inputs tried and each distinct failure (exception type and
place, with the smallest input hypothesis found), then a total. Exit status 1 if any
target failed. Not part of `make test`: it is random and takes minutes.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import DeadlineExceeded, Flaky

from tests.fuzz import inputs

# One input may take this long (ms) before it counts as "slow"; generous for a busy
# 2-core machine: the hostile inputs this guards against took 10+ s or never ended.
DEADLINE_MS = int(os.environ.get("FUZZ_DEADLINE_MS", "2000"))
# The address space the run may use: an input that blows memory up fails with
# MemoryError instead of taking the machine down (a YAML alias bomb took 1.8 GB).
MEMORY_MB = int(os.environ.get("FUZZ_MEMORY_MB", "2048"))


@dataclass
class Outcome:
    name: str
    tried: int = 0
    refused: int = 0  # inputs that ended in the expected error (the rest gave a result)
    seconds: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)  # where -> example


def _where(err: BaseException) -> str:
    """'TypeError at orchestrator/x.py:12 in f', from the innermost frame in orch's code."""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if "/orchestrator/" in f.filename or "/agent/" in f.filename]
    frame = frames[-1] if frames else (traceback.extract_tb(err.__traceback__) or [None])[-1]
    place = f" at {Path(frame.filename).name}:{frame.lineno} in {frame.name}" if frame else ""
    return f"{type(err).__name__}{place}: {str(err)[:200]}"


def fuzz(name: str, strategy: st.SearchStrategy, check: Callable[[Any], None], seconds: float) -> Outcome:
    """Run `check` on inputs from `strategy` until `seconds` pass; collect distinct failures."""
    out = Outcome(name)
    end = time.monotonic() + seconds
    t0 = time.monotonic()
    last: dict[str, Any] = {}

    @settings(max_examples=200, deadline=DEADLINE_MS, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(strategy)
    def prop(value: Any) -> None:
        out.tried += 1
        last["value"] = value
        check(value)

    _STATS["refused"] = 0
    while time.monotonic() < end:
        try:
            prop()
        except (DeadlineExceeded, Flaky) as err:  # slow, or failing only sometimes (slow once, memory)
            out.failures.setdefault(f"slow or flaky: {type(err).__name__}", repr(last.get("value"))[:300])
        except MemoryError:
            gc.collect()
            out.failures.setdefault(f"MemoryError (over FUZZ_MEMORY_MB={MEMORY_MB})", repr(last.get("value"))[:300])
        except Exception as err:  # noqa: BLE001 - a failure of the property, shrunk by hypothesis
            key = _where(err)
            out.failures.setdefault(key, repr(last.get("value"))[:300])
    out.seconds = time.monotonic() - t0
    out.refused = _STATS["refused"]
    return out


# --------------------------------------------------------------------------- targets
_STATS = {"refused": 0}


def _expect(fn: Callable[[], Any], *allowed: type) -> None:
    try:
        fn()
    except allowed:
        _STATS["refused"] += 1


def compose_target(tmp: Path) -> Callable[[str], None]:
    from orchestrator.core.compose import LoadOptions, load_project
    from orchestrator.errors import OrchError

    def check(text: str) -> None:
        d = Path(tempfile.mkdtemp(dir=tmp))
        (d / "compose.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        (d / ".env").write_text("A=1\nB=\nNAME=web\n")
        try:
            _expect(lambda: load_project(LoadOptions(working_dir=d, environ={"HOME": str(d), "A": "x"})), OrchError)
        finally:
            gc.unfreeze()  # load_project freezes what it built; a fuzz run loads thousands of projects

    return check


def interpolation_target() -> Callable[[str], None]:
    from orchestrator.core.compose.interpolate import TemplateError, substitute

    env = {"A": "a", "B": "", "LONG": "x" * 50}

    def check(text: str) -> None:
        _expect(lambda: substitute(text, env.get, lambda name: None), TemplateError)

    return check


def dotenv_target() -> Callable[[str], None]:
    from orchestrator.core.compose.envfile import parse_dotenv
    from orchestrator.errors import OrchError

    def check(text: str) -> None:
        _expect(lambda: parse_dotenv(text, ".env", {"A": "1"}.get), OrchError)

    return check


def environment_target(tmp: Path) -> Callable[[str], None]:
    from orchestrator.core.environments import parse_environment
    from orchestrator.errors import OrchError
    from orchestrator.core.verify import plan_checks

    def check(text: str) -> None:
        path = Path(tempfile.mkdtemp(dir=tmp)) / "dev.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")

        def run() -> None:
            env = parse_environment(path, "dev")
            env.overlay()
            plan_checks(env)

        _expect(run, OrchError)

    return check


def agent_request_target() -> Callable[[bytes], None]:
    from agent.wire.protocol import AgentError, parse_request

    def check(line: bytes) -> None:
        _expect(lambda: parse_request(line), AgentError)

    return check


def agent_validators_target() -> Callable[[tuple], None]:
    from agent.wire import protocol as p
    from agent.wire.protocol import AgentError
    from agent.wire.spec import ContainerSpec, ServiceSpec

    calls: dict[str, Callable[[Any], Any]] = {
        "check_str": lambda v: p.check_str(v, "x"),
        "check_project": p.check_project,
        "check_name": lambda v: p.check_name(v, "x"),
        "check_container_name": p.check_container_name,
        "check_hash": p.check_hash,
        "check_image": p.check_image,
        "check_abs_path": lambda v: p.check_abs_path(v, "x"),
        "check_int": lambda v: p.check_int(v, "x", 0, 65535),
        "check_number": lambda v: p.check_number(v, "x"),
        "check_bool": lambda v: p.check_bool(v, "x"),
        "check_str_list": lambda v: p.check_str_list(v, "x"),
        "check_str_map": lambda v: p.check_str_map(v, "x"),
        "check_env_map": p.check_env_map,
        "ServiceSpec.from_dict": ServiceSpec.from_dict,
        "ContainerSpec.from_dict": ContainerSpec.from_dict,
    }

    def check(case: tuple) -> None:
        which, value = case
        _expect(lambda: calls[which](value), AgentError)

    check.calls = calls  # type: ignore[attr-defined]
    return check


# --------------------------------------------------------------------------- main
def main() -> int:
    total = float(os.environ.get("FUZZ_SECONDS", "120"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    want = MEMORY_MB * 1024 * 1024
    if soft == resource.RLIM_INFINITY or soft > want:
        resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    only = set(filter(None, os.environ.get("FUZZ_ONLY", "").split(",")))
    with tempfile.TemporaryDirectory(prefix="orch-fuzz-") as tmpdir:
        tmp = Path(tmpdir)
        validators = agent_validators_target()
        targets: list[tuple[str, st.SearchStrategy, Callable[[Any], None], float]] = [
            ("compose loader", inputs.compose_text(), compose_target(tmp), 0.35),
            ("interpolation", inputs.template_text(), interpolation_target(), 0.1),
            (".env files", inputs.dotenv_text(), dotenv_target(), 0.1),
            ("environment files", inputs.environment_text(), environment_target(tmp), 0.25),
            ("agent request parser", inputs.request_line(), agent_request_target(), 0.1),
            ("agent validators and specs",
             st.tuples(st.sampled_from(sorted(validators.calls)), inputs.json_value()),  # type: ignore[attr-defined]
             validators, 0.1),
        ]
        outcomes = []
        for name, strategy, check, share in targets:
            if only and name.split()[0] not in only:
                continue
            outcomes.append(fuzz(name, strategy, check, total * share))
            o = outcomes[-1]
            print(f"{o.name}: {o.tried} inputs ({o.refused} refused as bad input) in {o.seconds:.0f} s, "
                  f"{len(o.failures)} failure(s)", flush=True)
            for where, example in o.failures.items():
                print(f"  - {where}\n    e.g. {example}", flush=True)
    tried = sum(o.tried for o in outcomes)
    failed = sum(len(o.failures) for o in outcomes)
    spent = sum(o.seconds for o in outcomes)
    print(f"fuzz: {tried} inputs in {spent:.0f} s, {failed} distinct failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
