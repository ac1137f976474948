"""Erasing a user and the lake's retention, on a real KV server, a real Iceberg catalog and Spark.

Erasure: the API's DELETE /v1/admin/users/{id} (KV now, a request recorded), then the lake part
(``python -m batch delete-user --pending``, what the user_erasure DAG runs), then maintenance;
every store is read afterwards — every KV dataset including an experiment's, the aggregate
state, every lake table, every data file on disk after compaction — and holds nothing of the
user, while another user's data is intact and the user's later events are indexed as new.
Retention: planted partitions past a table's retention are dropped, recent ones kept."""
import argparse
import datetime as dt
import glob
import hashlib
import json
import uuid

import orjson
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from pyspark.sql import functions as F

from batch import jobs
from batch.__main__ import delete_users, make_io
from iceberg_schemas.migrate import migrate
from iceberg_schemas.tables import DELETIONS, table_defs
from serving.app import create_app
from serving.feature_log import FeatureLogger
from usersignals import aggregates, lake
from usersignals.kv import ErasureRequests, SequenceStore, StoredEvent, connect

pytestmark = pytest.mark.integration

UTC = dt.timezone.utc
ADMIN_KEY = f"adm-{uuid.uuid4().hex}"
GONE, KEPT, BY_CLI = "u-gone", "u-kept", "u'cli\\"   # a quote and a backslash: the SQL must hold


@pytest.fixture(scope="module")
def env(tmp_path_factory, kv_server, new_lake, registry):
    from batch.session import spark_session

    settings = new_lake(tmp_path_factory.mktemp("erasure"), kv_port=kv_server.settings.kv_port,
                        admin_key=ADMIN_KEY)
    migrate(lake.load_catalog(settings), settings, registry)
    spark = spark_session(settings, "test-user-deletion")
    yield settings, spark, make_io(spark, settings)
    spark.stop()


def plant_kv(client, store, registry, prefix, user):
    for name in [*registry.datasets, "exp_dwell2"]:  # an experiment's dataset is the user's too
        store.write([StoredEvent(name, user, f"{user}-{name}-{n}", 1000 + n,
                                 orjson.dumps({"event_id": f"{user}-{name}-{n}", "item_id": "i1", "ts": 1000 + n}))
                     for n in range(3)])
    client.hset(aggregates.agg_key(prefix, user), mapping={"c:c1": "2.000000:1000", "c:c2": "1.000000:1000"})


def user_keys(client, store, user):
    return sorted(client.scan_iter(match=store.user_keys_pattern(user), count=1000))


def rows(io, table, *dicts):
    """A DataFrame of ``table``'s schema; columns a dict leaves out are null."""
    schema = io.read(table).schema
    return io.spark.createDataFrame([tuple(d.get(f.name) for f in schema.fields) for d in dicts], schema)


ROWS_PER_USER = 3


def user_row(field, tdef, user, n, at):
    """A value for ``field`` of a row of ``user`` (its user column, or a plausible value by type)."""
    kind = field.dataType.simpleString()
    if field.name == tdef.user_column:
        return user.encode() if kind == "binary" else user
    if kind == "string" and field.name.endswith("_id"):
        return f"{user}-{field.name}-{n}"
    # Every other value the same for all users: they share partitions, so share files.
    return {"string": f"v-{field.name}", "timestamp": at, "binary": b"x", "int": n, "bigint": n,
            "double": 1.0, "float": 1.0, "boolean": True, "array<float>": [0.5, 0.5]}[kind]


def plant_lake(io, defs, users, at):
    """ROWS_PER_USER rows of each user in every table with user rows, the users mixed in each
    file (as the stream writes them), in two commits per table: erasing one user is a row-level
    delete, and the compaction has files to merge."""
    for t, tdef in defs.items():
        if not tdef.user_column:
            continue
        schema = io.read(t).schema
        for batch in (range(0, ROWS_PER_USER - 1), range(ROWS_PER_USER - 1, ROWS_PER_USER)):
            data = [tuple(user_row(f, tdef, u, n, at) for f in schema.fields) for u in users for n in batch]
            io.append(t, io.spark.createDataFrame(data, schema))


def lake_rows(io, defs, user):
    """Rows of ``user`` per table with user rows."""
    out = {}
    for t, d in defs.items():
        if d.user_column:
            value = user.encode() if d.user_column == "key" else user
            out[t] = io.read(t).where(F.col(d.user_column) == F.lit(value)).count()
    return out


