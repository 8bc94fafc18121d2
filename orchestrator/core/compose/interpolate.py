"""${VAR} interpolation, as Docker Compose does it.

Supported: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error},
${VAR?error}, ${VAR:+replacement}, ${VAR+replacement}, nesting inside the argument
(${A:-${B:-x}}), and $$ for a literal $. A `$` not followed by a name, `$` or `{` is
kept as it is (like Compose). The argument is interpolated only when it is used, so an
unused default never warns about its own variables.

Nesting is limited to INTERPOLATION_MAX_DEPTH levels (a hostile file could otherwise
exhaust the stack, and each level rescans the rest of the string).

Only values are interpolated, never keys. Unset variables (plain $VAR / ${VAR}) become
the empty string and are reported to `on_unset`.
"""

from __future__ import annotations

from typing import Callable, Mapping

from orchestrator.limits import INTERPOLATION_MAX_DEPTH
from orchestrator.core.yamlsrc import YList, YMap

from .problems import Collector


class TemplateError(ValueError):
    """A malformed template or a required variable with no value."""

    def __init__(self, message: str, fix: str, variable: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.variable = variable


def _is_name_start(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_name_char(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9")


_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def substitute(
    text: str,
    lookup: Callable[[str], str | None],
    on_unset: Callable[[str], None] | None = None,
) -> str:
    """Interpolate one string. Raises TemplateError."""
    if "$" not in text:
        return text
    out, _ = _render(text, 0, len(text), lookup, on_unset, text)
    return out


def _render(text, i, end, lookup, on_unset, whole, depth=0) -> tuple[str, int]:
    parts: list[str] = []
    while i < end:
        j = text.find("$", i, end)
        if j < 0:
            parts.append(text[i:end])
            break
        parts.append(text[i:j])
        nxt = text[j + 1] if j + 1 < end else ""
        if nxt == "$":
            parts.append("$")
            i = j + 2
        elif nxt == "{":
            value, i = _braced(text, j, end, lookup, on_unset, whole, depth)
            parts.append(value)
        elif nxt and _is_name_start(nxt):
            k = j + 2
            while k < end and _is_name_char(text[k]):
                k += 1
            name = text[j + 1:k]
            value = lookup(name)
            if value is None:
                if on_unset:
                    on_unset(name)
                value = ""
            parts.append(value)
            i = k
        else:
            parts.append("$")
            i = j + 1
    return "".join(parts), end


def _invalid(whole: str) -> TemplateError:
    return TemplateError(
        f"invalid interpolation format {whole!r}",
        "write ${NAME}, ${NAME:-default} or ${NAME:?message}; use $$ for a literal $",
    )


def _braced(text, j, end, lookup, on_unset, whole, depth) -> tuple[str, int]:
    """Handle ${...} starting at text[j] == '$'. Returns (value, index after '}')."""
    if depth >= INTERPOLATION_MAX_DEPTH:
        raise TemplateError(
            f"interpolation nested deeper than {INTERPOLATION_MAX_DEPTH} levels (${{A:-${{B:-...}}}})",
            f"nest at most {INTERPOLATION_MAX_DEPTH} ${{...}} inside each other; set the variable in .env instead",
        )
    k = j + 2
    if k >= end or not _is_name_start(text[k]):
        raise _invalid(whole)
    k += 1
    while k < end and _is_name_char(text[k]):
        k += 1
    name = text[j + 2:k]
    if k >= end:
        raise TemplateError(
            f"invalid interpolation format {whole!r}: missing closing brace",
            f"close the variable with a brace: ${{{name}}}",
        )
    if text[k] == "}":
        value = lookup(name)
        if value is None:
            if on_unset:
                on_unset(name)
            value = ""
        return value, k + 1
    op = None
    for candidate in _OPERATORS:
        if text.startswith(candidate, k):
            op = candidate
            break
    if op is None:
        raise _invalid(whole)
    arg_start = k + len(op)
    arg_end = _closing_brace(text, arg_start, end)
    if arg_end < 0:
        raise TemplateError(
            f"invalid interpolation format {whole!r}: missing closing brace",
            f"close the variable with a brace: ${{{name}{op}...}}",
        )
    after = arg_end + 1
    value = lookup(name)
    is_set = value is not None
    non_empty = bool(value)

    def arg() -> str:
        return _render(text, arg_start, arg_end, lookup, on_unset, whole, depth + 1)[0]

    if op == ":-":
        return (value if non_empty else arg()), after
    if op == "-":
        return (value if is_set else arg()), after
    if op == ":+":
        return (arg() if non_empty else ""), after
    if op == "+":
        return (arg() if is_set else ""), after
    # ":?" and "?"
    if (op == ":?" and non_empty) or (op == "?" and is_set):
        return value, after
    message = arg()
    what = "is missing a value" if not is_set else "is empty"
    text_msg = f"required variable {name} {what}"
    if message:
        text_msg += f": {message}"
    raise TemplateError(
        text_msg,
        f"set {name} in the shell environment or in the .env file",
        variable=name,
    )


def _closing_brace(text: str, i: int, end: int) -> int:
    depth = 0
    while i < end:
        c = text[i]
        if c == "$" and i + 1 < end:
            n = text[i + 1]
            if n == "$":
                i += 2
                continue
            if n == "{":
                depth += 1
                i += 2
                continue
        elif c == "}":
            if depth == 0:
                return i
            depth -= 1
        i += 1
    return -1


# --------------------------------------------------------------------------- trees
def interpolate_tree(
    root: YMap,
    variables: Mapping[str, str],
    problems: Collector,
    *,
    file: str | None = None,
) -> None:
    """Interpolate every string value of a located tree in place.

    Problems (malformed templates, required variables) are added to `problems` with
    their location and key path; unset variables become warnings (one per variable).
    """
    get = variables.get

    state = {"path": (), "loc": None}

    def on_unset(name: str) -> None:
        loc = state["loc"]
        problems.warn(
            f'the "{name}" variable is not set; defaulting to a blank string',
            loc=loc, path=state["path"], file=file,
            fix=f"set {name} in the shell environment or in the .env file",
            once=("unset", name),
        )

    def visit(node, path) -> None:
        if isinstance(node, YMap):
            for k, v in node.items():
                if isinstance(v, str):
                    if "$" in v:
                        node[k] = one(v, path + (k,), node.value_loc(k))
                elif isinstance(v, (YMap, YList)):
                    visit(v, path + (k,))
        elif isinstance(node, YList):
            for i, v in enumerate(node):
                if isinstance(v, str):
                    if "$" in v:
                        node[i] = one(v, path + (i,), node.loc_of(i))
                elif isinstance(v, (YMap, YList)):
                    visit(v, path + (i,))

    def one(value: str, path, loc) -> str:
        state["path"], state["loc"] = path, loc
        try:
            return substitute(value, get, on_unset)
        except TemplateError as err:
            problems.error(err.message, loc=loc, path=path, fix=err.fix, file=file)
            return value

    visit(root, ())
