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