def on_disk(settings, defs, user) -> dict[str, int]:
    """Rows of ``user`` in the parquet data files under each user table's location, per file
    (whether or not a snapshot still refers to the file)."""
    catalog = lake.load_catalog(settings)
    hits = {}
    for t, d in defs.items():
        if not d.user_column:
            continue
        location = catalog.load_table(lake.table_id(settings, t)).location().removeprefix("file://")
        for path in glob.glob(f"{location}/data/**/*.parquet", recursive=True):
            table = pq.read_table(path)
            if d.user_column not in table.column_names:
                continue  # a position-delete file: file paths and positions, no user data
            values = table.column(d.user_column).to_pylist()
            n = values.count(user.encode() if d.user_column == "key" else user)
            if n:
                hits[path] = n
    return hits


def test_an_erased_user_is_gone_from_every_store_and_others_stay(env, kv_client, registry):
    settings, spark, io = env
    prefix = settings.kv_prefix
    store = SequenceStore(kv_client, registry, prefix)
    defs = table_defs(registry)
    for u in (GONE, KEPT, BY_CLI):
        plant_kv(kv_client, store, registry, prefix, u)
    plant_lake(io, defs, [GONE, KEPT, BY_CLI], dt.datetime.now(UTC) - dt.timedelta(hours=2))
    kept_keys = user_keys(kv_client, store, KEPT)
    assert len(kept_keys) == 2 * (len(registry.datasets) + 1) + 1
    kept_rows = lake_rows(io, defs, KEPT)
    assert {lake.RAW_EVENTS, lake.ENRICHED_EVENTS, lake.DEAD_LETTERS, lake.SERVED_FEATURES, lake.USER_EMBEDDINGS,
            lake.SELECTED_SEQUENCES} <= set(kept_rows)  # and any table defined since with user rows
    assert set(kept_rows.values()) == {ROWS_PER_USER}

    # The API: KV state now, the request recorded for the lake part.
    with TestClient(create_app(settings, registry, feature_logger=FeatureLogger(None, "x"))) as api:
        assert api.delete(f"/v1/admin/users/{GONE}").status_code == 401
        assert api.delete(f"/v1/admin/users/{GONE}", headers={"X-Admin-Key": "wrong"}).status_code == 403
        r = api.delete(f"/v1/admin/users/{GONE}", params={"requested_by": "ticket-4711"},
                       headers={"X-Admin-Key": ADMIN_KEY})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["kv_removed"] == {**{f"kv.{d}": 3 for d in registry.datasets}, "kv.exp_dwell2": 3,
                                  "kv.aggregates": 2}
    assert body["lake"] == "pending" and body["requested_by"] == "ticket-4711"
    assert user_keys(kv_client, store, GONE) == []
    assert store.read(GONE, {d: 10 for d in registry.datasets}) == {d: [] for d in registry.datasets}
    assert user_keys(kv_client, store, KEPT) == kept_keys
    pending = ErasureRequests(prefix).pending(kv_client)
    assert set(pending) == {GONE} and pending[GONE][1]["request_id"] == body["request_id"]

    # An event of the user that arrived after the request (in the lake) is new, and stays.
    later = dt.datetime.now(UTC) + dt.timedelta(seconds=5)
    io.append(lake.RAW_EVENTS, rows(io, lake.RAW_EVENTS, dict(
        event_id=f"{GONE}-new", user_id=GONE, event_type="click", item_id="i1", event_time=later,
        kafka_partition=0, kafka_offset=99, ingested_at=later)))

    # The lake part: what the user_erasure DAG runs; and the command line for one user, at once.
    ns = argparse.Namespace(user_id=None, pending=True, requested_by="operator", reason=None)
    assert delete_users(io, ns, settings, registry) == {"completed": 1, "still_pending": 0}
    ns = argparse.Namespace(user_id=BY_CLI, pending=False, requested_by="dpo@example.com", reason="art. 17")
    cli = delete_users(io, ns, settings, registry)
    assert cli == {**body["kv_removed"], **{f"lake.{t}": ROWS_PER_USER for t in kept_rows}}
    assert user_keys(kv_client, store, BY_CLI) == []

    assert lake_rows(io, defs, GONE) == {**{t: 0 for t in kept_rows}, lake.RAW_EVENTS: 1}
    assert io.read(lake.RAW_EVENTS).where(f"user_id = '{GONE}'").first()["event_id"] == f"{GONE}-new"
    assert lake_rows(io, defs, BY_CLI) == {t: 0 for t in kept_rows}
    assert lake_rows(io, defs, KEPT) == kept_rows

    # The audit: who, when, how much per store and table; the user only as a hash.
    audit = {r["requested_by"]: r for r in io.read(DELETIONS).collect()}
    assert set(audit) == {"ticket-4711", "dpo@example.com"}
    row = audit["ticket-4711"]
    assert row["request_id"] == body["request_id"]
    assert row["user_id_sha256"] == hashlib.sha256(GONE.encode()).hexdigest()
    assert row["requested_at"] <= row["kv_deleted_at"] <= row["completed_at"]
    assert json.loads(row["removed"]) == {**body["kv_removed"], **{f"lake.{t}": ROWS_PER_USER for t in kept_rows}}
    assert not any(GONE in str(v) for r in audit.values() for v in r.asDict().values())
    assert audit["dpo@example.com"]["reason"] == "art. 17"
    assert json.loads(audit["dpo@example.com"]["removed"]) == cli

    # Row-level deletes left the rows in data files until compaction: after maintenance (its
    # expiry drops the snapshots that still needed them) no file on disk holds the user.
    assert sum(on_disk(settings, defs, BY_CLI).values()) == ROWS_PER_USER * len(kept_rows)
    deletes = io.spark.sql(f"SELECT count(*) AS n FROM {io.name(lake.RAW_EVENTS)}.delete_files").first()["n"]
    assert deletes >= 2  # position deletes (merge-on-read), not rewritten files
    figs = jobs.maintenance(io, [t for t, d in defs.items() if d.user_column], expire_older_than_days=0,
                            retain_last=1, defs=defs)
    assert figs["raw_events.rewritten_files"] >= 2
    assert on_disk(settings, defs, BY_CLI) == {}
    left = on_disk(settings, defs, GONE)  # the event that arrived after the request, only
    assert list(left.values()) == [1] and all("/raw_events/" in p for p in left)
    assert lake_rows(io, defs, KEPT) == kept_rows
    assert sum(on_disk(settings, defs, KEPT).values()) == sum(kept_rows.values())

    # The KV layer deduplicates on stored event ids: an erased user's events are indexed as new.
    assert store.write([StoredEvent("clicks", GONE, f"{GONE}-clicks-0", 5000, b'{"event_id": "x"}')]) == [True]


