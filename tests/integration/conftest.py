"""Real components for integration tests: a redis-server, Apache Kafka, PostgreSQL (Airflow's
database and the lake's catalog), the PyFlink job.

Each runs on free loopback ports with its own data directory, started and stopped by
the same ``infra.stack.Stack`` code the local stack uses.
"""
import time
import uuid

import orjson
import pytest

from infra.stack import Stack, private_settings
from usersignals.kv import SequenceStore, connect
from usersignals.registry import load_registry


@pytest.fixture(scope="session")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def kv_server(tmp_path_factory):
    stack = Stack(private_settings(tmp_path_factory.mktemp("kv")), components=("kv",))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """The stack's PostgreSQL (Airflow's metadata database), once per session."""
    stack = Stack(private_settings(tmp_path_factory.mktemp("postgres")), components=("postgres",))
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def new_lake(postgres_server):
    """A factory of settings whose lake is new: its own catalog database on the session's
    PostgreSQL and a warehouse under ``data_dir`` (``new_lake(data_dir, **overrides)``)."""
    from infra import postgres

    pg = postgres_server.settings

    def make(data_dir, **over):
        db = f"lake_{uuid.uuid4().hex[:12]}"
        postgres.create_database(pg, db)
        return private_settings(data_dir, **{"lake_catalog_uri": pg.postgres_url(db), **over})

    return make


@pytest.fixture
def kv_client(kv_server):
    client = connect(kv_server.settings.kv_url)
    client.flushall()
    return client


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Broker + KV + the real PyFlink job (checkpoints every second), module-scoped."""
    settings = private_settings(tmp_path_factory.mktemp("pipeline"), checkpoint_interval_ms=1000,
                             bundle_time_ms=20)
    stack = Stack(settings, components=("broker", "kv", "job"))
    stack.start()
    yield stack
    stack.stop()


class Producer:
    def __init__(self, settings):
        from confluent_kafka import Producer as P

        self.settings = settings
        self.p = P({"bootstrap.servers": settings.broker, "linger.ms": 2, "enable.idempotence": True})

    def send(self, value, key=None):
        if isinstance(value, dict):
            key = value["user_id"].encode() if key is None else key
            value = orjson.dumps(value)
        self.p.produce(self.settings.events_topic, value=value, key=key)

    def flush(self):
        assert self.p.flush(15) == 0


@pytest.fixture
def producer(pipeline):
    return Producer(pipeline.settings)


@pytest.fixture
def store(pipeline, registry):
    return SequenceStore(connect(pipeline.settings.kv_url), registry, pipeline.settings.kv_prefix)


def new_user() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def event(user, n, ts, etype="click", item="i1", **extra):
    return {"event_id": f"{user}-{n}", "user_id": user, "event_type": etype, "item_id": item, "ts": ts, **extra}


def now_ms() -> int:
    return int(time.time() * 1000)


def wait_until(predicate, timeout=60.0, interval=0.2, message="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
