"""batch.training refuses a bad request before it touches Spark, naming the bad value."""
import datetime as dt

import pytest

from batch import training
from usersignals.registry import load_registry

DAY = dt.date(2026, 11, 20)


@pytest.mark.parametrize("kwargs, message", [
    ({"source": "kafka"}, "unknown source 'kafka'"),
    ({"source": "served"}, "source 'served' needs a tenant"),
    ({"tenant": "nobody"}, "unknown tenant 'nobody'"),
    ({"label_types": ["click", "hover"]}, r"unknown label event types \['hover'\]"),
    ({"lookback_days": 0}, r"lookback_days \(0\)"),
])
def test_bad_requests_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        training.training_examples(None, load_registry(), DAY, **kwargs)


def test_lengths_are_the_retention_or_the_tenants_mix():
    registry = load_registry()
    assert training.dataset_lengths(registry) == {d: ds.retention for d, ds in registry.datasets.items()}
    assert training.dataset_lengths(registry, "homefeed_ranking") == dict(registry.tenants["homefeed_ranking"].sequences)


def test_export_path_has_a_day_partition_under_the_source():
    assert training.export_path("s3://bucket/train/", "served", DAY) == "s3://bucket/train/served/day=2026-11-20"
