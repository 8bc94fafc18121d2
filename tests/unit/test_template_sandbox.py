"""Templates in environment files render in Jinja2's sandbox (security finding 3).

An attempt to reach Python internals, or a template that fails or grows huge, is bad
input (exit 2) naming file, line and key; ordinary templates render as before.
"""

from __future__ import annotations

import pytest

from orchestrator.errors import InputError
from tests.unit.fakes import ENV_FILE, SERVICE, orch_process, refused


def test_overlay_template_cannot_run_code(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "compose.yaml").write_text(SERVICE)
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "dev.yaml").write_text(
        ENV_FILE + "overlay:\n  x-foo: \"{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}\"\n" % marker)
    problem = refused(tmp_path, "--env", "dev")
    assert not marker.exists()
    assert "refused by the sandbox" in problem["message"]
    assert problem["file"].endswith("dev.yaml") and problem["line"] == 6 and problem["key"] == "overlay.x-foo"


@pytest.mark.parametrize("expr, message", [
    ("''.__class__.__mro__", "refused by the sandbox"),
    ("vars.items.__self__.clear()", "refused by the sandbox"),
    ("'x' * 100000000", "would make a value longer than"),
    ("9 ** 99999999", "would make a number too large"),
    ("1 / 0", "ZeroDivisionError"),
    ("range(10) | join * 200000", "would make a value longer than"),
])
def test_overlay_template_errors_are_bad_input(tmp_path, expr, message):
    (tmp_path / "compose.yaml").write_text(SERVICE)
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "dev.yaml").write_text(
        ENV_FILE + f"vars: {{a: 1}}\noverlay:\n  services:\n    web:\n      labels:\n        l: \"{{{{ {expr} }}}}\"\n")
    problem = refused(tmp_path, "--env", "dev")
    assert message in problem["message"]
    assert problem["line"] == 10 and problem["key"] == "overlay.services.web.labels.l"


def test_overlay_templates_still_render(tmp_path):
    (tmp_path / "compose.yaml").write_text(SERVICE)
    (tmp_path / "environments").mkdir()
    (tmp_path / "environments" / "dev.yaml").write_text(
        ENV_FILE + "vars: {n: 3}\noverlay:\n  services:\n    web:\n      labels:\n"
        "        l: \"{{ env.name }}-{{ nodes[0].name | upper }}-{{ vars.n * 2 }}-{{ 'ab' * 2 }}\"\n")
    code, final, stderr = orch_process(["config", "--env", "dev"], tmp_path)
    assert code == 0, stderr
    assert final["project"]["services"]["web"]["labels"]["l"] == "dev-DEV-1-6-abab"


def test_verify_templates_are_sandboxed(tmp_path):
    from orchestrator.core.environments import parse_environment
    from orchestrator.core.verify import plan_checks

    env = tmp_path / "dev.yaml"
    env.write_text(ENV_FILE + "verify:\n  checks:\n    - name: evil\n"
                   "      http: \"http://{{ cycler.__init__.__globals__.os.popen('id').read() }}/\"\n")
    with pytest.raises(InputError) as info:
        plan_checks(parse_environment(env))
    problem = info.value.problems[0]
    assert "refused by the sandbox" in problem.message
    assert (problem.file, problem.line, problem.key) == (str(env), 8, "verify.checks[0].http")
