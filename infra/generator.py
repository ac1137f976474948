"""Synthetic user-event workload: realistic enough to exercise every part of the platform.

* Items have a category and a Zipf popularity; their 16-d embedding sits near their
  category's centroid, so models can learn something real from engagement.
* Users have Zipf-distributed activity and 1-3 latent interest categories; most of
  their engagement is with items of those categories.
* Users act in sessions on a surface (home feed, search, related): views lead to
  close-ups, close-ups to repins and clicks; searches carry a query.
* A configurable share of events arrives late (event time in the past: out of order),
  is sent twice (same event_id: at-least-once producers) or is malformed (DLQ).

``python -m infra.generator --rate 2000`` produces to the local stack; it also writes the
item feature source the enrichment reads (``--features-only`` does just that).
"""
from __future__ import annotations

import argparse
import itertools
import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from typing import Iterator

import orjson


log = logging.getLogger("usersignals.generator")

SURFACES = ("homefeed", "search", "related")
QUERY_WORDS = ("recipe", "diy", "outfit", "garden", "wedding", "tattoo", "quote", "hair", "nails",
               "kitchen", "bedroom", "art", "travel", "workout", "cake", "cat", "dog", "logo")


@dataclass(frozen=True)
class WorkloadConfig:
    users: int = 10_000
    items: int = 50_000
    categories: int = 32
    zipf_users: float = 1.1
    zipf_items: float = 1.05
    late_share: float = 0.05
    late_max_s: float = 60.0
    dup_share: float = 0.02
    bad_share: float = 0.0
    seed: int = 7


def _zipf_cum_weights(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k ** s) for k in range(1, n + 1)))


class ItemCatalog:
    """Items with category, popularity and an embedding near their category's centroid."""

    def __init__(self, cfg: WorkloadConfig):
        rng = random.Random(cfg.seed)
        self.cfg = cfg
        from usersignals.registry import load_registry

        dim = load_registry().model.embedding_dim  # what serving's model-ready tensors carry
        self.centroids = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(cfg.categories)]
        self.item_ids = [f"i{n}" for n in range(cfg.items)]
        self.category = [rng.randrange(cfg.categories) for _ in range(cfg.items)]
        # Popularity rank is random with respect to id, so categories each have hits.
        ranks = list(range(cfg.items))
        rng.shuffle(ranks)
        self.rank = ranks
        self.by_category: list[list[int]] = [[] for _ in range(cfg.categories)]
        for idx in sorted(range(cfg.items), key=lambda i: ranks[i]):
            self.by_category[self.category[idx]].append(idx)
        self.cat_cum = [_zipf_cum_weights(len(members), cfg.zipf_items) if members else []
                        for members in self.by_category]
        self.all_cum = _zipf_cum_weights(cfg.items, cfg.zipf_items)
        self.by_rank = sorted(range(cfg.items), key=lambda i: ranks[i])
        self._rng = rng

    def features(self) -> dict[str, dict]:
        rng = random.Random(self.cfg.seed + 1)
        out = {}
        for idx, item_id in enumerate(self.item_ids):
            c = self.centroids[self.category[idx]]
            emb = [round(x + rng.gauss(0, 0.35), 4) for x in c]
            norm = math.sqrt(sum(x * x for x in emb)) or 1.0
            out[item_id] = {
                "category": f"c{self.category[idx]}",
                "popularity": round(1.0 / (1 + self.rank[idx]) ** 0.3, 4),
                "embedding": [round(x / norm, 4) for x in emb],
            }
        return out

    def pick(self, rng: random.Random, category: int | None) -> str:
        if category is None or not self.by_category[category]:
            idx = rng.choices(self.by_rank, cum_weights=self.all_cum)[0]
        else:
            idx = rng.choices(self.by_category[category], cum_weights=self.cat_cum[category])[0]
        return self.item_ids[idx]


