"""What a maintenance run dropped is read back from the tables' properties, its own run's only
(batch.jobs.maintenance_dropped; the catalog is a stand-in: the reading is pure logic)."""
import datetime as dt
from types import SimpleNamespace

import pytest

from batch import jobs
from iceberg_schemas.tables import table_defs
from usersignals.registry import load_registry

AS_OF = dt.datetime(2026, 12, 2, 3, 30, tzinfo=dt.timezone.utc)
P = jobs.DROPPED_PROPERTIES


class Catalog:
    """Tables by identifier, each with its properties (what pyiceberg's load_table gives)."""

    def __init__(self, properties: dict[str, dict[str, str]]):
        self.properties = properties
        self.loaded: list[str] = []

    def load_table(self, ident: str):
        self.loaded.append(ident)
        return SimpleNamespace(properties=self.properties[ident])


def recorded(as_of: str, rows: int, files: int) -> dict[str, str]:
    return {P["as_of"]: as_of, P["rows"]: str(rows), P["files"]: str(files), "format-version": "2"}


@pytest.fixture(scope="module")
def defs():
    return table_defs(load_registry())


def test_each_table_with_a_retention_reports_what_this_run_dropped(defs):
    kept = [t for t, d in defs.items() if d.retention_days is None]
    dropping = [t for t, d in defs.items() if d.retention_days is not None]
    assert kept and len(dropping) >= 2
    # The same moment written with another offset is the same run.
    catalog = Catalog({f"ns.{dropping[0]}": recorded("2026-12-02T04:30:00+01:00", 1200, 4),
                       **{f"ns.{t}": recorded(AS_OF.isoformat(), 0, 0) for t in dropping[1:]}})
    got = jobs.maintenance_dropped(catalog, "ns", list(defs), defs, AS_OF)
    assert got == {dropping[0]: {"rows": 1200, "files": 4}, **{t: {"rows": 0, "files": 0} for t in dropping[1:]}}
    assert catalog.loaded == [f"ns.{t}" for t in dropping]   # a table without retention is not read


def test_another_runs_figures_are_refused_naming_the_table_and_both_moments(defs):
    table = next(t for t, d in defs.items() if d.retention_days is not None)
    catalog = Catalog({f"ns.{table}": recorded("2026-12-01T03:30:00+00:00", 7, 1)})
    with pytest.raises(RuntimeError, match=rf"ns\.{table} holds no figures of the maintenance run as of "
                                           r"2026-12-02T03:30:00\+00:00: .* is '2026-12-01T03:30:00\+00:00'"):
        jobs.maintenance_dropped(catalog, "ns", [table], defs, AS_OF)


def test_a_table_no_run_has_recorded_is_refused(defs):
    table = next(t for t, d in defs.items() if d.retention_days is not None)
    with pytest.raises(RuntimeError, match=rf"ns\.{table} holds no figures .* is None"):
        jobs.maintenance_dropped(Catalog({f"ns.{table}": {"format-version": "2"}}), "ns", [table], defs, AS_OF)
