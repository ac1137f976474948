"""The registry: event types, datasets, enrichments and tenants, validated on load.

It is the single source the streaming job, the batch jobs, the serving API and the
DAGs read (see ``default_registry.toml``). Loading fails with a ``RegistryError``
that names the offending entry, the bad value and what would be right.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from usersignals.ids import is_name

DEFAULT_REGISTRY_PATH = Path(__file__).with_name("default_registry.toml")
STAGES = ("indexing", "serving")
FORMATS = ("json", "arrow")
MAX_RETENTION = 10_000
# Aggregate views the platform implements (usersignals.aggregates.VIEW_FUNCTIONS); the registry's
# [views.<name>] sections say which of them this deployment serves.
VIEWS = ("category_affinity", "top_category", "activity")
MAX_WEIGHT = 1000.0
# Column types an item feature may have (the lake's item_features and enriched_events columns).
FEATURE_TYPES = ("string", "double", "float", "bigint", "int", "array<float>")
MAX_EMBEDDING_DIM = 4096
# A selection rule's function, importable where the batch jobs run: "package.module:function".
_FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
# The rule every comparison measures the others against: the platform's own last-N.
BASELINE_RULE = "last"


class RegistryError(ValueError):
    """The registry file is not valid; the message says where and why."""


@dataclass(frozen=True)
class Feature:
    """An item feature: a column of the lake's item_features, copied onto events by enrichments."""

    name: str
    type: str
    description: str = ""


@dataclass(frozen=True)
class Enrichment:
    name: str
    fields: tuple[str, ...]
    stage: str
    source: str = "item_features"
    description: str = ""


@dataclass(frozen=True)
class EventType:
    name: str
    id: int
    description: str = ""
    aggregate_weight: float = 1.0       # how much one event adds to its user's interest in its item's category
    training_weight: float = 1.0        # an event's weight in the model's training data, before the dwell boost
    relevant: bool = False              # on the holdout day, an engagement the model should have predicted (evaluation)


@dataclass(frozen=True)
class View:
    """An aggregate view served from each user's aggregate state (``usersignals.aggregates``)."""

    name: str
    description: str = ""


@dataclass(frozen=True)
class Model:
    """What every part that produces or consumes model outputs must agree on."""

    embedding_dim: int = 16             # length of item embeddings: training rank, published versions, serving tensors


@dataclass(frozen=True)
class Dataset:
    """The last ``retention`` events of one event type per user, newest first."""

    name: str
    event_type: str
    retention: int
    enrichments: tuple[str, ...] = ()
    ttl_days: int = 90
    description: str = ""
    experiment: str | None = None       # set on an experiment's derived dataset: the experiment
    ends: dt.date | None = None         # an experiment dataset's end: its keys expire at this day's start (UTC)

    def ttl_seconds(self, now_s: float) -> int:
        """Seconds the KV keys of this dataset live after a write: ``ttl_days``, or for an
        experiment dataset until its end (at least 1: an ended experiment's keys go at once)."""
        if self.ends is None:
            return self.ttl_days * 86400
        end = dt.datetime.combine(self.ends, dt.time(), tzinfo=dt.timezone.utc).timestamp()
        return max(1, int(end - now_s))


@dataclass(frozen=True)
class SelectionRule:
    """An event-selection rule: ``function`` ("module:function") scores a user's events (``batch.selection``)."""

    name: str
    function: str
    description: str = ""


@dataclass(frozen=True)
class Experiment:
    """An event-selection experiment: each rule's ``n`` events per user of ``dataset``, served as
    dataset ``exp_<name>_<rule>`` until ``ends`` (UTC day start), then removed by the cleanup."""

    name: str
    dataset: str
    rules: tuple[str, ...]
    n: int
    ends: dt.date
    description: str = ""

    def dataset_of(self, rule: str) -> str:
        return experiment_dataset(self.name, rule)

    def ended(self, as_of: dt.datetime) -> bool:
        return as_of >= dt.datetime.combine(self.ends, dt.time(), tzinfo=dt.timezone.utc)


def experiment_dataset(experiment: str, rule: str) -> str:
    """The derived dataset holding one rule's selection of an experiment."""
    return f"exp_{experiment}_{rule}"


