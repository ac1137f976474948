"""Event-selection rules and experiments: registry entries, rule resolution, the comparison's
window, report rows and chart (no Spark: the transforms run in tests/integration/test_selection.py)."""
import copy
import datetime as dt
import tomllib
import xml.etree.ElementTree as ET

import pytest

from batch import jobs, selection
from batch.__main__ import parser
from batch.charts import grouped_bars
from usersignals.registry import DEFAULT_REGISTRY_PATH, RegistryError, load_registry, parse_registry

RAW = tomllib.loads(DEFAULT_REGISTRY_PATH.read_text())
UTC = dt.timezone.utc


def with_experiment(**over):
    raw = copy.deepcopy(RAW)
    raw["experiments"] = {"dwell_test": {"dataset": "closeups", "rules": ["last", "dwell"], "n": 5,
                                         "ends": dt.date(2026, 12, 10), **over}}
    return raw


def error_of(raw):
    with pytest.raises(RegistryError) as info:
        parse_registry(raw)
    return str(info.value)


def test_the_default_registry_names_the_built_in_rules_importably():
    reg = load_registry()
    assert {"last", "dwell", "similarity"} <= set(reg.selection_rules)
    assert selection.resolve(reg, "dwell") is selection.dwell
    assert selection.resolve(reg, "last") is selection.last


def test_an_experiment_derives_one_servable_dataset_per_rule():
    reg = parse_registry(with_experiment())
    exp = reg.experiments["dwell_test"]
    assert [exp.dataset_of(r) for r in exp.rules] == ["exp_dwell_test_last", "exp_dwell_test_dwell"]
    ds = reg.datasets["exp_dwell_test_dwell"]
    assert (ds.event_type, ds.retention, ds.enrichments, ds.experiment, ds.ends) == (
        "closeup", 5, reg.datasets["closeups"].enrichments, "dwell_test", dt.date(2026, 12, 10))
    # not a stream dataset: the closeup events still go to closeups only
    assert reg.datasets_for("closeup") == (reg.datasets["closeups"],)
    assert "exp_dwell_test_dwell" not in reg.realtime_datasets()


def test_a_tenant_can_list_an_experiment_dataset_up_to_its_n():
    raw = with_experiment()
    raw["tenants"]["exp_reader"] = {"sequences": {"exp_dwell_test_dwell": 5, "closeups": 10}}
    assert parse_registry(raw).tenants["exp_reader"].sequences["exp_dwell_test_dwell"] == 5
    raw["tenants"]["exp_reader"]["sequences"]["exp_dwell_test_dwell"] = 6
    assert "over the maximum of 5" in error_of(raw)


def test_experiment_keys_expire_at_its_end_and_at_once_after_it():
    ds = parse_registry(with_experiment()).datasets["exp_dwell_test_last"]
    end = dt.datetime(2026, 12, 10, tzinfo=UTC).timestamp()
    assert ds.ttl_seconds(end - 3600) == 3600
    assert ds.ttl_seconds(end + 10) == 1
    assert load_registry().datasets["views"].ttl_seconds(0) == 30 * 86400


@pytest.mark.parametrize("over,fragment", [
    ({"rules": ["last", "longest"]}, "'longest' is not a registered selection rule"),
    ({"dataset": "likes"}, "'likes' is not a registered dataset"),
    ({"ends": "2026-12-10"}, "must be a TOML date"),
    ({"n": 0}, "must be a positive integer"),
    ({"rules": []}, "name at least one selection rule"),
])
def test_bad_experiments_are_refused_with_the_bad_value(over, fragment):
    assert fragment in error_of(with_experiment(**over))


@pytest.mark.parametrize("name,fragment", [("x" * 41, "at most 40 characters"), ("Dwell", "lowercase snake_case"),
                                           ("dwell-test", "lowercase snake_case")])
def test_experiment_names_are_those_the_select_job_accepts(name, fragment):
    raw = with_experiment()
    raw["experiments"] = {name: raw["experiments"]["dwell_test"]}
    assert fragment in error_of(raw)


def test_a_rule_function_must_be_module_colon_function():
    raw = copy.deepcopy(RAW)
    raw["selection_rules"]["oops"] = {"function": "batch.selection.dwell"}
    assert "'batch.selection.dwell' is not \"module:function\"" in error_of(raw)


