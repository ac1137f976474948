"""Served-feature logging: what serving returned, so training can use exactly that.

Sampled per tenant (``log_sample_rate``); each record carries the request id, tenant,
config version, user and the features served (arrow arrays as lists); when the tenant was
served item embeddings, the features also name the published model version they came from
(``embedding_version``: null while none is published), so a rebuild can join the same ones.
It goes to a Kafka topic (``served_features``) without ever blocking or failing a request:
when the producer's queue is full the record is dropped and counted.
"""
from __future__ import annotations

import random
import time

import orjson


class FeatureLogger:
    def __init__(self, broker: str | None, topic: str, on_drop=None, on_sent=None, producer=None):
        self.topic = topic
        self.on_drop = on_drop or (lambda n: None)
        self.on_sent = on_sent or (lambda n: None)
        self.producer = producer
        if self.producer is None and broker:
            from confluent_kafka import Producer

            self.producer = Producer({"bootstrap.servers": broker, "linger.ms": 50, "compression.type": "lz4",
                                      "enable.idempotence": True,
                                      "queue.buffering.max.messages": 100_000, "log_level": 3})
        self._rng = random.Random()

    def sampled(self, rate: float) -> bool:
        return rate > 0 and (rate >= 1 or self._rng.random() < rate)

    def log(self, request_id: str, tenant: str, version: int, fmt: str, per_user: list[tuple[str, object]],
            embedding_version: str | None | bool = False) -> None:
        """``embedding_version``: the published embeddings' version (None: none published), or
        False when the tenant is not served embeddings (then not logged)."""
        if self.producer is None:
            self.on_drop(len(per_user))
            return
        ts = int(time.time() * 1000)
        for user_id, features in per_user:
            if embedding_version is not False:
                features = {**features, "embedding_version": embedding_version}
            record = orjson.dumps({"request_id": request_id, "tenant": tenant, "config_version": version,
                                   "ts": ts, "user_id": user_id, "format": fmt, "features": features},
                                  option=orjson.OPT_SERIALIZE_NUMPY)
            try:
                self.producer.produce(self.topic, key=user_id.encode(), value=record)
                self.on_sent(1)
            except BufferError:
                self.on_drop(1)
        self.producer.poll(0)

    def close(self, timeout_s: float = 5.0) -> None:
        if self.producer is not None:
            self.producer.flush(timeout_s)
            self.producer = None  # releases the client, which would otherwise keep reconnecting