class EventGenerator:
    """Yields (key, value) byte pairs of user events, in sessions, with late/dup/bad shares."""

    def __init__(self, cfg: WorkloadConfig, catalog: ItemCatalog | None = None, clock=time.time):
        self.cfg = cfg
        self.catalog = catalog or ItemCatalog(cfg)
        self.rng = random.Random(cfg.seed + 2)
        self.clock = clock
        self.user_ids = [f"u{n}" for n in range(cfg.users)]
        self.user_cum = _zipf_cum_weights(cfg.users, cfg.zipf_users)
        urng = random.Random(cfg.seed + 3)
        self.interests = [urng.sample(range(cfg.categories), k=urng.randint(1, 3)) for _ in range(cfg.users)]
        self._seq = itertools.count()
        self._run = f"{random.Random().getrandbits(32):08x}"
        self.counts = {"good": 0, "late": 0, "dup": 0, "bad": 0}

    def _event(self, user: int, etype: str, item: str, surface: str, ts: int, **extra) -> dict:
        ev = {"event_id": f"{self._run}-{next(self._seq)}", "user_id": self.user_ids[user],
              "event_type": etype, "item_id": item, "ts": ts, "surface": surface}
        ev.update(extra)
        return ev

    def session(self) -> list[dict]:
        """One user session: a short run of related events on one surface."""
        rng = self.rng
        user = rng.choices(range(self.cfg.users), cum_weights=self.user_cum)[0]
        surface = rng.choice(SURFACES)
        now = int(self.clock() * 1000)
        events: list[dict] = []
        if surface == "search":
            q = " ".join(rng.sample(QUERY_WORDS, k=rng.randint(1, 3)))
            cat = rng.choice(self.interests[user]) if rng.random() < 0.8 else None
            events.append(self._event(user, "search", self.catalog.pick(rng, cat), surface, now, query=q))
        for _ in range(rng.randint(1, 6)):
            cat = rng.choice(self.interests[user]) if rng.random() < 0.75 else None
            item = self.catalog.pick(rng, cat)
            events.append(self._event(user, "view", item, surface, now))
            if rng.random() < 0.35:
                events.append(self._event(user, "closeup", item, surface, now,
                                          dwell_ms=int(rng.expovariate(1 / 8000))))
                r = rng.random()
                if r < 0.25:
                    events.append(self._event(user, "repin", item, surface, now))
                elif r < 0.45:
                    events.append(self._event(user, "click", item, surface, now,
                                              dwell_ms=int(rng.expovariate(1 / 20000))))
        return events

    def _bad(self, ev: dict) -> tuple[bytes | None, bytes]:
        kind = self.rng.randrange(6)
        key = ev["user_id"].encode()
        if kind == 0:
            return key, b"{not json"
        if kind == 1:
            return key, orjson.dumps({k: v for k, v in ev.items() if k != "item_id"})
        if kind == 2:
            return key, orjson.dumps({**ev, "ts": str(ev["ts"])})
        if kind == 3:  # (an unregistered but well-formed type is kept in raw_events, not a dead letter)
            return key, orjson.dumps({**ev, "event_type": ""})
        if kind == 4:
            return key, orjson.dumps({**ev, "ts": 0})
        return b"someone-else", orjson.dumps(ev)

    def records(self) -> Iterator[tuple[bytes | None, bytes]]:
        cfg, rng = self.cfg, self.rng
        while True:
            for ev in self.session():
                if cfg.bad_share and rng.random() < cfg.bad_share:
                    self.counts["bad"] += 1
                    yield self._bad(ev)
                    continue
                if cfg.late_share and rng.random() < cfg.late_share:
                    ev["ts"] -= int(rng.uniform(1.0, cfg.late_max_s) * 1000)
                    self.counts["late"] += 1
                key, value = ev["user_id"].encode(), orjson.dumps(ev)
                self.counts["good"] += 1
                yield key, value
                if cfg.dup_share and rng.random() < cfg.dup_share:
                    self.counts["dup"] += 1
                    yield key, value


def history(cfg: WorkloadConfig, n_events: int, start_ms: int, end_ms: int,
            catalog: ItemCatalog | None = None, registry=None) -> list[dict]:
    """``n_events`` past events spread evenly over [start_ms, end_ms), sessions intact, as
    enriched-events rows (event time in microseconds, the item's category): engagement
    history for the lake, with the same planted user interests as the live workload."""
    catalog = catalog or ItemCatalog(cfg)
    feats = catalog.features()
    step = (end_ms - start_ms) / max(1, n_events)
    t = [float(start_ms)]

    def clock() -> float:
        return t[0] / 1000.0

    gen = EventGenerator(cfg, catalog, clock=clock)
    from usersignals.registry import load_registry

    registry = registry or load_registry()
    datasets = {et: registry.dataset_for_type(et).name for et in registry.event_types}
    rows: list[dict] = []
    while len(rows) < n_events:
        for ev in gen.session():
            ts = int(t[0])
            rows.append({"event_id": ev["event_id"], "user_id": ev["user_id"], "event_type": ev["event_type"],
                         "item_id": ev["item_id"], "event_time": ts * 1000, "surface": ev.get("surface"),
                         "dwell_ms": ev.get("dwell_ms"), "query": ev.get("query"),
                         "dataset": datasets[ev["event_type"]], "indexed_at": ts * 1000 + 50,
                         "enriched_by": "stream", "category": feats[ev["item_id"]]["category"]})
            t[0] += step
    return rows[:n_events]


def write_features(catalog: ItemCatalog, kv, prefix: str) -> int:
    """The catalog's item features into the KV store: ``kv`` is Settings (a cluster if they say
    so) or a single node's URL, as ``usersignals.kv.connect`` takes them."""
    from usersignals.features import ItemFeatureStore
    from usersignals.kv import connect

    feats = catalog.features()
    ItemFeatureStore(connect(kv), prefix).put_many(feats)
    return len(feats)


