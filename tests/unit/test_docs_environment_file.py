"""docs/reference/environment-file.md documents every key the environment parser accepts.

Each key appears as a table row whose first cell is its full path in backticks
(`registry.ca_file`, `nodes[].labels`, `verify.checks[].http`). Adding a key to one of
the _*_KEYS sets of orchestrator/core/environments.py without documenting it fails here, and
so does a documented key the parser no longer accepts. The doc's full example must parse.
"""

import re
from pathlib import Path

from orchestrator.core import edge, environments, mesh

DOC = Path(__file__).resolve().parents[2] / "docs" / "reference" / "environment-file.md"

# Where each key set lives in the file, as the doc writes the path.
PREFIXES = {
    "_TOP_KEYS": "",
    "_NODE_KEYS": "nodes[].",
    "_SSH_KEYS": "ssh.",
    "_REGISTRY_KEYS": "registry.",
    "_REGISTRIES_KEYS": "registries[].",
    "_GATE_KEYS": "gates.",
    "_VERIFY_KEYS": "verify.",
    "_CHECK_KEYS": "verify.checks[].",
}
# Key sets parsed in their own module.
OTHER_SETS = {"mesh.": mesh.MESH_KEYS, "ingress.": edge.INGRESS_KEYS, "ingress.acme.": edge.ACME_KEYS}

ROW = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)


def key_sets() -> dict[str, set]:
    return {name: value for name, value in vars(environments).items()
            if re.fullmatch(r"_[A-Z]+_KEYS", name) and isinstance(value, (set, frozenset))}


def accepted_paths() -> set[str]:
    return ({PREFIXES[name] + key for name, keys in key_sets().items() if name in PREFIXES for key in keys}
            | {prefix + key for prefix, keys in OTHER_SETS.items() for key in keys})


def documented_paths() -> set[str]:
    found = set(ROW.findall(DOC.read_text()))
    assert len(found) >= len(PREFIXES), f"{DOC.name} has no key table rows (| `PATH` |) any more"
    return found


def test_every_key_set_has_a_place_in_the_doc():
    gone = sorted(set(PREFIXES) - set(key_sets()))
    assert not gone, f"the key set(s) {gone} are no longer in orchestrator/core/environments.py: update PREFIXES"
    unknown = sorted(set(key_sets()) - set(PREFIXES))
    assert not unknown, (f"environments.py has new key set(s) {unknown}: add their path prefix to PREFIXES here "
                         "and document their keys in docs/reference/environment-file.md")


def test_every_accepted_key_is_documented():
    missing = sorted(accepted_paths() - documented_paths())
    assert not missing, (f"keys accepted by orchestrator/core/environments.py but not documented in {DOC.name}: "
                         f"{missing} (add a table row starting with | `PATH` |)")


def test_every_documented_key_is_accepted():
    extra = sorted(documented_paths() - accepted_paths())
    assert not extra, f"{DOC.name} documents keys the parser does not accept: {extra}"


def test_the_full_example_parses(tmp_path):
    text = DOC.read_text()
    section = text.split("## Full example", 1)[1]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match, "the Full example section has no ```yaml block"
    path = tmp_path / "prod.yaml"
    path.write_text(match.group(1))
    env = environments.parse_environment(path, expected_name="prod")
    assert [n.name for n in env.nodes] == ["web-1", "web-2"]
    assert env.gates.approval and env.gates.verification
    assert env.overlay_source is not None


def test_section_examples_parse(tmp_path):
    """Each small yaml example of the key sections is valid on its own (a node added when it has none)."""
    text = DOC.read_text().split("## Full example", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    assert len(blocks) >= 7, "the key sections lost their examples"
    for i, body in enumerate(blocks):
        if not re.search(r"^nodes:", body, re.MULTILINE):
            body += "nodes:\n  - {name: n1, host: 192.0.2.1}\n"
        if not re.search(r"^name:", body, re.MULTILINE):
            body = "name: example\n" + body
        name = re.search(r"^name: (\S+)", body, re.MULTILINE).group(1)
        path = tmp_path / str(i) / f"{name}.yaml"
        path.parent.mkdir()
        path.write_text(body)
        environments.parse_environment(path, expected_name=name)