def test_unknown_and_unimportable_rules_are_named():
    raw = copy.deepcopy(RAW)
    raw["selection_rules"]["gone"] = {"function": "batch.no_such_module:score"}
    raw["selection_rules"]["typo"] = {"function": "batch.selection:dwel"}
    reg = parse_registry(raw)
    with pytest.raises(selection.RuleError, match="unknown selection rule 'recent'.*'dwell'"):
        selection.resolve(reg, "recent")
    with pytest.raises(selection.RuleError, match="'gone': cannot import 'batch.no_such_module:score'"):
        selection.resolve(reg, "gone")
    with pytest.raises(selection.RuleError, match="'typo': cannot import 'batch.selection:dwel'"):
        selection.resolve(reg, "typo")


@pytest.mark.parametrize("as_of,scored", [
    ("2026-11-22T00:00:00+00:00", "2026-11-21"),    # a daily run at midnight: yesterday is complete
    ("2026-11-22T18:30:00+00:00", "2026-11-21"),    # mid-day: today is not
    ("2026-11-22T01:00:00+02:00", "2026-11-20"),    # 23:00 UTC on the 21st: the 21st is not over
])
def test_the_scored_day_is_the_last_complete_utc_day_and_the_window_precedes_it(as_of, scored):
    moment = dt.datetime.fromisoformat(as_of)
    w = jobs.SelectionWindow.before(moment, 3)
    assert str(w.eval_day) == scored
    assert w.end == dt.datetime.combine(w.eval_day, dt.time(), tzinfo=UTC)
    assert w.start == w.end - dt.timedelta(days=3)
    assert w.end + dt.timedelta(days=1) <= moment  # the scored day is over at as_of


def test_report_rows_put_lifts_relative_to_last_and_zero_for_unmeasured_rules():
    w = jobs.SelectionWindow.before(dt.datetime(2026, 11, 22, tzinfo=UTC), 2)
    measured = {"last": {"recall_at_k": 0.25, "ndcg_at_k": 0.5}, "dwell": {"recall_at_k": 0.5, "ndcg_at_k": 0.25}}
    now = dt.datetime(2026, 11, 22, 6, tzinfo=UTC)
    rows = jobs.selection_report("e", "clicks", 2, w, ["last", "dwell", "odd"], measured, 4, {"dwell": 1.5}, now)
    by_rule = {r[1]: r for r in rows}
    assert by_rule["dwell"][8:14] == (0.5, 0.25, "last", 1.0, -0.5, 1.5)
    assert by_rule["last"][11:13] == (0.0, 0.0)
    assert by_rule["odd"][8:13] == (0.0, 0.0, "last", -1.0, -1.0)
    assert rows[0][4:8] == (dt.datetime(2026, 11, 19, tzinfo=UTC), dt.datetime(2026, 11, 21, tzinfo=UTC),
                            "2026-11-21", 4)


def test_a_zero_baseline_leaves_the_lift_undefined():
    w = jobs.SelectionWindow.before(dt.datetime(2026, 11, 22, tzinfo=UTC), 1)
    rows = jobs.selection_report("e", "clicks", 2, w, ["last", "dwell"],
                                 {"dwell": {"recall_at_k": 0.5, "ndcg_at_k": 0.5}}, 1, {}, w.end)
    assert rows[1][11:13] == (None, None)


def test_the_chart_is_svg_with_one_bar_per_rule_and_metric():
    svg = grouped_bars("Rules <compared>", ["last", "dwell"], {"recall@2": [0.25, 0.5], "NDCG@2": [0.5, 0.75]})
    root = ET.fromstring(svg)
    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.find("{http://www.w3.org/2000/svg}title")
            is not None]
    assert [b.find("{http://www.w3.org/2000/svg}title").text for b in bars] == [
        "last recall@2: 0.2500", "last NDCG@2: 0.5000", "dwell recall@2: 0.5000", "dwell NDCG@2: 0.7500"]
    heights = [float(b.get("height")) for b in bars]
    assert heights[3] == max(heights) and heights[0] == pytest.approx(heights[3] / 3, abs=0.1)
    with pytest.raises(ValueError, match="series 'x' has 1 values for 2 groups"):
        grouped_bars("t", ["a", "b"], {"x": [1.0]})


def test_rule_keeps_working_as_a_one_rule_list():
    base = ["select", "--experiment", "x", "--dataset", "clicks", "--n", "3", "--as-of", "2026-11-22T00:00:00+00:00"]
    assert parser().parse_args(base + ["--rule", "dwell"]).rules == ["dwell"]
    assert parser().parse_args(base + ["--rules", "dwell, similarity"]).rules == ["dwell", "similarity"]
    with pytest.raises(SystemExit):
        parser().parse_args(base)
    assert parser().parse_args(["select-cleanup", "--as-of", "2026-11-22T00:00:00+00:00"]).job == "select-cleanup"
