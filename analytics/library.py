"""The saved-query library: one Trino-SQL file per question in ``analytics/queries/``.

Each file starts with a header of ``-- key: value`` lines::

    -- title: Daily active users by event type
    -- answers: How many distinct users performed each event type per day?
    -- param: start_day date = today-7   first day (inclusive, UTC)
    -- chart: line x=day y=users series=event_type

Parameters are ``{{name}}`` in the SQL; ``render`` substitutes them as typed SQL literals
(never as raw text), so a value cannot change the query's shape. Types: ``date`` (ISO date,
or ``today``, ``today-7``, ``today+1``), ``integer``, ``number``, ``string``. Tables are named
without catalog or schema (the engines resolve them to the lake's namespace).
"""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUERY_DIR = Path(__file__).parent / "queries"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")
_PARAM = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)\s+(?P<type>date|integer|number|string)"
                    r"(?:\s*=\s*(?P<default>\S+))?\s*(?P<doc>.*)$")


class QueryError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None
    doc: str

    def literal(self, raw: Any, today: dt.date | None = None) -> str:
        """The SQL literal for a value given as text (CLI) or a Python value."""
        try:
            if self.type == "date":
                return f"DATE '{parse_date(raw, today).isoformat()}'"
            if self.type == "integer":
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError(raw)
                return str(int(raw))
            if self.type == "number":
                value = float(raw)
                if value != value or value in (float("inf"), float("-inf")):
                    raise ValueError(raw)
                return repr(value)
            return "'" + str(raw).replace("'", "''") + "'"
        except (TypeError, ValueError):
            raise QueryError(f"parameter {self.name!r} must be a {self.type}, got {raw!r}") from None


def parse_date(raw: Any, today: dt.date | None = None) -> dt.date:
    if isinstance(raw, dt.date):
        return raw
    text = str(raw).strip()
    m = re.fullmatch(r"today(?:([+-])(\d+))?", text)
    if m:
        base = today or dt.datetime.now(dt.timezone.utc).date()
        delta = int(m.group(2) or 0) * (1 if m.group(1) != "-" else -1)
        return base + dt.timedelta(days=delta)
    return dt.date.fromisoformat(text)


@dataclass(frozen=True)
class ChartSpec:
    kind: str             # line | bar
    x: str
    y: tuple[str, ...]
    series: str | None = None


@dataclass(frozen=True)
class Query:
    name: str
    title: str
    answers: str
    params: tuple[Param, ...]
    sql: str
    chart: ChartSpec | None = None
    path: Path | None = field(default=None, compare=False)

    def render(self, values: dict[str, Any] | None = None, today: dt.date | None = None) -> str:
        """The query's Trino SQL with every parameter substituted as a typed literal."""
        values = dict(values or {})
        by_name = {p.name: p for p in self.params}
        unknown = sorted(set(values) - set(by_name))
        if unknown:
            raise QueryError(f"{self.name}: unknown parameter(s) {unknown}; known: {sorted(by_name)}")
        literals = {}
        for p in self.params:
            raw = values.get(p.name, p.default)
            if raw is None:
                raise QueryError(f"{self.name}: parameter {p.name!r} is required ({p.doc})")
            literals[p.name] = p.literal(raw, today)
        return _PLACEHOLDER.sub(lambda m: literals[m.group(1)], self.sql)


def parse_query(text: str, name: str, path: Path | None = None) -> Query:
    header: dict[str, list[str]] = {}
    body: list[str] = []
    last_key = None
    for line in text.splitlines():
        if not body and line.startswith("--"):
            content = line[2:].strip()
            m = re.match(r"^([a-z]+):\s*(.*)$", content)
            if m:
                last_key = m.group(1)
                header.setdefault(last_key, []).append(m.group(2))
            elif last_key and content:  # continuation line
                header[last_key][-1] += " " + content
        elif line.strip() or body:
            body.append(line)
    sql = "\n".join(body).strip().rstrip(";")
    if "title" not in header or not sql:
        raise QueryError(f"{name}: a query file needs a '-- title:' header and a SQL body")
    params = []
    for spec in header.get("param", []):
        m = _PARAM.match(spec)
        if not m:
            raise QueryError(f"{name}: bad param line {spec!r}; expected 'name type [= default] doc'")
        params.append(Param(m["name"], m["type"], m["default"], m["doc"].strip()))
    used = set(_PLACEHOLDER.findall(sql))
    declared = {p.name for p in params}
    if used != declared:
        raise QueryError(f"{name}: placeholders {sorted(used)} and declared params {sorted(declared)} differ")
    chart = None
    if header.get("chart"):
        parts = header["chart"][0].split()
        opts = dict(p.split("=", 1) for p in parts[1:])
        chart = ChartSpec(parts[0], opts["x"], tuple(opts["y"].split(",")), opts.get("series"))
    return Query(name, header["title"][0], " ".join(header.get("answers", [""])), tuple(params), sql, chart, path)


def load_library(directory: Path = QUERY_DIR) -> dict[str, Query]:
    return {p.stem: parse_query(p.read_text(), p.stem, p) for p in sorted(directory.glob("*.sql"))}
