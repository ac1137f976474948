import copy
import tomllib

import pytest

from usersignals.registry import DEFAULT_REGISTRY_PATH, RegistryError, load_registry, parse_registry

RAW = tomllib.loads(DEFAULT_REGISTRY_PATH.read_text())


def edited(fn):
    raw = copy.deepcopy(RAW)
    fn(raw)
    return raw


def error_of(raw):
    with pytest.raises(RegistryError) as info:
        parse_registry(raw)
    return str(info.value)


def test_default_registry_has_the_required_event_types_each_with_its_own_retention():
    reg = load_registry()
    assert {"click", "repin", "closeup", "view", "search"} <= set(reg.event_types)
    retentions = {reg.dataset_for_type(t).retention for t in reg.event_types}
    assert len(retentions) > 1


def test_indexing_fields_follow_the_dataset_enrichments():
    reg = load_registry()
    assert reg.indexing_fields(reg.datasets["clicks"]) == ("category", "popularity")
    assert reg.indexing_fields(reg.datasets["searches"]) == ()


def test_unknown_event_type_lookup_names_the_known_ones():
    with pytest.raises(KeyError, match="click"):
        load_registry().dataset_for_type("hover")


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["datasets"]["clicks"].update(retention=0), "datasets.clicks.retention: must be a positive integer"),
    (lambda r: r["datasets"]["clicks"].update(retention=10**6), "over the maximum"),
    (lambda r: r["datasets"]["clicks"].update(event_type="hover"), "'hover' is not a registered event type"),
    (lambda r: r["datasets"]["clicks"].update(enrichments=["nope"]), "'nope' is not a registered enrichment"),
    (lambda r: r["datasets"]["clicks"].update(enrichments=["item_embedding"]), "stage 'serving'"),
    (lambda r: r["datasets"]["clicks"].update(colour="red"), "unknown key(s) ['colour']"),
    (lambda r: r["event_types"]["view"].update(id=1), "ids must be unique"),
    (lambda r: r["datasets"].pop("views"), "have no dataset"),
    (lambda r: r["datasets"].update(clicks2={"event_type": "click", "retention": 5}), "exactly one"),
    (lambda r: r["tenants"]["search_ranking"]["sequences"].update(clicks=1000), "over the maximum of 100"),
    (lambda r: r["tenants"]["search_ranking"]["sequences"].update(nope=3), "'nope' is not a registered dataset"),
    (lambda r: r["tenants"]["search_ranking"].update(format="xml"), "'xml' is not one of"),
    (lambda r: r["enrichments"]["item_category"].update(stage="later"), "'later' is not one of"),
    (lambda r: r.update(extras={}), "unknown top-level section"),
    (lambda r: r["event_types"].update({"Bad-Name": {"id": 9}}), "lowercase snake_case"),
])
def test_invalid_registries_fail_with_a_message_naming_the_entry(edit, message):
    assert message in error_of(edited(edit))


