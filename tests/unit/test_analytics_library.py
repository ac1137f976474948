"""The saved-query library: headers, typed parameters, and every query valid Trino SQL."""
import datetime as dt

import pytest
import sqlglot

from analytics.library import QueryError, load_library, parse_query

LIBRARY = load_library()


def test_the_library_answers_the_questions_analysts_ask():
    assert {"daily_active_users", "event_mix_by_surface", "sequence_length_distribution", "enrichment_coverage",
            "realtime_vs_offline", "dlq_reasons_over_time", "top_items_per_category", "end_to_end_lag",
            "session_funnel"} <= set(LIBRARY)
    for q in LIBRARY.values():
        assert q.title and q.answers, q.name
        for p in q.params:
            assert p.doc or p.default, (q.name, p.name)


@pytest.mark.parametrize("name", sorted(LIBRARY))
def test_every_query_parses_as_trino_and_transpiles_to_duckdb(name):
    sql = LIBRARY[name].render(today=dt.date(2026, 11, 20))
    tree = sqlglot.parse_one(sql, read="trino", error_level=sqlglot.ErrorLevel.RAISE)
    assert tree.find(sqlglot.exp.Select) is not None
    assert sqlglot.transpile(sql, read="trino", write="duckdb")


def test_parameters_are_typed_literals_not_text():
    q = LIBRARY["daily_active_users"]
    sql = q.render({"start_day": "2026-11-01", "end_day": "today+1"}, today=dt.date(2026, 11, 20))
    assert "DATE '2026-11-01'" in sql and "DATE '2026-11-21'" in sql
    with pytest.raises(QueryError, match="must be a date"):
        q.render({"start_day": "2026-11-01' OR 1=1 --"})
    with pytest.raises(QueryError, match="unknown parameter"):
        q.render({"nope": "1"})
    top = LIBRARY["top_items_per_category"]
    with pytest.raises(QueryError, match="must be a integer"):
        top.render({"top": "5; DROP TABLE raw_events"})
    assert "rank <= 3" in top.render({"top": "3"})


def test_string_parameters_are_quoted():
    q = parse_query("-- title: t\n-- param: who string = x   someone\nSELECT {{who}} AS w", "t")
    assert q.render({"who": "o'brien"}) == "SELECT 'o''brien' AS w"


def test_header_and_placeholders_must_agree():
    with pytest.raises(QueryError, match="differ"):
        parse_query("-- title: t\nSELECT {{a}}", "t")
    with pytest.raises(QueryError, match="title"):
        parse_query("SELECT 1", "t")
