"""The indexing job's lake statements: each INSERT names every column of its Iceberg table, in
the table's order, and the catalog, file size and served-topic source come from the settings."""
import re

import pytest

from iceberg_schemas.tables import table_defs
from streaming import lake_sql
from usersignals import lake
from usersignals.registry import load_registry
from usersignals.settings import Settings


@pytest.fixture
def settings(tmp_path):
    return Settings(data_dir=tmp_path, lake_catalog_uri="postgresql+psycopg2://us:p%40ss@db.example:5433/lake",
                    lake_target_file_mb=64)


def columns(name):
    return [c.name for c in table_defs(load_registry())[name].columns]


def selected(sql):
    """The output column names of an INSERT's SELECT list (``x AS name`` or a bare column)."""
    select = sql.split("SELECT", 1)[1].rsplit("FROM", 1)[0]
    depth, parts, cur = 0, [], ""
    for ch in select:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [re.split(r"\s+AS\s+", p.strip())[-1].strip("` \n") for p in parts]


def test_catalog_ddl_uses_the_lake_jdbc_catalog(settings):
    ddl = lake_sql.catalog_ddl(settings)
    assert ddl.startswith(f"CREATE CATALOG `{settings.lake_catalog}` WITH")  # the name the catalog's rows carry
    assert "'catalog-impl' = 'org.apache.iceberg.jdbc.JdbcCatalog'" in ddl
    assert "'uri' = 'jdbc:postgresql://db.example:5433/lake'" in ddl
    assert "'jdbc.user' = 'us'" in ddl and "'jdbc.password' = 'p@ss'" in ddl


def test_a_quote_in_an_option_is_escaped(settings):
    s = Settings(data_dir=settings.data_dir, lake_catalog_uri="postgresql://us:it's@h/lake")
    assert "'jdbc.password' = 'it''s'" in lake_sql.catalog_ddl(s)


def test_raw_insert_fills_every_raw_events_column_in_order(settings):
    sql = lake_sql.raw_insert(settings, "raw_rows")
    assert sql.startswith(f"INSERT INTO `{settings.lake_catalog}`.`{settings.lake_namespace}`.`raw_events`")
    assert selected(sql) == columns(lake.RAW_EVENTS)
    assert f"'target-file-size-bytes'='{64 << 20}'" in sql


def test_enriched_insert_appends_the_feature_columns(settings):
    feats = [c for c in columns(lake.ENRICHED_EVENTS) if c not in lake.ENRICHED_BASE_COLUMNS]
    assert feats, "enriched_events has item-feature columns"
    sql = lake_sql.enriched_insert(settings, "enriched_rows", feats)
    assert selected(sql) == columns(lake.ENRICHED_EVENTS)
    assert "'stream' AS enriched_by" in sql
    # events of a type no dataset is registered for stay in raw_events only
    assert sql.endswith("FROM enriched_rows\nWHERE dataset IS NOT NULL")
    assert "WHERE" not in lake_sql.raw_insert(settings, "raw_rows")


def test_dlq_and_served_inserts_fill_their_tables(settings):
    assert selected(lake_sql.dlq_insert(settings, "dead_letter_rows")) == columns(lake.DEAD_LETTERS)
    served = lake_sql.served_insert(settings)
    assert selected(served) == columns(lake.SERVED_FEATURES)
    # records without the required fields are not landed (NOT NULL columns)
    assert "WHERE request_id IS NOT NULL" in served


def test_served_source_reads_its_topic_from_the_group_offsets(settings):
    ddl = lake_sql.served_source_ddl(settings)
    assert f"'topic' = '{settings.served_topic}'" in ddl
    assert f"'properties.bootstrap.servers' = '{settings.broker}'" in ddl
    assert "'scan.startup.mode' = 'group-offsets'" in ddl and "'properties.auto.offset.reset' = 'earliest'" in ddl


def test_feature_columns_map_catalog_types_and_skip_base_columns():
    cols = [("event_id", "STRING NOT NULL"), ("dataset", "STRING"), ("category", "STRING"),
            ("popularity", "DOUBLE"), ("embedding", "ARRAY<FLOAT>")]
    assert lake_sql.feature_columns(cols) == [("category", "STRING"), ("popularity", "DOUBLE"),
                                              ("embedding", "ARRAY<FLOAT>")]
    with pytest.raises(ValueError, match="no Flink mapping"):
        lake_sql.feature_columns([("odd", "MAP<STRING, INT>")])


def test_an_s3_warehouse_is_written_through_s3fileio_by_both_jvm_engines():
    from usersignals import lake
    from usersignals.settings import Settings

    local = Settings()
    s3 = Settings(lake_warehouse="s3://usersignals-lake/warehouse", lake_catalog_uri="postgresql+psycopg2://u:p@db:5432/iceberg")
    assert "io-impl" not in lake.flink_catalog_options(local)
    assert lake.flink_catalog_options(s3)["io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    assert lake.spark_conf(s3)["spark.sql.catalog.lake.io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
    rest = Settings(lake_warehouse="s3://b/w", lake_catalog_type="rest", lake_catalog_uri="http://catalog:8181")
    assert lake.flink_catalog_options(rest)["io-impl"] == "org.apache.iceberg.aws.s3.S3FileIO"
