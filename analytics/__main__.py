"""Analysts' command line over the lake (``analytics …`` or ``python -m analytics …``)::

    analytics list                                   the saved queries and their parameters
    analytics run daily_active_users --param start_day=today-3 [--format table|csv|json]
    analytics sql "SELECT event_type, count(*) FROM raw_events GROUP BY 1"
    analytics chart daily_active_users [--out dau.png]
    analytics show daily_active_users [--dialect duckdb]   the SQL as written (or as transpiled)

SQL is Trino's dialect. With ``USERSIGNALS_TRINO_HOST`` set it runs on that Trino server; else
on the local Trino if one answers at ``USERSIGNALS_BIND_HOST:USERSIGNALS_TRINO_PORT`` (``make trino``,
``make up TRINO=1``); otherwise on the embedded engine over the local lake. The engine that ran
is printed on stderr (and is a field of ``--format json``).
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import json
import sys
from pathlib import Path

from analytics.library import QueryError, load_library


def _params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise QueryError(f"--param {p!r}: expected name=value")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _json_default(v):
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)


def print_result(result, fmt: str, out=sys.stdout) -> None:
    if fmt == "json":
        json.dump({"engine": result.engine, "seconds": round(result.seconds, 3), "columns": result.columns,
                   "rows": result.records()}, out, default=_json_default)
        out.write("\n")
    elif fmt == "csv":
        w = csv.writer(out)
        w.writerow(result.columns)
        w.writerows(result.rows)
    else:
        cells = [[_cell(v) for v in r] for r in result.rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
        out.write("  ".join(c.ljust(w) for c, w in zip(result.columns, widths)).rstrip() + "\n")
        out.write("  ".join("-" * w for w in widths) + "\n")
        for r in cells:
            out.write("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
        out.write(f"({len(cells)} row{'s' if len(cells) != 1 else ''})\n")


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    return _json_default(v) if not isinstance(v, str) else v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="analytics", description="Trino SQL over the usersignals lake")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the saved queries")
    for name in ("run", "chart", "show"):
        sp = sub.add_parser(name)
        sp.add_argument("query")
        sp.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    sub.choices["run"].add_argument("--format", choices=["table", "csv", "json"], default="table")
    sub.choices["chart"].add_argument("--out", type=Path, default=None, help="PNG path (default <query>.png)")
    sub.choices["show"].add_argument("--dialect", choices=["trino", "duckdb"], default="trino")
    sq = sub.add_parser("sql", help="run ad hoc Trino SQL")
    sq.add_argument("sql")
    sq.add_argument("--format", choices=["table", "csv", "json"], default="table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    library = load_library()
    if args.cmd == "list":
        for q in library.values():
            params = ", ".join(f"{x.name}:{x.type}" + (f"={x.default}" if x.default else "") for x in q.params)
            print(f"{q.name:32s} {q.title}" + (f"  [{params}]" if params else ""))
        return 0
    try:
        if args.cmd == "sql":
            sql = args.sql
        else:
            if args.query not in library:
                print(f"unknown query {args.query!r}; see `analytics list`", file=sys.stderr)
                return 2
            query = library[args.query]
            sql = query.render(_params(args.param))
            if args.cmd == "show":
                from analytics.engine import to_duckdb

                print(sql if args.dialect == "trino" else to_duckdb(sql))
                return 0
    except QueryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from analytics.engine import engine_for
    from usersignals.settings import load_settings

    engine = engine_for(load_settings())
    try:
        result = engine.run(sql)
    except Exception as exc:  # a SQL error is the analyst's to fix: say it plainly
        print(f"error ({engine.name}): {exc}", file=sys.stderr)
        return 1
    finally:
        engine.close()
    print(f"engine: {result.engine}; {len(result.rows)} rows in {result.seconds:.3f}s", file=sys.stderr)
    if args.cmd == "chart":
        from analytics.charts import render_chart

        if query.chart is None:
            print(f"error: query {query.name!r} declares no chart", file=sys.stderr)
            return 2
        out = render_chart(result, query.chart, query.title, args.out or Path(f"{query.name}.png"))
        print(out)
        return 0
    print_result(result, args.format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
