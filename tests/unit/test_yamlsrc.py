"""orchestrator.core.yamlsrc: located YAML."""

from __future__ import annotations

import pickle

import pytest

from orchestrator.errors import InputError
from orchestrator.core.yamlsrc import (
    Loc,
    YList,
    YMap,
    load_yaml_file,
    locate,
    map_strings,
    parse_yaml,
    to_plain,
)

DOC = """\
x-base: &base
  image: foo
  restart: always
services:
  web:
    <<: *base
    image: bar
    ports:
      - 22:22
      - "80:80"
    command: !override [a, b]
    environment:
      DROP: !reset null
"""


def err(text: str) -> InputError:
    with pytest.raises(InputError) as info:
        parse_yaml(text, "f.yaml")
    return info.value


def test_containers_and_locations():
    d = parse_yaml(DOC, "c.yaml")
    assert isinstance(d, YMap) and isinstance(d["services"]["web"]["ports"], YList)
    web = d["services"]["web"]
    assert web.loc == Loc("c.yaml", 6, 5)
    assert d["services"].loc_of("web") == Loc("c.yaml", 5, 3)
    assert web.loc_of("image") == Loc("c.yaml", 7, 5)
    assert web.value_loc("ports") == Loc("c.yaml", 9, 7)
    assert web["ports"].loc_of(1) == Loc("c.yaml", 10, 9)
    # a key merged in with << keeps the location of its anchor
    assert web.loc_of("restart") == Loc("c.yaml", 3, 3)
    # absent key: the mapping's own location
    assert web.loc_of("nope") == web.loc


def test_merge_key_explicit_wins():
    d = parse_yaml(DOC, "c.yaml")
    assert d["services"]["web"]["image"] == "bar"
    assert d["services"]["web"]["restart"] == "always"


def test_compose_tags_are_kept_beside_the_value():
    web = parse_yaml(DOC, "c.yaml")["services"]["web"]
    assert web["command"] == ["a", "b"] and web.tag_of("command") == "override"
    assert web["environment"]["DROP"] is None and web["environment"].tag_of("DROP") == "reset"
    assert web.tag_of("image") is None


@pytest.mark.parametrize(
    "text,value",
    [
        ("22:22", "22:22"),  # YAML 1.1 would say 1342
        ("yes", "yes"),
        ("off", "off"),
        ("true", True),
        ("False", False),
        ("~", None),
        ("", None),
        ("null", None),
        ("12", 12),
        ("0440", 288),
        ("0o17", 15),
        ("0x1F", 31),
        ("1_000", 1000),
        ("1.5", 1.5),
        ("1e3", 1000.0),
        ("2020-01-01", "2020-01-01"),
        ("'12'", "12"),
        ('"true"', "true"),
        ("!!str 12", "12"),
        ("!!int '7'", 7),
        ("1.2.3", "1.2.3"),
        ("-x", "-x"),
        ("+1", 1),
    ],
)
def test_scalars_follow_yaml_1_2_core_like_compose(text, value):
    assert parse_yaml(f"v: {text}\n", "f")["v"] == value


def test_keys_are_strings():
    assert list(parse_yaml("1: a\ntrue: b\n", "f")) == ["1", "true"]


def test_empty_document_is_none():
    assert parse_yaml("", "f") is None
    assert parse_yaml("# nothing\n", "f") is None


def test_duplicate_keys_all_reported():
    e = err("a: 1\nb: 2\na: 3\nb: 4\n")
    assert len(e.problems) == 2
    p = e.problems[0]
    assert (p.file, p.line, p.column) == ("f.yaml", 3, 1)
    assert "duplicate key 'a' (already defined at line 1)" in p.message
    assert p.fix


def test_syntax_error_is_located():
    p = err("services:\n  web:\n    image: [a\n").problems[0]
    assert p.file == "f.yaml" and p.line == 4
    assert p.message.startswith("YAML syntax error:")
    assert "flow sequence started at line 3" in p.message
    p = err("a: b: c\n").problems[0]
    assert (p.line, p.column) == (1, 5) and "mapping values are not allowed" in p.message
    assert "quote" in p.fix


def test_tab_indentation_hint():
    p = err("a:\n\tb: 1\n").problems[0]
    assert p.line == 2 and "tabs" in p.fix


def test_several_documents_rejected():
    p = err("a: 1\n---\nb: 2\n").problems[0]
    assert "one YAML document" in p.fix


def test_unknown_tag_and_recursive_alias():
    p = err("a: !foo 1\n").problems[0]
    assert "unsupported YAML tag '!foo'" in p.message and (p.line, p.column) == (1, 4)
    p = err("a: &x [*x]\n").problems[0]
    assert "recursive YAML alias" in p.message


def test_control_character():
    p = err("a: 1\nb: \x01\n").problems[0]
    assert (p.line, p.column) == (2, 4) and "control character" in p.message


def test_non_utf8_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes("a: 1\nb: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InputError) as info:
        load_yaml_file(f)
    p = info.value.problems[0]
    assert p.file == str(f) and (p.line, p.column) == (2, 7)
    assert "not valid UTF-8" in p.message and "UTF-8" in p.fix


def test_utf8_bom_accepted(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml_file(f) == {"a": 1}


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_yaml_file(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="is a directory"):
        load_yaml_file(tmp_path)


def test_display_name(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("a: [\n")
    with pytest.raises(InputError) as info:
        load_yaml_file(f, display="c.yaml")
    assert info.value.problems[0].file == "c.yaml"


def test_map_strings_replaces_values_not_keys_and_keeps_locations():
    d = parse_yaml("a: x\nb:\n  - y\n  - 3\nc: {d: z}\n", "f")
    seen = []

    def fn(value, loc):
        seen.append((value, loc.line, loc.column))
        return value.upper()

    out = map_strings(d, fn)
    assert out == {"a": "X", "b": ["Y", 3], "c": {"d": "Z"}}
    assert d == {"a": "x", "b": ["y", 3], "c": {"d": "z"}}  # original untouched
    assert seen == [("x", 1, 4), ("y", 3, 5), ("z", 5, 8)]
    assert isinstance(out, YMap) and out.loc_of("c") == d.loc_of("c")
    assert out["b"].loc_of(1) == d["b"].loc_of(1)


def test_map_strings_keeps_tags():
    d = parse_yaml("a: !reset x\n", "f")
    assert map_strings(d, lambda v, loc: v + "!").tag_of("a") == "reset"


def test_locate_key_path():
    d = parse_yaml(DOC, "c.yaml")
    assert locate(d, "services.web.ports[1]") == Loc("c.yaml", 10, 9)
    assert locate(d, "services.web.image") == Loc("c.yaml", 7, 5)
    assert locate(d, "services.web.nope.deeper") == Loc("c.yaml", 5, 3)


def test_shallow_copy_and_pickle_keep_locations():
    d = parse_yaml(DOC, "c.yaml")
    web = d["services"]["web"]
    c = web.copy()
    assert isinstance(c, YMap) and c.loc_of("image") == web.loc_of("image")
    assert c.tag_of("command") == "override"
    p = pickle.loads(pickle.dumps(d))
    assert p["services"]["web"]["ports"].loc_of(1) == web["ports"].loc_of(1)
    del c["image"]
    assert "image" in web and c.loc_of("image") == c.loc


def test_to_plain():
    plain = to_plain(parse_yaml(DOC, "c.yaml"))
    assert type(plain) is dict and type(plain["services"]["web"]["ports"]) is list