@dataclass(frozen=True)
class Filters:
    """What a tenant does not want to see (applied by the serving filter stage)."""

    dedup_items: bool = True            # keep only the newest event per item within a sequence
    max_age_s: int | None = None        # drop events older than this
    min_dwell_ms: Mapping[str, int] = field(default_factory=dict)  # dataset -> threshold
    surfaces: tuple[str, ...] = ()      # keep only these surfaces (empty: all)
    exclude_items: tuple[str, ...] = () # never serve these items


@dataclass(frozen=True)
class Tenant:
    """A use case: which sequences it reads, how long, filtered, enriched and shaped how."""

    name: str
    sequences: Mapping[str, int]
    enrichments: tuple[str, ...] = ()
    format: str = "json"
    description: str = ""
    filters: Filters = field(default_factory=Filters)
    views: tuple[str, ...] = ()         # aggregate views derived from per-user state
    max_concurrency: int = 32           # in-flight requests per API server before 429 (serving/limits.py)
    max_rps: float = 0.0                # requests per second per API server before 429 (0: no limit)
    timeout_ms: int = 100               # per request, all users of a batch
    log_sample_rate: float = 0.0        # share of responses logged to the served-features topic
    api_key_sha256: str = ""            # sha256 hex of the tenant's API key ("" = no key accepted)

    @property
    def filtering(self) -> bool:
        """Whether the tenant's filters can drop events (request-level exclusions aside)."""
        f = self.filters
        return bool(f.dedup_items or f.max_age_s or f.min_dwell_ms or f.surfaces or f.exclude_items)


@dataclass(frozen=True)
class Registry:
    event_types: Mapping[str, EventType]
    datasets: Mapping[str, Dataset]
    enrichments: Mapping[str, Enrichment]
    tenants: Mapping[str, Tenant]
    source: str = "<memory>"
    views: Mapping[str, View] = field(default_factory=dict)
    model: Model = field(default_factory=Model)
    features: Mapping[str, Feature] = field(default_factory=dict)
    digest: str = ""                    # sha256 of the file it was loaded from ("" when not from a file)
    selection_rules: Mapping[str, SelectionRule] = field(default_factory=dict)
    experiments: Mapping[str, Experiment] = field(default_factory=dict)
    _by_event_type: Mapping[str, tuple[Dataset, ...]] = field(default_factory=dict, repr=False)

    def datasets_for(self, event_type: str) -> tuple[Dataset, ...]:
        """The datasets the streaming job writes an event of this type to."""
        return self._by_event_type.get(event_type, ())

    def dataset_for_type(self, event_type: str) -> Dataset:
        """The real-time dataset of an event type (there is exactly one)."""
        found = self._by_event_type.get(event_type)
        if not found:
            known = ", ".join(sorted(self.event_types))
            raise KeyError(f"unknown event type {event_type!r}; known types: {known}")
        return found[0]

    def fetch_limits(self, tenant: Tenant) -> dict[str, int]:
        """Dataset -> how many newest events the API reads for ``tenant`` before its filters: its
        length, twice it when filters can drop events, at most the retention. The skew job and
        the training examples rebuild from the lake exactly this window."""
        factor = 2 if tenant.filtering else 1
        return {d: min(self.datasets[d].retention, n * factor) for d, n in tenant.sequences.items()}

    def realtime_datasets(self) -> dict[str, Dataset]:
        """The datasets the stream indexes (``datasets`` also holds experiments' derived ones)."""
        return {n: d for n, d in self.datasets.items() if d.experiment is None}

    def aggregate_weights(self) -> dict[str, float]:
        """Event type -> its weight in the aggregate state (the streaming job's aggregator)."""
        return {n: et.aggregate_weight for n, et in self.event_types.items()}

    def training_weights(self) -> dict[str, float]:
        """Event type -> its weight in the model's training data (``batch.retrain``)."""
        return {n: et.training_weight for n, et in self.event_types.items()}

    def relevant_types(self) -> tuple[str, ...]:
        """Event types whose engagements on the holdout day count as relevant in evaluation."""
        return tuple(n for n, et in self.event_types.items() if et.relevant)

    def indexing_fields(self, dataset: Dataset) -> tuple[str, ...]:
        """Item-feature fields stored with each event of ``dataset``."""
        return self.fields_of(dataset.enrichments)

    def fields_of(self, enrichments: tuple[str, ...]) -> tuple[str, ...]:
        """Item-feature fields these enrichments provide, in order, each once."""
        return tuple(dict.fromkeys(f for name in enrichments for f in self.enrichments[name].fields))