def test_missing_file_and_bad_toml_are_clear(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        load_registry(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[datasets\n")
    with pytest.raises(RegistryError, match="not valid TOML"):
        load_registry(bad)


# --- per-type knowledge: weights, relevance, views, the embedding size ---------------------

def test_each_event_type_carries_its_aggregate_and_training_weights_and_relevance():
    reg = load_registry()
    assert reg.aggregate_weights() == {"click": 2.0, "repin": 3.0, "closeup": 1.0, "view": 0.2, "search": 1.0}
    assert reg.training_weights() == {"click": 3.0, "repin": 4.0, "closeup": 2.0, "view": 0.5, "search": 1.0}
    assert set(reg.relevant_types()) == {"click", "repin", "closeup"}
    assert reg.model.embedding_dim == 16
    assert list(reg.views) == ["category_affinity", "top_category", "activity"]


def test_a_new_type_without_weights_counts_like_any_engagement_not_zero():
    def add_hover(r):
        r["event_types"]["hover"] = {"id": 9}
        r["datasets"]["hovers"] = {"event_type": "hover", "retention": 10}

    reg = parse_registry(edited(add_hover))
    hover = reg.event_types["hover"]
    assert (hover.aggregate_weight, hover.training_weight, hover.relevant) == (1.0, 1.0, False)
    assert reg.training_weights()["hover"] == 1.0 and reg.aggregate_weights()["hover"] == 1.0


def test_registry_without_model_section_has_the_documented_embedding_size():
    assert parse_registry(edited(lambda r: r.pop("model"))).model.embedding_dim == 16
    assert parse_registry(edited(lambda r: r["model"].update(embedding_dim=32))).model.embedding_dim == 32


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["event_types"]["view"].update(aggregate_weight=-0.5),
     "event_types.view.aggregate_weight: must be a number from 0 to 1000, got -0.5"),
    (lambda r: r["event_types"]["view"].update(training_weight="high"),
     "event_types.view.training_weight: must be a number from 0 to 1000, got 'high'"),
    (lambda r: r["event_types"]["view"].update(training_weight=True), "got True"),
    (lambda r: r["event_types"]["view"].update(relevant="yes"), "event_types.view.relevant: must be true or false, got 'yes'"),
    (lambda r: r["model"].update(embedding_dim=0), "model.embedding_dim: must be a positive integer, got 0"),
    (lambda r: r["model"].update(embedding_dim=10**5), "model.embedding_dim: 100000 is over the maximum of 4096"),
    (lambda r: r["model"].update(rank=16), "model: unknown key(s) ['rank']"),
    (lambda r: r.update(model=16), "model: expected a table, got 16"),
    (lambda r: r["views"].update(sparkle={}), "views.sparkle: 'sparkle' is not a view the platform implements"),
    (lambda r: r["views"].pop("activity"),
     "tenants.homefeed_ranking.views: 'activity' is not a registered view; registered: ['category_affinity', "
     "'top_category']"),
])
def test_invalid_per_type_knowledge_names_the_bad_value(edit, message):
    assert message in error_of(edited(edit))


def test_views_the_registry_may_name_are_the_ones_aggregates_implement():
    from usersignals.aggregates import VIEW_FUNCTIONS
    from usersignals.registry import VIEWS

    assert set(VIEWS) == set(VIEW_FUNCTIONS)


def test_item_features_are_typed_in_the_registry_and_the_lake_tables_follow():
    from iceberg_schemas.tables import feature_types, table_defs
    from pyiceberg.types import DoubleType, StringType

    def add_score(r):
        r["features"]["score"] = {"type": "double"}
        r["enrichments"]["item_score"] = {"fields": ["score"], "stage": "indexing"}
        r["datasets"]["clicks"]["enrichments"].append("item_score")

    reg = parse_registry(edited(add_score))
    assert {f: t.type for f, t in reg.features.items()} == {
        "category": "string", "popularity": "double", "embedding": "array<float>", "score": "double"}
    defs = table_defs(reg)
    columns = {c.name: c.type for c in defs["item_features"].columns}
    assert columns["score"] == DoubleType() and columns["category"] == StringType()
    assert {c.name for c in defs["enriched_events"].columns} >= {"category", "popularity", "score"}
    assert list(feature_types(reg)) == ["category", "popularity", "embedding", "score"]


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["features"]["popularity"].update(type="decimal"),
     "features.popularity.type: 'decimal' is not a feature type; known: ['string', 'double'"),
    (lambda r: r["features"].pop("popularity"),
     "enrichments.item_popularity.fields: 'popularity' is not a registered item feature; add [features.popularity]"),
    (lambda r: r["features"]["category"].pop("type"), "features.category: missing required key(s) ['type']"),
])
def test_an_untyped_or_mistyped_feature_is_refused_naming_it(edit, message):
    assert message in error_of(edited(edit))


def test_the_api_fetch_window_is_the_length_or_twice_it_when_filters_can_drop_capped_by_retention():
    import dataclasses

    from usersignals.registry import Filters

    reg = load_registry()
    retention = {d: reg.datasets[d].retention for d in ("clicks", "repins")}
    plain = dataclasses.replace(reg.tenants["homefeed_ranking"], filters=Filters(dedup_items=False),
                                sequences={"clicks": 10, "repins": retention["repins"]})
    assert not plain.filtering
    assert reg.fetch_limits(plain) == {"clicks": 10, "repins": retention["repins"]}
    for filters in (Filters(dedup_items=True), Filters(dedup_items=False, surfaces=("home",)),
                    Filters(dedup_items=False, min_dwell_ms={"clicks": 1})):
        t = dataclasses.replace(plain, filters=filters)
        assert t.filtering
        assert reg.fetch_limits(t) == {"clicks": min(20, retention["clicks"]), "repins": retention["repins"]}
