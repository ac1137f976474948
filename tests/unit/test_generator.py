import itertools
from collections import Counter

import orjson

from infra.generator import EventGenerator, ItemCatalog, WorkloadConfig
from usersignals.events import InvalidEvent, parse_event
from usersignals.registry import load_registry

NOW = 1_800_000_000.0


def sample(n, **cfg):
    gen = EventGenerator(WorkloadConfig(users=500, items=2000, **cfg), clock=lambda: NOW)
    return gen, list(itertools.islice(gen.records(), n))


def test_events_follow_the_contract_and_cover_every_event_type():
    types = set(load_registry().event_types)
    _, recs = sample(5000, late_share=0, dup_share=0)
    seen = Counter()
    for key, value in recs:
        e = parse_event(value, key, types, now_ms=int(NOW * 1000))
        seen[e.event_type] += 1
    assert set(seen) == types
    assert seen["view"] > seen["closeup"] > seen["repin"]


def test_user_activity_is_skewed():
    _, recs = sample(20000, late_share=0, dup_share=0)
    users = Counter(orjson.loads(v)["user_id"] for _, v in recs)
    top = sum(c for _, c in users.most_common(25))
    assert top > 0.3 * len(recs)  # top 5% of users do a large share of the events


def test_late_duplicate_and_bad_shares_are_honoured():
    gen, recs = sample(20000, late_share=0.1, dup_share=0.05, bad_share=0.02)
    c = gen.counts
    total = c["good"] + c["bad"]
    assert 0.07 < c["late"] / total < 0.13
    assert 0.035 < c["dup"] / total < 0.065
    assert 0.012 < c["bad"] / total < 0.028
    ids = Counter(orjson.loads(v).get("event_id") for _, v in recs if v.startswith(b"{\""))
    assert sum(1 for n in ids.values() if n > 1) >= c["dup"] * 0.9
    types = set(load_registry().event_types)
    bad = 0
    for key, value in recs:
        try:
            parse_event(value, key, types, now_ms=int(NOW * 1000), )
        except InvalidEvent:
            bad += 1
    assert bad == c["bad"]


def test_users_engage_mostly_with_their_interest_categories():
    cfg = WorkloadConfig(users=200, items=2000, late_share=0, dup_share=0)
    cat = ItemCatalog(cfg)
    gen = EventGenerator(cfg, cat, clock=lambda: NOW)
    category = {f"i{i}": c for i, c in enumerate(cat.category)}
    hits = total = 0
    for _, v in itertools.islice(gen.records(), 5000):
        ev = orjson.loads(v)
        user = int(ev["user_id"][1:])
        total += 1
        hits += category[ev["item_id"]] in gen.interests[user]
    assert hits / total > 0.6


def test_item_features_have_category_popularity_and_unit_embedding():
    feats = ItemCatalog(WorkloadConfig(items=100)).features()
    f = feats["i0"]
    assert set(f) == {"category", "popularity", "embedding"}
    assert abs(sum(x * x for x in f["embedding"]) - 1) < 0.01


def test_bad_arguments_are_refused_before_anything_is_written(capsys):
    import pytest

    from infra.generator import main

    with pytest.raises(SystemExit) as exc:
        main(["--linger-ms", "-1"])
    assert exc.value.code == 2
    assert "--linger-ms must be >= 0" in capsys.readouterr().err
