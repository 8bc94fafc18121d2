"""Verification checks run against what is live: HTTP requests and commands on the
controller, in parallel, into a VerifyReport (the plan of them: orchestrator.core.verify)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from orchestrator.core.verify import CheckResult, CheckTarget, VerifyReport

OUTPUT_LINES = 20
RETRY_DELAY = 1.0


def run_http(t: CheckTarget, *, get: Callable[..., Any] | None = None, sleep: Callable[[float], None] = time.sleep,
             retry_delay: float = RETRY_DELAY) -> CheckResult:
    import requests

    get = get or requests.get
    start = time.monotonic()
    if not t.url:
        return CheckResult(t.name, "http", "", False, 0, 0.0, t.node, t.service,
                           error=f"service {t.service} has no running container to check")
    status, error = None, ""
    attempt = 0
    for attempt in range(1, t.retries + 2):
        try:
            resp = get(t.url, timeout=t.timeout)
            status = resp.status_code
            body = resp.text
            if status != t.status:
                error = f"HTTP {status} (expected {t.status})"
            elif t.contains is not None and t.contains not in body:
                error = f"the response does not contain {t.contains!r}"
            else:
                return CheckResult(t.name, "http", t.url, True, attempt, round(time.monotonic() - start, 2), t.node,
                                   t.service, status)
        except requests.exceptions.Timeout:
            status, error = None, f"no answer within {t.timeout:g}s"
        except requests.exceptions.ConnectionError as err:
            status, error = None, _conn_reason(err)
        except requests.exceptions.RequestException as err:
            status, error = None, str(err)[:300]
        if attempt <= t.retries:
            sleep(retry_delay)
    return CheckResult(t.name, "http", t.url, False, attempt, round(time.monotonic() - start, 2), t.node, t.service,
                       status, error)


def _conn_reason(err: Exception) -> str:
    text = str(err)
    if "refused" in text.lower():
        return "connection refused"
    m = re.search(r"\[Errno [-\d]+\] ([^'\")]+)", text)
    return m.group(1).strip() if m else text[:200]


def run_command(t: CheckTarget, *, environ: Mapping[str, str] | None = None, cwd: str | None = None,
                sleep: Callable[[float], None] = time.sleep, retry_delay: float = RETRY_DELAY) -> CheckResult:
    env = dict(os.environ if environ is None else environ)
    env.update(t.environ)
    start = time.monotonic()
    code, error, lines = None, "", []
    attempt = 0
    for attempt in range(1, t.retries + 2):
        try:
            cp = subprocess.run(list(t.argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=t.timeout)
            code = cp.returncode
            lines = (cp.stdout + cp.stderr).splitlines()[-OUTPUT_LINES:]
            if code == 0:
                return CheckResult(t.name, "command", t.target, True, attempt, round(time.monotonic() - start, 2),
                                   None, t.service, 0, "", lines)
            error = f"exited with code {code}"
        except FileNotFoundError:
            return CheckResult(t.name, "command", t.target, False, attempt, round(time.monotonic() - start, 2),
                               None, t.service, None, f"command not found: {t.argv[0]}")
        except subprocess.TimeoutExpired as err:
            code, error = None, f"did not finish within {t.timeout:g}s"
            out = err.stdout or b""
            text = out.decode("utf-8", "replace") if isinstance(out, bytes) else out
            lines = text.splitlines()[-OUTPUT_LINES:]
        if attempt <= t.retries:
            sleep(retry_delay)
    return CheckResult(t.name, "command", t.target, False, attempt, round(time.monotonic() - start, 2), None,
                       t.service, code, error, lines)


def run_checks(targets: Iterable[CheckTarget], *, env: str, project: str = "", release: int | None = None,
               environ: Mapping[str, str] | None = None, cwd: str | None = None, max_parallel: int = 8,
               on_result: Callable[[CheckResult], None] | None = None,
               runners: Mapping[str, Callable[..., CheckResult]] | None = None) -> VerifyReport:
    """Run targets (in parallel, results in plan order) into a VerifyReport."""
    from orchestrator.core.releases import now_iso

    targets = list(targets)
    run = dict(runners or {})
    http = run.get("http") or run_http
    command = run.get("command") or (lambda t: run_command(t, environ=environ, cwd=cwd))
    started, t0 = now_iso(), time.monotonic()

    def one(t: CheckTarget) -> CheckResult:
        r = http(t) if t.kind == "http" else command(t)
        if on_result is not None:
            on_result(r)
        return r

    if targets:
        with ThreadPoolExecutor(max_workers=max(1, min(max_parallel, len(targets))), thread_name_prefix="verify") as ex:
            results = list(ex.map(one, targets))
    else:
        results = []
    return VerifyReport(env, project, release, results, started, now_iso(), round(time.monotonic() - t0, 2))