def load_registry(path: str | Path | None = None) -> Registry:
    """Load and validate a registry file (the packaged default when ``path`` is None)."""
    path = Path(path) if path else DEFAULT_REGISTRY_PATH
    try:
        data = path.read_bytes()
        raw = tomllib.loads(data.decode())
    except FileNotFoundError:
        raise RegistryError(f"registry file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: not valid TOML: {exc}") from None
    return replace(parse_registry(raw, source=str(path)), digest=hashlib.sha256(data).hexdigest())


def parse_registry(raw: Mapping[str, Any], source: str = "<memory>") -> Registry:
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise RegistryError(
            f"{source}: unknown top-level section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)}"
        )
    model = _model(raw.get("model", {}))
    views = {n: _view(n, b) for n, b in _section(raw, "views").items()}
    features = {n: _feature(n, b) for n, b in _section(raw, "features").items()}
    enrichments = {n: _enrichment(n, b, features) for n, b in _section(raw, "enrichments").items()}
    event_types = {n: _event_type(n, b) for n, b in _section(raw, "event_types").items()}
    if not event_types:
        raise RegistryError(f"{source}: at least one event type is required")
    ids: dict[int, str] = {}
    for et in event_types.values():
        if et.id in ids:
            raise RegistryError(
                f"event_types.{et.name}.id: {et.id} is already used by {ids[et.id]!r}; ids must be unique"
            )
        ids[et.id] = et.name

    datasets = {n: _dataset(n, b, event_types, enrichments) for n, b in _section(raw, "datasets").items()}
    by_type: dict[str, list[Dataset]] = {}
    for ds in datasets.values():
        by_type.setdefault(ds.event_type, []).append(ds)
    for et, dss in by_type.items():
        if len(dss) > 1:
            names = sorted(d.name for d in dss)
            raise RegistryError(
                f"datasets {names}: event type {et!r} has {len(dss)} real-time datasets; exactly one is allowed"
            )
    missing = sorted(set(event_types) - set(by_type))
    if missing:
        raise RegistryError(f"event types {missing} have no dataset; add a [datasets.<name>] for each")

    rules = {n: _selection_rule(n, b) for n, b in _section(raw, "selection_rules").items()}
    experiments = {n: _experiment(n, b, datasets, rules) for n, b in _section(raw, "experiments").items()}
    for exp in experiments.values():
        for rule in exp.rules:
            derived = _derived_dataset(exp, rule, datasets[exp.dataset])
            if derived.name in datasets:
                raise RegistryError(f"experiments.{exp.name}: its dataset {derived.name!r} for rule {rule!r} "
                                    f"is already a dataset; rename the experiment")
            datasets[derived.name] = derived

    tenants = {n: _tenant(n, b, datasets, enrichments, views) for n, b in _section(raw, "tenants").items()}
    return Registry(
        event_types=event_types,
        datasets=datasets,
        enrichments=enrichments,
        tenants=tenants,
        source=source,
        views=views,
        model=model,
        features=features,
        selection_rules=rules,
        experiments=experiments,
        _by_event_type={k: tuple(v) for k, v in by_type.items()},
    )


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Mapping[str, Any]]:
    section = raw.get(name, {})
    if not isinstance(section, Mapping):
        raise RegistryError(f"{name}: expected a table of entries, got {type(section).__name__}")
    for key, body in section.items():
        if not is_name(key):
            raise RegistryError(
                f"{name}.{key}: names must be lowercase snake_case (a-z, 0-9, _), at most 63 characters"
            )
        if not isinstance(body, Mapping):
            raise RegistryError(f"{name}.{key}: expected a table, got {type(body).__name__}")
    return section


def _check_keys(where: str, body: Mapping[str, Any], allowed: set[str], required: set[str]) -> None:
    extra = set(body) - allowed
    if extra:
        raise RegistryError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(allowed)}")
    absent = required - set(body)
    if absent:
        raise RegistryError(f"{where}: missing required key(s) {sorted(absent)}")


