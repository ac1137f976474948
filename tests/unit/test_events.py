import orjson
import pytest

from usersignals.events import Event, InvalidEvent, Limits, decode_stored, encode_stored, parse_event

TYPES = {"click", "view"}
NOW = 1_800_000_000_000


def good(**over):
    ev = {"event_id": "e1", "user_id": "u1", "event_type": "click", "item_id": "i1", "ts": NOW - 1000}
    ev.update(over)
    return ev


def parse(ev, key=b"u1", **kw):
    raw = ev if isinstance(ev, bytes) else orjson.dumps(ev)
    return parse_event(raw, key, TYPES, now_ms=NOW, **kw)


def reason_of(ev, key=b"u1", **kw):
    with pytest.raises(InvalidEvent) as info:
        parse(ev, key, **kw)
    return info.value.reason


def test_a_valid_event_parses_with_optional_fields():
    e = parse(good(surface="homefeed", dwell_ms=1200, query="cake"))
    assert e == Event("e1", "u1", "click", "i1", NOW - 1000, "homefeed", 1200, "cake")


def test_optional_fields_may_be_null_or_absent_and_unknown_fields_are_ignored():
    e = parse(good(surface=None, dwell_ms=None, extra={"x": 1}))
    assert e.surface is None and e.dwell_ms is None


@pytest.mark.parametrize("raw,reason", [
    (b"{not json", "not_json"),
    (b"\xff\xfe", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'"str"', "not_object"),
])
def test_payloads_that_are_not_json_objects(raw, reason):
    assert reason_of(raw) == reason


@pytest.mark.parametrize("field", ["event_id", "user_id", "event_type", "item_id", "ts"])
def test_each_required_field_is_required(field):
    ev = good()
    del ev[field]
    assert reason_of(ev) == "missing_field"


@pytest.mark.parametrize("over,reason", [
    ({"ts": "1700000000000"}, "bad_type"),
    ({"ts": 1.5}, "bad_type"),
    ({"ts": True}, "bad_type"),
    ({"user_id": 42}, "bad_type"),
    ({"item_id": None}, "bad_type"),
    ({"dwell_ms": "10"}, "bad_type"),
    ({"event_id": ""}, "bad_value"),
    ({"item_id": "x" * 257}, "bad_value"),
    ({"item_id": "a\x00b"}, "bad_value"),
    ({"surface": "home\nfeed"}, "bad_value"),
    ({"dwell_ms": -1}, "bad_value"),
    ({"event_type": "x" * 65}, "bad_value"),
    ({"ts": 0}, "ts_out_of_range"),
    ({"ts": 32503680000000}, "ts_out_of_range"),
])
def test_bad_fields_are_rejected_with_their_reason(over, reason):
    ev = good(**over)
    if "user_id" in over and not isinstance(over["user_id"], str):
        assert reason_of(ev, key=b"42") == reason
    else:
        assert reason_of(ev) == reason


def test_a_type_outside_the_given_ones_is_unknown_only_when_the_caller_asks():
    # The producer's check: a misspelt type fails before it is sent.
    assert reason_of(good(event_type="hover")) == "unknown_event_type"
    # The indexing job's: any well-formed type parses (the registry decides what is indexed).
    e = parse_event(orjson.dumps(good(event_type="hover")), b"u1", None, now_ms=NOW)
    assert e.event_type == "hover"


def test_a_malformed_event_of_an_unlisted_type_keeps_its_own_reason():
    for over, reason in (({"ts": 0}, "ts_out_of_range"), ({"item_id": ""}, "bad_value")):
        with pytest.raises(InvalidEvent) as info:
            parse_event(orjson.dumps(good(event_type="hover", **over)), b"u1", None, now_ms=NOW)
        assert info.value.reason == reason
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(good(event_type="hover")), b"u2", None, now_ms=NOW)
    assert info.value.reason == "key_mismatch"


def test_oversized_payloads_are_rejected_before_parsing():
    assert reason_of(good(query="q" * 20_000)) == "too_large"
    assert reason_of(b"x" * 2_000_000) == "too_large"


def test_the_key_must_be_the_user_id():
    assert reason_of(good(), key=b"u2") == "key_mismatch"
    assert reason_of(good(), key=None) == "key_mismatch"


