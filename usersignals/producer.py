"""The client-side producer: how a service sends user events to the platform.

    from usersignals.producer import EventProducer

    with EventProducer("kafka-1:9092") as events:
        events.send({"event_id": "e-1", "user_id": "u42", "event_type": "click",
                     "item_id": "i7", "ts": 1767225600000, "surface": "homefeed"})

Each event is checked against the registry with the same rules the indexing job applies
(``usersignals.events.parse_event``), so a bad event fails in the caller with its reason
(``InvalidEvent``, a ValueError: ``reason``, ``detail``) instead of landing in the dead-letter
topic; an id breaking the identifier rule (``usersignals.ids``: no ``{ } : * ? [ ] \\``, quotes,
``/``, whitespace...) is ``invalid_id`` and never sent. It is
keyed by its user id (one user's events stay in order on one partition) and sent by an
idempotent producer with ``acks=all``: a retry after a lost acknowledgement is not written
twice. Built on kafka-python, a pure-Python client with no native library to install.
"""
from __future__ import annotations

import time
from typing import Any

import orjson

from usersignals.events import DEFAULT_LIMITS, Event, InvalidEvent, Limits, parse_event
from usersignals.registry import Registry, load_registry

__all__ = ["EventProducer", "InvalidEvent"]


class EventProducer:
    def __init__(self, bootstrap_servers: str, topic: str = "user_events", registry: Registry | None = None,
                 limits: Limits = DEFAULT_LIMITS, **kafka_config: Any):
        """``kafka_config``: extra kafka-python ``KafkaProducer`` settings (``linger_ms``, security, ...)."""
        from kafka import KafkaProducer

        self.topic = topic
        self.registry = registry or load_registry()
        self.limits = limits
        config = {"acks": "all", "enable_idempotence": True, "linger_ms": 5, "retries": 2**31 - 1,
                  "client_id": "usersignals-producer", **kafka_config}
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **config)

    def validate(self, event: dict[str, Any]) -> Event:
        """The event as the job will read it; ``InvalidEvent`` (with reason and detail) if it is not valid."""
        if not isinstance(event, dict):
            raise InvalidEvent("not_object", f"an event is a dict, got {type(event).__name__}")
        user = event.get("user_id")
        key = user.encode() if isinstance(user, str) else None
        return parse_event(orjson.dumps(event), key, self.registry.event_types, int(time.time() * 1000),
                           self.limits)

    def send(self, event: dict[str, Any]):
        """Validate and send one event; returns kafka-python's future (``.get(timeout)`` waits for the ack)."""
        parsed = self.validate(event)
        return self._producer.send(self.topic, key=parsed.user_id.encode(), value=orjson.dumps(event))

    def flush(self, timeout_s: float | None = None) -> None:
        self._producer.flush(timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        self._producer.close(timeout_s)

    def __enter__(self) -> "EventProducer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