def test_retention_drops_expired_partitions_and_keeps_recent_ones(env, registry):
    settings, spark, io = env
    defs = table_defs(registry)
    now = dt.datetime(2026, 12, 2, 3, 30, tzinfo=UTC)
    retention = defs[lake.DEAD_LETTERS].retention_days
    # Days before the cutoff (now's day minus the retention) go; the cutoff day itself stays.
    days = {"old": now - dt.timedelta(days=retention + 10), "just_expired": now - dt.timedelta(days=retention + 1),
            "first_kept": dt.datetime.combine(now.date() - dt.timedelta(days=retention), dt.time(0, 0), tzinfo=UTC),
            "recent": now - dt.timedelta(days=1)}
    for name, at in days.items():
        for n in range(2):  # two commits: two files in the partition
            io.append(lake.DEAD_LETTERS, rows(io, lake.DEAD_LETTERS, *[dict(
                key=f"ret-{name}".encode(), value=b"x", reason="malformed", source_offset=n, received_at=at)] * 3))
    raw_old = now - dt.timedelta(days=defs[lake.RAW_EVENTS].retention_days + 1)
    io.append(lake.RAW_EVENTS, rows(io, lake.RAW_EVENTS, dict(
        event_id="ret-raw", user_id="u-ret", event_type="click", item_id="i1", event_time=raw_old,
        ingested_at=raw_old)))

    figs = jobs.maintenance(io, [lake.DEAD_LETTERS, lake.RAW_EVENTS, lake.ITEM_FEATURES], defs=defs, now=now)
    assert figs["dead_letters.expired_rows"] == 12 and figs["dead_letters.expired_files"] == 4
    assert figs["raw_events.expired_rows"] == 1 and figs["raw_events.expired_files"] == 1
    assert "item_features.expired_rows" not in figs  # no retention: kept until deleted
    left = {r["key"].decode() for r in io.read(lake.DEAD_LETTERS).where("CAST(key AS STRING) LIKE 'ret-%'").collect()}
    assert left == {"ret-first_kept", "ret-recent"}
    assert io.read(lake.RAW_EVENTS).where("event_id = 'ret-raw'").count() == 0
    # ... in the job's textfile metric too.
    prom = (settings.data_dir / "metrics" / "batch_maintenance.prom").read_text()
    assert 'usersignals_batch_rows{job="maintenance",stage="dead_letters.expired_rows"} 12.0' in prom
