"""A batch Kafka producer for the indexing job's enriched-events topic.

``send`` produces a batch and waits until the broker has acknowledged all of it; a
record that cannot be delivered raises, which fails the Flink bundle, so the job
replays from its last checkpoint instead of committing past an undelivered event.
"""
from __future__ import annotations


class DeliveryError(RuntimeError):
    pass


class BatchProducer:
    def __init__(self, broker: str, topic: str, timeout_s: float = 30.0, producer=None):
        self.topic = topic
        self.timeout_s = timeout_s
        if producer is None:
            from confluent_kafka import Producer

            producer = Producer({"bootstrap.servers": broker, "acks": "all", "enable.idempotence": True,
                                 "linger.ms": 5, "compression.type": "lz4", "log_level": 3,
                                 "queue.buffering.max.messages": 500_000})
        self.producer = producer
        self._errors: list[str] = []

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send(self, records: list[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            while True:
                try:
                    self.producer.produce(self.topic, key=key, value=value, on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self.producer.poll(0.05)
        left = self.producer.flush(self.timeout_s)
        if left or self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError(f"{self.topic}: {left} record(s) undelivered after {self.timeout_s}s, "
                                f"{len(errors)} failed ({errors[:3]})")

    def close(self) -> None:
        self.producer.flush(self.timeout_s)