def write_features_to_lake(catalog: ItemCatalog, settings) -> int:
    """Append the items' features to the lake's item_features table (the offline source of truth)."""
    import datetime as dt

    from usersignals import lake

    now = dt.datetime.now(dt.timezone.utc)
    rows = [{"item_id": item_id, **f, "updated_at": now} for item_id, f in catalog.features().items()]
    lake.append_rows(lake.load_catalog(settings), lake.table_id(settings, lake.ITEM_FEATURES), rows)
    return len(rows)


# How long the producer gathers events into one batch per partition. Fewer, larger batches cost
# the generator, the broker and the job's fetches less CPU, which the two cores share with the
# path being measured: bench-freshness's probes (sent without linger) at 2,000 events/s of load
# saw p50 52 / p99 251 ms with 50 ms, 73 / 347 ms with 5 ms (Kafka 4.3, side by side).
DEFAULT_LINGER_MS = 50


def make_producer(broker: str, linger_ms: int = DEFAULT_LINGER_MS, **extra):
    """The generator's producer: librdkafka (confluent-kafka), idempotent, lz4 batches."""
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": broker, "linger.ms": linger_ms, "enable.idempotence": True,
            "compression.type": "lz4", "queue.buffering.max.messages": 500_000}
    conf.update(extra)
    return Producer(conf)


def produce(gen: EventGenerator, producer, topic: str, rate: float, limit: int | None = None,
            stop=None, report_every_s: float = 10.0) -> int:
    """Produce at ``rate`` events/s (0 = as fast as possible) until ``limit`` or ``stop()``."""
    sent = 0
    start = last_report = time.monotonic()
    for key, value in gen.records():
        if limit is not None and sent >= limit:
            break
        if stop is not None and sent % 200 == 0 and stop():
            break
        while True:
            try:
                producer.produce(topic, value=value, key=key)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 1000 == 0:
            producer.poll(0)
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0.002:
                time.sleep(ahead)
        if report_every_s and time.monotonic() - last_report > report_every_s:
            last_report = time.monotonic()
            log.info("produced %d events (%.0f/s) %s", sent, sent / (last_report - start), gen.counts)
    producer.flush(30)
    return sent


def main(argv: list[str] | None = None) -> int:
    from usersignals.settings import load_settings

    settings = load_settings()
    p = argparse.ArgumentParser(description="Produce synthetic user events to the local stack.")
    p.add_argument("--rate", type=float, default=1000.0, help="events per second (0: as fast as possible)")
    p.add_argument("--count", type=int, default=None, help="stop after this many events")
    p.add_argument("--users", type=int, default=WorkloadConfig.users)
    p.add_argument("--items", type=int, default=WorkloadConfig.items)
    p.add_argument("--late-share", type=float, default=WorkloadConfig.late_share)
    p.add_argument("--dup-share", type=float, default=WorkloadConfig.dup_share)
    p.add_argument("--bad-share", type=float, default=WorkloadConfig.bad_share)
    p.add_argument("--seed", type=int, default=WorkloadConfig.seed)
    p.add_argument("--linger-ms", type=int, default=DEFAULT_LINGER_MS,
                   help="producer batching delay: higher makes fewer, larger batches; lower is fresher")
    p.add_argument("--features-only", action="store_true", help="write item features and exit")
    p.add_argument("--no-features", action="store_true", help="do not write item features")
    p.add_argument("--no-lake", action="store_true", help="do not write item features to the lake")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("late_share", "dup_share", "bad_share"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.linger_ms < 0:
        p.error("--linger-ms must be >= 0")
    cfg = WorkloadConfig(users=args.users, items=args.items, late_share=args.late_share,
                         dup_share=args.dup_share, bad_share=args.bad_share, seed=args.seed)
    catalog = ItemCatalog(cfg)
    if not args.no_features:
        n = write_features(catalog, settings, settings.kv_prefix)
        log.info("wrote features of %d items to %s", n, settings.kv_url)
        if not args.no_lake:
            try:
                log.info("wrote features of %d items to the lake", write_features_to_lake(catalog, settings))
            except Exception as exc:  # the KV copy is what the stream needs; the lake copy can wait
                log.warning("could not write item features to the lake (%s); run `python -m iceberg_schemas`", exc)
    if args.features_only:
        return 0
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    gen = EventGenerator(cfg, catalog)
    producer = make_producer(settings.broker, args.linger_ms)
    sent = produce(gen, producer, settings.events_topic, args.rate, args.count, stop=lambda: bool(stopping))
    log.info("done: produced %d records %s", sent, gen.counts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
