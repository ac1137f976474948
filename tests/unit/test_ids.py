"""The identifier rule (usersignals/ids.py): what every edge accepts as a user, item or event id,
and as a tenant, dataset or event type name."""
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infra.generator import EventGenerator, WorkloadConfig
from infra.stack.components import CANARY_USER
from usersignals import ids
from usersignals.registry import EXPERIMENT_NAME, load_registry

# Ids the platform, its tests and its docs already use: none may become invalid.
IN_USE = ["u1", "u42", "i7", "i42", "e-981", "e-1", "u-gone", "u-kept", "hostile-1a2b3c4d", "good-0f9e8d7c",
          "f3-17", "probe-49", "req-u1", "shared-item", "lakeitem", CANARY_USER, "ユーザー🙂",
          "a.b+c@x.com", "dpo@example.com", "first.last@sub.example.co.uk", "user_1-2.3", "café",
          "ticket-4711", "x" * ids.MAX_ID_CHARS, "7", "#%&=,;!$~|<>^()", "\u00e9\u0301", "\U0001f600"]


@pytest.mark.parametrize("value", IN_USE)
def test_the_ids_in_use_are_valid(value):
    assert ids.is_id(value) and ids.id_problem(value) is None and ids.check_id(value) == value


def test_the_generators_ids_are_valid():
    gen = EventGenerator(WorkloadConfig(users=200, items=300, seed=3))
    assert all(ids.is_id(u) for u in gen.user_ids) and all(ids.is_id(i) for i in gen.catalog.item_ids)
    events = [ev for _ in range(100) for ev in gen.session()]
    assert len(events) > 100
    assert all(ids.is_id(ev[f]) for ev in events for f in ("event_id", "user_id", "item_id"))
    assert all(ids.is_name(ev["event_type"]) for ev in events)


@pytest.mark.parametrize("char", list(ids.SPECIAL))
def test_each_special_character_is_refused_wherever_it_stands(char):
    for value in (char, f"a{char}", f"{char}a", f"a{char}b"):
        problem = ids.id_problem(value, "user_id")
        assert problem is not None and repr(char) in problem, (value, problem)
        assert not ids.is_id(value)
        with pytest.raises(ids.InvalidId):
            ids.check_id(value, "user_id")


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x1f", " ", "\x7f", "\x85", "\x9f",
                                  "\u00a0", "\u00ad", "\u1680", "\u180e", "\u2000", "\u2003", "\u200a", "\u200b",
                                  "\u200d", "\u200e", "\u2028", "\u2029", "\u202e", "\u202f", "\u205f", "\u2066",
                                  "\u3000", "\ufeff", "\ud800", "\udfff", "\u034f", "\u115f", "\u3164", "\uffa0"])
def test_control_whitespace_and_invisible_characters_are_refused(char):
    problem = ids.id_problem(f"u{char}1", "user_id")
    assert problem is not None and f"U+{ord(char):04X}" in problem and "position 1" in problem


def test_every_unicode_whitespace_and_control_character_is_refused():
    for code in range(0x110000):
        c = chr(code)
        if c.isspace() or (code < 0x20 or 0x7f <= code <= 0x9f):
            assert not ids.is_id(f"a{c}"), hex(code)


def test_empty_over_long_and_non_string_are_refused_with_what_would_be_right():
    assert ids.id_problem("", "user_id") == "user_id must not be empty"
    assert ids.id_problem("x" * 257, "user_id") == "user_id has 257 characters; at most 256"
    assert ids.id_problem(42, "user_id") == "user_id must be a string, got int"
    assert ids.id_problem("x" * 11, "event_id", max_chars=10) == "event_id has 11 characters; at most 10"
    assert ids.id_problem("a}:views", "user_id") == (
        "user_id 'a}:views' has '}' at position 1; ids may not hold { } : * ? [ ] \\ \" ' ` /, whitespace, "
        "control or invisible characters")