@pytest.mark.parametrize("field", ["user_id", "item_id", "event_id"])
@pytest.mark.parametrize("value", ["a}:views", "u{1}", "u:1", "u*", "u?", "[u]", "u\\1", "u'1", 'u"1', "u`1",
                                   "u/1", "u 1", "u\u00a01", "u\u20031", "u\u200b1", "u\u202e1", "u\x851"])
def test_an_id_breaking_the_identifier_rule_is_a_dead_letter_naming_it(field, value):
    ev = good(**{field: value})
    key = value.encode() if field == "user_id" else b"u1"
    with pytest.raises(InvalidEvent) as info:
        parse(ev, key=key)
    assert info.value.reason == "invalid_id"
    assert info.value.detail.startswith(f"field {field!r} {value!r} has ")
    # The job's own call (no registry types) refuses it the same way.
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(ev), key, None, now_ms=NOW)
    assert info.value.reason == "invalid_id"


@pytest.mark.parametrize("value", ["Click", "click*", "cl:ick", "1click", "cl ick", "click\u200b", "_click"])
def test_an_event_type_that_could_never_be_registered_is_a_dead_letter(value):
    with pytest.raises(InvalidEvent) as info:
        parse_event(orjson.dumps(good(event_type=value)), b"u1", None, now_ms=NOW)
    assert info.value.reason == "invalid_id" and repr(value) in info.value.detail


def test_ids_keep_their_older_reasons_for_empty_long_and_control_characters():
    assert reason_of(good(user_id=""), key=b"") == "bad_value"
    assert reason_of(good(event_id="e" * 257)) == "bad_value"
    assert reason_of(good(item_id="i\n1")) == "bad_value"
    assert reason_of(good(event_type="x" * 65)) == "bad_value"


@pytest.mark.parametrize("value", ["a.b+c@x.com", "ユーザー🙂", "u-42_x.y", "#%&=,;!$~", "x" * 256])
def test_ids_the_rule_allows_parse(value):
    e = parse(good(user_id=value, item_id=value, event_id=value), key=value.encode())
    assert (e.user_id, e.item_id, e.event_id) == (value, value, value)


def test_the_new_reason_is_appended_so_the_older_ones_keep_their_order():
    from usersignals.events import REASONS

    assert REASONS == ("too_large", "not_json", "not_object", "missing_field", "bad_type", "bad_value",
                       "unknown_event_type", "ts_out_of_range", "key_mismatch", "invalid_id")


def test_unicode_ids_are_fine_and_key_compares_as_utf8():
    e = parse(good(user_id="ユーザー🙂"), key="ユーザー🙂".encode())
    assert e.user_id == "ユーザー🙂"


def test_time_window_is_configurable():
    limits = Limits(max_past_ms=10_000, max_future_ms=0)
    assert reason_of(good(ts=NOW - 20_000), limits=limits) == "ts_out_of_range"
    assert reason_of(good(ts=NOW + 1), limits=limits) == "ts_out_of_range"
    assert parse(good(ts=NOW - 5_000), limits=limits).ts == NOW - 5_000


def test_detail_names_the_bad_value():
    with pytest.raises(InvalidEvent) as info:
        parse(good(event_type="hover"))
    assert "hover" in info.value.detail


def test_stored_form_round_trips_without_user_and_type():
    e = parse(good(dwell_ms=5))
    stored = decode_stored(encode_stored(e, {"category": "c1"}))
    assert stored == {"event_id": "e1", "item_id": "i1", "ts": NOW - 1000, "dwell_ms": 5,
                      "features": {"category": "c1"}}


def test_no_input_makes_the_parser_raise_anything_but_invalid_event():
    """A poison record would crash-loop the job, so fuzz the parser with hostile bytes."""
    import random

    rng = random.Random(1234)
    seed = orjson.dumps(good(surface="s", dwell_ms=1, query="q"))
    pieces = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"\\u0000", b"\\ud800", b"null", b"true",
              b"1e999", b"-0", b"\xff", b"\x00", "ü🙂".encode(), b"9" * 30]
    for i in range(20_000):
        kind = i % 3
        if kind == 0:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        elif kind == 1:
            raw = bytearray(seed)
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(raw))
                raw[pos:pos + rng.randint(0, 3)] = rng.choice(pieces)
            raw = bytes(raw)
        else:
            raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        key = rng.choice([None, b"u1", bytes([rng.getrandbits(8)])])
        try:
            parse_event(raw, key, TYPES, now_ms=NOW)
        except InvalidEvent:
            pass
