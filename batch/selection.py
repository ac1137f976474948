"""Event-selection rules: which of a user's events of a dataset an experiment keeps.

A rule is a function ``rule(events) -> events`` that adds a ``score`` column (double, higher is
kept first); ``batch.transforms.select_events`` ranks by it and keeps each user's top n. The
registry names the rules (``[selection_rules.<name>] function = "module:function"``), so adding
one is a function importable on the executors and a registry entry; ``resolve`` finds it.

The events a rule sees are one dataset's deduplicated ``enriched_events`` rows of the window
(event_id, user_id, event_type, item_id, event_time, surface, dwell_ms, query, dataset, the
stored feature columns) plus ``embedding``: the item's newest embedding (NULL when it has none).
"""
from __future__ import annotations

import importlib
from typing import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from usersignals.registry import Registry

Rule = Callable[[DataFrame], DataFrame]


def last(events: DataFrame) -> DataFrame:
    """Newest first: the production rule (what the KV layer keeps), every comparison's baseline."""
    return events.withColumn("score", F.unix_millis("event_time").cast("double"))


def dwell(events: DataFrame) -> DataFrame:
    """Longest dwell first; an event without dwell counts as 0 (ties: newest first, by the framework)."""
    return events.withColumn("score", F.coalesce(F.col("dwell_ms"), F.lit(0)).cast("double"))


def similarity(events: DataFrame) -> DataFrame:
    """Closest (dot product) to the user's mean item embedding over the window's events of the
    dataset; events whose item has no embedding score 0."""
    mean = (events.where("embedding IS NOT NULL")
            .select("user_id", "dataset", F.posexplode("embedding").alias("i", "v"))
            .groupBy("user_id", "dataset", "i").agg(F.avg("v").alias("m"))
            .groupBy("user_id", "dataset").agg(F.sort_array(F.collect_list(F.struct("i", "m"))).alias("_c")))
    dot = F.aggregate(F.arrays_zip(F.col("embedding"), F.col("_c.m")), F.lit(0.0),
                      lambda acc, x: acc + F.coalesce(x["embedding"] * x["m"], F.lit(0.0)))
    return (events.join(mean, ["user_id", "dataset"], "left")
                  .withColumn("score", F.coalesce(dot, F.lit(0.0)).cast("double")).drop("_c"))


class RuleError(ValueError):
    """A selection rule that is not registered, or whose function cannot be imported."""


def resolve(registry: Registry, name: str) -> Rule:
    """The function of the registered rule ``name`` (imported from its "module:function")."""
    rule = registry.selection_rules.get(name)
    if rule is None:
        raise RuleError(f"unknown selection rule {name!r}; registered in {registry.source}: "
                        f"{sorted(registry.selection_rules)}")
    module, _, attr = rule.function.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise RuleError(f"selection rule {name!r}: cannot import {rule.function!r} "
                        f"({type(exc).__name__}: {exc})") from None
    if not callable(fn):
        raise RuleError(f"selection rule {name!r}: {rule.function!r} is not a function")
    return fn
