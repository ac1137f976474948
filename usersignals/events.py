"""The event contract: what a user event on topic ``user_events`` must look like.

Key = user_id (UTF-8), value = a JSON object::

    {"event_id": str, "user_id": str, "event_type": str, "item_id": str,
     "ts": int (event time, epoch ms), "surface": str?, "dwell_ms": int?, "query": str?}

``parse_event`` turns the raw key and value bytes into an ``Event`` or raises
``InvalidEvent`` with a stable reason code (the DLQ header and metric label) and a
detail message naming the bad value. It never raises anything else, whatever the bytes.

Well-formed is not the same as registered: the indexing job keeps a well-formed event of a
type the registry does not know (it lands in raw_events, so a type registered later can be
bootstrapped from its history) and only indexes registered types. A producer may still ask
for the stricter check (``event_types``) to catch a misspelt type before it is sent.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Container

import orjson

from usersignals import ids

# Reason codes are a public contract: DLQ consumers and alerts match on them.
REASONS = (
    "too_large",          # payload over the size limit
    "not_json",           # not UTF-8 JSON
    "not_object",         # JSON, but not an object
    "missing_field",      # a required field is absent
    "bad_type",           # a field has the wrong JSON type
    "bad_value",          # right type, unacceptable value (empty, too long, control chars, negative)
    "unknown_event_type", # event_type not in the registry (only when the caller asks: the producer)
    "ts_out_of_range",    # event time absurdly far in the past or future
    "key_mismatch",       # Kafka key missing or not equal to user_id
    "invalid_id",         # an id or event type breaks the identifier rule (usersignals.ids)
)

REQUIRED = ("event_id", "user_id", "event_type", "item_id", "ts")


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 16 * 1024
    max_id_chars: int = ids.MAX_ID_CHARS
    max_query_chars: int = 1024
    max_surface_chars: int = 64
    max_past_ms: int = 30 * 24 * 3600 * 1000
    max_future_ms: int = 3600 * 1000
    max_dwell_ms: int = 24 * 3600 * 1000


DEFAULT_LIMITS = Limits()


class InvalidEvent(ValueError):
    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    user_id: str
    event_type: str
    item_id: str
    ts: int
    surface: str | None = None
    dwell_ms: int | None = None
    query: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "user_id": self.user_id, "event_type": self.event_type,
                **_body(self)}

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _has_control(s: str) -> bool:
    return _CONTROL.search(s) is not None


def _string(obj: dict, name: str, max_chars: int, required: bool, rule=None) -> str | None:
    """The string field ``name``; ``rule`` (``ids.id_problem``, ``ids.name_problem``) is
    checked after the checks every string gets, so their reasons stay ``bad_value``."""
    if name not in obj or (not required and obj[name] is None):
        if required:
            raise InvalidEvent("missing_field", f"field {name!r} is required")
        return None
    v = obj[name]
    if not isinstance(v, str):
        raise InvalidEvent("bad_type", f"field {name!r} must be a string, got {type(v).__name__}")
    if not v:
        raise InvalidEvent("bad_value", f"field {name!r} must not be empty")
    if len(v) > max_chars:
        raise InvalidEvent("bad_value", f"field {name!r} has {len(v)} characters; at most {max_chars}")
    if _has_control(v):
        raise InvalidEvent("bad_value", f"field {name!r} contains control characters")
    if rule is not None and (problem := rule(v, f"field {name!r}")) is not None:
        raise InvalidEvent("invalid_id", problem)
    return v


def _event_type_problem(value: str, what: str) -> str | None:
    return ids.name_problem(value, what, 64)


def parse_event(
    value: bytes | None,
    key: bytes | None,
    event_types: Container[str] | None = None,
    now_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Event:
    """Validate one raw Kafka record; raise ``InvalidEvent`` with a reason code if it is bad.

    ``event_types``: when given, a type outside it is ``unknown_event_type``; when None (the
    indexing job), any well-formed type is accepted and the registry decides what is indexed."""
    if value is None:
        raise InvalidEvent("not_json", "record has no value (tombstone)")
    if len(value) > limits.max_bytes:
        raise InvalidEvent("too_large", f"payload is {len(value)} bytes; at most {limits.max_bytes}")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent("not_json", f"payload is not UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_object", f"payload must be a JSON object, got {type(obj).__name__}")

    event_id = _string(obj, "event_id", limits.max_id_chars, True, ids.id_problem)
    user_id = _string(obj, "user_id", limits.max_id_chars, True, ids.id_problem)
    # Only a name can ever be registered (and it labels the unindexed-events metric).
    event_type = _string(obj, "event_type", 64, True, _event_type_problem)
    item_id = _string(obj, "item_id", limits.max_id_chars, True, ids.id_problem)
    if "ts" not in obj:
        raise InvalidEvent("missing_field", "field 'ts' is required")
    ts = obj["ts"]
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise InvalidEvent("bad_type", f"field 'ts' must be an integer (epoch ms), got {type(ts).__name__}")
    surface = _string(obj, "surface", limits.max_surface_chars, False)
    query = _string(obj, "query", limits.max_query_chars, False)
    dwell = obj.get("dwell_ms")
    if dwell is not None:
        if not isinstance(dwell, int) or isinstance(dwell, bool):
            raise InvalidEvent("bad_type", f"field 'dwell_ms' must be an integer, got {type(dwell).__name__}")
        if not 0 <= dwell <= limits.max_dwell_ms:
            raise InvalidEvent("bad_value", f"field 'dwell_ms'={dwell} is outside 0..{limits.max_dwell_ms}")

    if event_types is not None and event_type not in event_types:
        raise InvalidEvent("unknown_event_type", f"event_type {event_type!r} is not registered")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if ts < now - limits.max_past_ms or ts > now + limits.max_future_ms:
        raise InvalidEvent(
            "ts_out_of_range",
            f"ts={ts} is {(ts - now) / 1000:+.0f}s from now; accepted: "
            f"-{limits.max_past_ms // 1000}s .. +{limits.max_future_ms // 1000}s",
        )
    if key is None:
        raise InvalidEvent("key_mismatch", "record has no key; the key must be the user_id")
    if key != user_id.encode():
        raise InvalidEvent("key_mismatch", f"record key {key[:64]!r} is not the user_id {user_id[:64]!r}")
    return Event(event_id, user_id, event_type, item_id, ts, surface, dwell, query)  # type: ignore[arg-type]


# --- Stored form in the KV layer ---------------------------------------------------
# user_id and event_type are implied by the key, so they are not stored again.

def _body(event: Event) -> dict[str, Any]:
    """The fields every form of an event carries: item, time and the optional ones that are set."""
    out: dict[str, Any] = {"item_id": event.item_id, "ts": event.ts}
    if event.surface is not None:
        out["surface"] = event.surface
    if event.dwell_ms is not None:
        out["dwell_ms"] = event.dwell_ms
    if event.query is not None:
        out["query"] = event.query
    return out


def encode_stored(event: Event, features: dict[str, Any]) -> bytes:
    return orjson.dumps({"event_id": event.event_id, **_body(event), "features": features})


def decode_stored(raw: bytes) -> dict[str, Any]:
    return orjson.loads(raw)