def _positive_int(where: str, value: Any, maximum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise RegistryError(f"{where}: must be a positive integer, got {value!r}")
    if maximum is not None and value > maximum:
        raise RegistryError(f"{where}: {value} is over the maximum of {maximum}")
    return value


def _str_list(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RegistryError(f"{where}: must be a list of strings, got {value!r}")
    if len(set(value)) != len(value):
        raise RegistryError(f"{where}: has duplicates: {value!r}")
    return tuple(value)


def _feature(name: str, body: Mapping[str, Any]) -> Feature:
    where = f"features.{name}"
    _check_keys(where, body, {"type", "description"}, {"type"})
    if body["type"] not in FEATURE_TYPES:
        raise RegistryError(f"{where}.type: {body['type']!r} is not a feature type; known: {list(FEATURE_TYPES)}")
    return Feature(name, body["type"], str(body.get("description", "")))


def _enrichment(name: str, body: Mapping[str, Any], features: Mapping[str, Feature]) -> Enrichment:
    where = f"enrichments.{name}"
    _check_keys(where, body, {"fields", "stage", "source", "description"}, {"fields", "stage"})
    fields = _str_list(f"{where}.fields", body["fields"])
    if not fields:
        raise RegistryError(f"{where}.fields: must name at least one item-feature field")
    for f in fields:
        if f not in features:
            raise RegistryError(f"{where}.fields: {f!r} is not a registered item feature; add [features.{f}] "
                                f"with its type; registered: {sorted(features)}")
    if body["stage"] not in STAGES:
        raise RegistryError(f"{where}.stage: {body['stage']!r} is not one of {list(STAGES)}")
    source = body.get("source", "item_features")
    if source != "item_features":
        raise RegistryError(f"{where}.source: {source!r} is not a known feature source; known: ['item_features']")
    return Enrichment(name, fields, body["stage"], source, str(body.get("description", "")))


def _weight(where: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= MAX_WEIGHT:
        raise RegistryError(f"{where}: must be a number from 0 to {MAX_WEIGHT:g}, got {value!r}")
    return float(value)


def _event_type(name: str, body: Mapping[str, Any]) -> EventType:
    where = f"event_types.{name}"
    _check_keys(where, body, {"id", "description", "aggregate_weight", "training_weight", "relevant"}, {"id"})
    relevant = body.get("relevant", EventType.relevant)
    if not isinstance(relevant, bool):
        raise RegistryError(f"{where}.relevant: must be true or false, got {relevant!r}")
    return EventType(
        name, _positive_int(f"{where}.id", body["id"], 255), str(body.get("description", "")),
        # A type without weights counts like any other engagement (1.0), never silently as 0.
        aggregate_weight=_weight(f"{where}.aggregate_weight", body.get("aggregate_weight", EventType.aggregate_weight)),
        training_weight=_weight(f"{where}.training_weight", body.get("training_weight", EventType.training_weight)),
        relevant=relevant,
    )


def _view(name: str, body: Mapping[str, Any]) -> View:
    where = f"views.{name}"
    _check_keys(where, body, {"description"}, set())
    if name not in VIEWS:
        raise RegistryError(f"{where}: {name!r} is not a view the platform implements; known: {list(VIEWS)}")
    return View(name, str(body.get("description", "")))


def _model(body: Any) -> Model:
    if not isinstance(body, Mapping):
        raise RegistryError(f"model: expected a table, got {body!r}")
    _check_keys("model", body, {"embedding_dim"}, set())
    dim = _positive_int("model.embedding_dim", body.get("embedding_dim", Model.embedding_dim), MAX_EMBEDDING_DIM)
    return Model(embedding_dim=dim)


def _dataset(name, body, event_types, enrichments) -> Dataset:
    where = f"datasets.{name}"
    _check_keys(where, body, {"event_type", "retention", "enrichments", "ttl_days", "description"},
                {"event_type", "retention"})
    et = body["event_type"]
    if et not in event_types:
        raise RegistryError(f"{where}.event_type: {et!r} is not a registered event type; known: {sorted(event_types)}")
    enr = _str_list(f"{where}.enrichments", body.get("enrichments", []))
    for e in enr:
        if e not in enrichments:
            raise RegistryError(f"{where}.enrichments: {e!r} is not a registered enrichment; known: {sorted(enrichments)}")
        if enrichments[e].stage != "indexing":
            raise RegistryError(
                f"{where}.enrichments: {e!r} has stage 'serving'; only indexing-time enrichments are stored"
            )
    return Dataset(
        name=name,
        event_type=et,
        retention=_positive_int(f"{where}.retention", body["retention"], MAX_RETENTION),
        enrichments=enr,
        ttl_days=_positive_int(f"{where}.ttl_days", body.get("ttl_days", 90), 3650),
        description=str(body.get("description", "")),
    )


def _selection_rule(name: str, body: Mapping[str, Any]) -> SelectionRule:
    where = f"selection_rules.{name}"
    _check_keys(where, body, {"function", "description"}, {"function"})
    fn = body["function"]
    if not isinstance(fn, str) or not _FUNCTION.match(fn):
        raise RegistryError(f"{where}.function: {fn!r} is not \"module:function\", e.g. \"batch.selection:dwell\"")
    return SelectionRule(name, fn, str(body.get("description", "")))


# A name (usersignals.ids) of at most 40 characters: its datasets exp_<experiment>_<rule> must be names too.
EXPERIMENT_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _experiment(name: str, body: Mapping[str, Any], datasets: Mapping[str, Dataset],
                rules: Mapping[str, SelectionRule]) -> Experiment:
    where = f"experiments.{name}"
    if not EXPERIMENT_NAME.fullmatch(name):  # what `python -m batch select` and its DAG accept
        raise RegistryError(f"{where}: experiment names are lowercase letters, digits and _, starting with a "
                            f"letter, at most 40 characters")
    _check_keys(where, body, {"dataset", "rules", "n", "ends", "description"}, {"dataset", "rules", "n", "ends"})
    ds = body["dataset"]
    if ds not in datasets:
        raise RegistryError(f"{where}.dataset: {ds!r} is not a registered dataset; known: {sorted(datasets)}")
    chosen = _str_list(f"{where}.rules", body["rules"])
    if not chosen:
        raise RegistryError(f"{where}.rules: name at least one selection rule; registered: {sorted(rules)}")
    for r in chosen:
        if r not in rules:
            raise RegistryError(f"{where}.rules: {r!r} is not a registered selection rule; registered: "
                                f"{sorted(rules)}")
        if not is_name(experiment_dataset(name, r)):
            raise RegistryError(f"{where}: dataset name {experiment_dataset(name, r)!r} is over 63 characters; "
                                f"shorten the experiment or rule name")
    ends = body["ends"]
    # A TOML date (ends = 2026-12-31), not a date-time: experiments end at a UTC day boundary.
    if not isinstance(ends, dt.date) or isinstance(ends, dt.datetime):
        raise RegistryError(f"{where}.ends: must be a TOML date like 2026-12-31 (unquoted), got {ends!r}")
    return Experiment(name, ds, chosen, _positive_int(f"{where}.n", body["n"], MAX_RETENTION), ends,
                      str(body.get("description", "")))


def _derived_dataset(exp: Experiment, rule: str, base: Dataset) -> Dataset:
    # Same event type and stored enrichments as the source; retention n; keys expire when it ends.
    return Dataset(name=exp.dataset_of(rule), event_type=base.event_type, retention=exp.n,
                   enrichments=base.enrichments, ttl_days=base.ttl_days,
                   description=f"Experiment {exp.name}: rule {rule}'s {exp.n} events per user of {base.name}.",
                   experiment=exp.name, ends=exp.ends)


TENANT_KEYS = {"sequences", "enrichments", "format", "description", "filters", "views", "max_concurrency",
               "max_rps", "timeout_ms", "log_sample_rate", "api_key_sha256"}
SECTIONS = ("model", "views", "features", "enrichments", "event_types", "datasets", "selection_rules",
            "experiments", "tenants")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def parse_tenant(name: str, body: Mapping[str, Any], registry: "Registry") -> Tenant:
    """Validate one tenant definition against a registry (what the admin API applies)."""
    if not is_name(name):
        raise RegistryError(f"tenants.{name}: names must be lowercase snake_case (a-z, 0-9, _)")
    if not isinstance(body, Mapping):
        raise RegistryError(f"tenants.{name}: expected an object, got {type(body).__name__}")
    return _tenant(name, body, registry.datasets, registry.enrichments, registry.views)


def _filters(where: str, body: Any, seqs: Mapping[str, int]) -> Filters:
    if not isinstance(body, Mapping):
        raise RegistryError(f"{where}: expected a table, got {body!r}")
    _check_keys(where, body, {"dedup_items", "max_age_s", "min_dwell_ms", "surfaces", "exclude_items"}, set())
    dedup = body.get("dedup_items", True)
    if not isinstance(dedup, bool):
        raise RegistryError(f"{where}.dedup_items: must be true or false, got {dedup!r}")
    max_age = body.get("max_age_s")
    if max_age is not None:
        _positive_int(f"{where}.max_age_s", max_age)
    dwell = body.get("min_dwell_ms", {})
    if not isinstance(dwell, Mapping):
        raise RegistryError(f"{where}.min_dwell_ms: must map dataset names to milliseconds, got {dwell!r}")
    for ds, ms in dwell.items():
        if ds not in seqs:
            raise RegistryError(f"{where}.min_dwell_ms: {ds!r} is not one of this tenant's sequences {sorted(seqs)}")
        _positive_int(f"{where}.min_dwell_ms.{ds}", ms)
    return Filters(dedup, max_age, dict(dwell), _str_list(f"{where}.surfaces", body.get("surfaces", [])),
                   _str_list(f"{where}.exclude_items", body.get("exclude_items", [])))


def _tenant(name, body, datasets, enrichments, views_served) -> Tenant:
    where = f"tenants.{name}"
    _check_keys(where, body, TENANT_KEYS, {"sequences"})
    seqs = body["sequences"]
    if not isinstance(seqs, Mapping) or not seqs:
        raise RegistryError(f"{where}.sequences: must map dataset names to lengths, got {seqs!r}")
    for ds_name, length in seqs.items():
        if ds_name not in datasets:
            raise RegistryError(f"{where}.sequences: {ds_name!r} is not a registered dataset; known: {sorted(datasets)}")
        _positive_int(f"{where}.sequences.{ds_name}", length, datasets[ds_name].retention)
    enr = _str_list(f"{where}.enrichments", body.get("enrichments", []))
    for e in enr:
        if e not in enrichments:
            raise RegistryError(f"{where}.enrichments: {e!r} is not a registered enrichment; known: {sorted(enrichments)}")
    fmt = body.get("format", "json")
    if fmt == "ufr":  # the model-ready format before Arrow: configs stored with it keep loading
        fmt = "arrow"
    if fmt not in FORMATS:
        raise RegistryError(f"{where}.format: {fmt!r} is not one of {list(FORMATS)}")
    views = _str_list(f"{where}.views", body.get("views", []))
    for v in views:
        if v not in views_served:
            raise RegistryError(f"{where}.views: {v!r} is not a registered view; registered: {sorted(views_served)}")
    rate = body.get("log_sample_rate", 0.0)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        raise RegistryError(f"{where}.log_sample_rate: must be a number from 0 to 1, got {rate!r}")
    max_rps = body.get("max_rps", 0.0)
    if not isinstance(max_rps, (int, float)) or isinstance(max_rps, bool) or not 0 <= max_rps <= 1_000_000:
        raise RegistryError(f"{where}.max_rps: must be a number from 0 (no limit) to 1000000, got {max_rps!r}")
    key = body.get("api_key_sha256", "")
    if key and (not isinstance(key, str) or not _SHA256.match(key)):
        raise RegistryError(f"{where}.api_key_sha256: must be 64 lowercase hex characters (sha256 of the key)")
    return Tenant(
        name, dict(seqs), enr, fmt, str(body.get("description", "")),
        filters=_filters(f"{where}.filters", body.get("filters", {}), seqs),
        views=views,
        max_concurrency=_positive_int(f"{where}.max_concurrency", body.get("max_concurrency", 32), 10_000),
        max_rps=float(max_rps),
        timeout_ms=_positive_int(f"{where}.timeout_ms", body.get("timeout_ms", 100), 60_000),
        log_sample_rate=float(rate),
        api_key_sha256=key,
    )


def tenant_to_dict(t: Tenant) -> dict[str, Any]:
    """The tenant as the admin API shows and accepts it (round-trips through parse_tenant)."""
    f = t.filters
    filters: dict[str, Any] = {"dedup_items": f.dedup_items, "min_dwell_ms": dict(f.min_dwell_ms),
                               "surfaces": list(f.surfaces), "exclude_items": list(f.exclude_items)}
    if f.max_age_s is not None:
        filters["max_age_s"] = f.max_age_s
    return {
        "sequences": dict(t.sequences), "enrichments": list(t.enrichments), "format": t.format,
        "description": t.description, "filters": filters, "views": list(t.views),
        "max_concurrency": t.max_concurrency, "max_rps": t.max_rps, "timeout_ms": t.timeout_ms,
        "log_sample_rate": t.log_sample_rate, "api_key_sha256": t.api_key_sha256,
    }
