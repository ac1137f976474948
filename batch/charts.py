"""Small SVG charts of the jobs' reports, written next to their tables (no plotting library:
a bar chart is a few rectangles, and a dependency on the executors for it is not worth it)."""
from __future__ import annotations

from html import escape
from typing import Mapping, Sequence

COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759")


def grouped_bars(title: str, groups: Sequence[str], series: Mapping[str, Sequence[float]],
                 subtitle: str = "", width: int = 640, height: int = 360) -> str:
    """An SVG bar chart: one group of bars per ``groups`` entry (e.g. a rule), one bar per
    series (e.g. recall@k, NDCG@k), values from 0 to the largest (at least 1e-9), each labelled."""
    names = list(series)
    for name, values in series.items():
        if len(values) != len(groups):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(groups)} groups")
    top = max([v for vs in series.values() for v in vs] + [1e-9])
    left, right, head, foot = 50, 20, 60, 50
    plot_w, plot_h = width - left - right, height - head - foot
    group_w = plot_w / max(1, len(groups))
    bar_w = group_w * 0.8 / max(1, len(names))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text x="{left}" y="40" fill="#555">{escape(subtitle)}</text>',
           f'<line x1="{left}" y1="{head + plot_h}" x2="{left + plot_w}" y2="{head + plot_h}" stroke="#333"/>']
    for gi, group in enumerate(groups):
        x0 = left + gi * group_w + group_w * 0.1
        for si, name in enumerate(names):
            v = float(series[name][gi])
            h = plot_h * v / top
            x, y = x0 + si * bar_w, head + plot_h - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w * 0.9:.1f}" height="{h:.1f}" '
                       f'fill="{COLORS[si % len(COLORS)]}"><title>{escape(group)} {escape(name)}: {v:.4f}'
                       f'</title></rect>')
            out.append(f'<text x="{x + bar_w * 0.45:.1f}" y="{y - 4:.1f}" text-anchor="middle">{v:.3f}</text>')
        out.append(f'<text x="{left + (gi + 0.5) * group_w:.1f}" y="{head + plot_h + 18}" '
                   f'text-anchor="middle">{escape(group)}</text>')
    for si, name in enumerate(names):
        x = left + si * 130
        out.append(f'<rect x="{x}" y="{height - 22}" width="12" height="12" fill="{COLORS[si % len(COLORS)]}"/>')
        out.append(f'<text x="{x + 16}" y="{height - 12}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
