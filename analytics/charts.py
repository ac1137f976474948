"""PNG charts of query results (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

from analytics.engine import Result
from analytics.library import ChartSpec


def render_chart(result: Result, spec: ChartSpec, title: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = {c: i for i, c in enumerate(result.columns)}
    missing = [c for c in (spec.x, *spec.y, *([spec.series] if spec.series else [])) if c not in cols]
    if missing:
        raise ValueError(f"chart needs columns {missing}; the result has {result.columns}")
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    # One line/bar group per (series value, y column).
    groups: dict[str, tuple[list, list]] = {}
    for row in result.rows:
        for y in spec.y:
            series = f"{row[cols[spec.series]]}" if spec.series else ""
            label = series + (f" {y}" if len(spec.y) > 1 or not spec.series else "")
            xs, ys = groups.setdefault(label.strip(), ([], []))
            xs.append(row[cols[spec.x]])
            ys.append(row[cols[y]])
    if spec.kind == "line":
        for label, (xs, ys) in groups.items():
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    elif spec.kind == "bar":
        cats = list(dict.fromkeys(r[cols[spec.x]] for r in result.rows))
        width = 0.8 / max(1, len(groups))
        for k, (label, (xs, ys)) in enumerate(groups.items()):
            pos = {x: v for x, v in zip(xs, ys)}
            ax.bar([i + k * width for i in range(len(cats))], [pos.get(c, 0) or 0 for c in cats], width, label=label)
        ax.set_xticks([i + width * (len(groups) - 1) / 2 for i in range(len(cats))], [str(c) for c in cats],
                      rotation=30, ha="right")
    else:
        raise ValueError(f"unknown chart kind {spec.kind!r}: line or bar")
    ax.set_title(title)
    ax.set_xlabel(spec.x)
    ax.set_ylabel(", ".join(spec.y))
    ax.grid(True, alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=8, ncols=2)
    fig.autofmt_xdate() if spec.kind == "line" else None
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
