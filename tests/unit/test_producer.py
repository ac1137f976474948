"""The client-side producer refuses an event breaking the identifier rule before it reaches Kafka."""
import time

import pytest

from usersignals.events import DEFAULT_LIMITS
from usersignals.producer import EventProducer, InvalidEvent
from usersignals.registry import load_registry


class Sent(list):
    """What reached kafka-python's producer (the real one needs a broker: tests/integration/test_clients.py)."""

    def send(self, topic, key, value):
        self.append((topic, key, value))


def producer() -> tuple[EventProducer, Sent]:
    p = EventProducer.__new__(EventProducer)  # everything but the Kafka connection
    p.topic, p.registry, p.limits, p._producer = "user_events", load_registry(), DEFAULT_LIMITS, Sent()
    return p, p._producer


def event(**over):
    return {"event_id": "e-1", "user_id": "u42", "event_type": "click", "item_id": "i7",
            "ts": int(time.time() * 1000), **over}


@pytest.mark.parametrize("field,value", [("user_id", "hx9261d92c}:views"), ("user_id", "u*"), ("user_id", "u 1"),
                                         ("user_id", "o'brien@x.com"), ("item_id", "i[7]"), ("event_id", "e:1"),
                                         ("event_type", "Click")])
def test_an_event_with_an_invalid_id_is_refused_before_sending(field, value):
    p, sent = producer()
    with pytest.raises(ValueError) as info:
        p.send(event(**{field: value}))
    assert isinstance(info.value, InvalidEvent) and info.value.reason == "invalid_id"
    assert str(info.value).startswith(f"invalid_id: field {field!r} {value!r} ")
    assert sent == []


def test_a_valid_event_is_sent_keyed_by_its_user():
    p, sent = producer()
    p.send(event(user_id="a.b+c@x.com"))
    assert [(t, k) for t, k, _ in sent] == [("user_events", b"a.b+c@x.com")]