def test_a_list_of_ids_gives_the_first_bad_one():
    assert ids.first_invalid_id([f"u{n}" for n in range(100)], "user id") is None
    assert ids.first_invalid_id([]) is None
    assert ids.first_invalid_id(["u1", "u:2", "u*3"], "user id").startswith("user id 'u:2' has ':'")
    assert ids.first_invalid_id(["u1", ""], "user id") == "user id must not be empty"
    assert ids.first_invalid_id(["u1", "x" * 300]) == "id has 300 characters; at most 256"
    assert ids.first_invalid_id(["u1", 3]) == "id must be a string, got int"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=8))
def test_a_lists_check_agrees_with_each_ids(values):
    expected = next((ids.id_problem(v) for v in values if not ids.is_id(v)), None)
    assert ids.first_invalid_id(values) == expected


def spec_validator():
    """The id's JSON Schema as the API fuzzer (schemathesis) judges it: an ECMA-262 engine."""
    import jsonschema_rs

    from serving.routes import USER_ID_SCHEMA

    return jsonschema_rs.validator_for(USER_ID_SCHEMA)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.text(max_size=300), st.text(st.characters(max_codepoint=0x3000), min_size=250, max_size=260),
                 st.from_regex(r"[a-z]{1,5}[\x00-\x7f\u2000-\u3000][a-z\n]{0,3}", fullmatch=True)))
def test_the_openapi_schema_is_the_rule(value):
    """What the spec's pattern and lengths call valid is what the API accepts, and nothing else."""
    assert spec_validator().is_valid(value) == ids.is_id(value) == (ids.id_problem(value) is None)


@pytest.mark.parametrize("value", ["a\n", "\n", "a\r\n", "a\u2028", "x" * 257, "", "a}", "a/b", ".", ".."])
def test_the_openapi_schema_refuses_what_the_rule_refuses_even_at_the_end(value):
    assert not spec_validator().is_valid(value) and not ids.is_id(value)


def test_the_pattern_is_plain_ecma_262():
    """JSON Schema patterns are ECMA-262: no Python-only syntax (\\A, \\Z, (?P<...>), \\U, \\N{...})."""
    assert ids.ID_PATTERN.startswith("^") and ids.ID_PATTERN.endswith("$")
    assert not re.search(r"\\[AZUN]|\(\?P|\(\?[=!<]", ids.ID_PATTERN)   # nor look-arounds (Rust engines)
    assert re.fullmatch(ids.NAME_PATTERN, "homefeed_ranking") and not re.fullmatch(ids.NAME_PATTERN, "x" * 64)


@pytest.mark.parametrize("name,ok", [("clicks", True), ("exp_dwell_last", True), ("a", True), ("a" * 63, True),
                                     ("a" * 64, False), ("Clicks", False), ("1st", False), ("_x", False),
                                     ("", False), ("clicks\n", False), ("a-b", False), ("a:b", False),
                                     ("a}", False), ("cl icks", False), (None, False)])
def test_names_are_lowercase_snake_case(name, ok):
    assert ids.is_name(name) is ok
    assert (ids.name_problem(name, "tenant") is None) is ok


def test_every_name_is_a_valid_id_and_the_registrys_names_follow_the_rule():
    registry = load_registry()
    names = [*registry.datasets, *registry.event_types, *registry.tenants, *registry.experiments]
    assert names and all(ids.is_name(n) and ids.is_id(n) for n in names)
    # The name alphabet holds no character the id rule refuses.
    assert all(ids.is_id(c) for c in "abcdefghijklmnopqrstuvwxyz0123456789_")
    assert EXPERIMENT_NAME.fullmatch("e" * 40) and ids.is_name("e" * 40)


@pytest.mark.parametrize("value,ok", [(".", False), ("..", False), ("...", True), (".a", True), ("..a", True),
                                      ("a.", True), ("a..b", True)])
def test_dot_segments_are_refused_as_whole_ids_only(value, ok):
    """A URL client or proxy resolves "." and ".." as path segments: such a user could be stored but
    never read or erased through the API. Dots inside an id are fine."""
    assert ids.is_id(value) is ok and (ids.id_problem(value) is None) is ok
    assert spec_validator().is_valid(value) is ok
    assert (ids.first_invalid_id(["u1", value]) is None) is ok
