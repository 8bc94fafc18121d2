"""The one Jinja2 environment for user templates (environment overlays, verify checks).

Environment files come from repositories that CI jobs holding SSH keys read, so a
template must not run code: templates render in Jinja2's immutable sandbox (no
`__globals__`, no private attributes, no mutating methods), with StrictUndefined.
Operators that could build huge values (`'x' * 10**9`, `9 ** 9 ** 9`) and the
rendered value itself are bounded by limits.TEMPLATE_MAX_CHARS. Anything a template
does wrong at render time is bad input (TemplateFailed), not a bug in orch.
"""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from orchestrator.limits import TEMPLATE_MAX_CHARS

__all__ = ["TemplateFailed", "environment", "render"]


class TemplateFailed(Exception):
    """A template that is refused or fails while rendering; `message` says why."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message = message
        self.fix = fix


_SHORTER = "make the value shorter (limits in docs/reference/limits.md)"


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > TEMPLATE_MAX_CHARS:
                    raise TemplateFailed(f"'*' would make a value longer than {TEMPLATE_MAX_CHARS:,} items",
                                         _SHORTER)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0:
            if max(abs(left), 2).bit_length() * right > TEMPLATE_MAX_CHARS * 8:
                raise TemplateFailed("'**' would make a number too large", _SHORTER)
        return super().call_binop(context, operator, left, right)


def environment(**options: Any) -> jinja2.Environment:
    """A sandboxed environment with StrictUndefined (options as for jinja2.Environment)."""
    return _Sandbox(undefined=jinja2.StrictUndefined, **options)


def render(template: jinja2.Template, context: dict) -> str:
    """Render within the limits; raises TemplateFailed (UndefinedError is left to callers)."""
    size = 0
    parts: list[str] = []
    try:
        for chunk in template.generate(context):
            size += len(chunk)
            if size > TEMPLATE_MAX_CHARS:
                raise TemplateFailed(f"the template renders more than {TEMPLATE_MAX_CHARS:,} characters", _SHORTER)
            parts.append(chunk)
    except jinja2.UndefinedError:
        raise
    except jinja2.sandbox.SecurityError as err:
        raise TemplateFailed(f"the template is refused by the sandbox: {err}",
                             "use only values (env, vars, nodes...), filters and tests; templates cannot reach "
                             "Python internals (__class__, __globals__...) or call methods that change values") from None
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError, RecursionError,
            AttributeError) as err:
        raise TemplateFailed(f"the template failed: {type(err).__name__}: {err}",
                             "fix the expression (e.g. try it with `orch config --env ENV`)") from None
    return "".join(parts)
