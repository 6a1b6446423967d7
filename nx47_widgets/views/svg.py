"""Inline SVG / HTML charts (no plotting dependency)."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from nx47_widgets.views.base import fmt, h

__all__ = ["svg_line_chart", "svg_bar_chart", "grid_table"]


def svg_line_chart(points: Sequence[tuple[float, float]], *, title: str,
                   width: int = 320, height: int = 160, log_y: bool = False,
                   empty: str = "no data yet") -> str:
    """A small SVG line chart with min/max labels.

    Parameters
    ----------
    points : sequence of (float, float)
        ``(x, y)`` points; non-finite ones (and y <= 0 with ``log_y``) are left out.
    title : str
    width, height : int
        Size in pixels.
    log_y : bool
        Logarithmic y axis.
    empty : str
        What the chart says without points.

    Returns
    -------
    str
        HTML: the title and the ``<svg>``.
    """
    pts = [(float(x), float(y)) for x, y in points
           if math.isfinite(x) and math.isfinite(y) and (not log_y or y > 0)]
    head = f"<div style='font-size:12px'><b>{h(title)}</b></div>"
    if len(pts) < 1:
        return head + f"<div class='nx47-empty' style='color:#888;font-size:12px;width:{width}px'>" \
                      f"{h(empty)}</div>"
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    xs = [p[0] for p in pts]
    ys = [fy(p[1]) for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = 24
    sx = (width - 2 * pad) / ((x1 - x0) or 1.0)
    sy = (height - 2 * pad) / ((y1 - y0) or 1.0)
    coords = " ".join(f"{pad + (x - x0) * sx:.1f},{height - pad - (y - y0) * sy:.1f}"
                      for x, y in zip(xs, ys))
    lo, hi = min(p[1] for p in pts), max(p[1] for p in pts)
    dots = "" if len(pts) > 40 else "".join(
        f"<circle cx='{c.split(',')[0]}' cy='{c.split(',')[1]}' r='2.5' fill='#1565c0'/>"
        for c in coords.split())
    return head + (
        f"<svg width='{width}' height='{height}' style='background:#fafafa'>"
        f"<polyline fill='none' stroke='#1565c0' stroke-width='1.5' points='{coords}'/>{dots}"
        f"<text x='2' y='{pad - 6}' font-size='10' fill='#555'>{hi:.4g}</text>"
        f"<text x='2' y='{height - 4}' font-size='10' fill='#555'>{lo:.4g}</text>"
        f"<text x='{width - 60}' y='{height - 4}' font-size='10' fill='#555'>n={len(pts)}</text>"
        f"</svg>")


def svg_bar_chart(values: dict[str, float], *, title: str, width: int = 320,
                  bar_h: int = 14, empty: str = "no data yet") -> str:
    """Horizontal bars of values in [0, 1] (e.g. per-volume scores) and their mean.

    Parameters
    ----------
    values : dict of str to float
        Label -> value; the last 40 are drawn.
    title : str
    width, bar_h : int
        Chart width and bar height in pixels.

    Returns
    -------
    str
        HTML.
    """
    head = f"<div style='font-size:12px'><b>{h(title)}</b></div>"
    if not values:
        return head + f"<div class='nx47-empty' style='color:#888;font-size:12px'>{h(empty)}</div>"
    items = list(values.items())[-40:]
    height = bar_h * len(items) + 4
    rows = []
    for i, (k, v) in enumerate(items):
        w = max(0.0, min(1.0, v)) * (width - 140)
        y = 2 + i * bar_h
        rows.append(f"<text x='0' y='{y + bar_h - 3}' font-size='10'>{h(k)[:14]}</text>"
                    f"<rect x='90' y='{y}' width='{w:.1f}' height='{bar_h - 3}' fill='#2e7d32'/>"
                    f"<text x='{94 + w:.1f}' y='{y + bar_h - 3}' font-size='10'>{v:.3f}</text>")
    mean = sum(values.values()) / len(values)
    return head + f"<svg width='{width}' height='{height}'>{''.join(rows)}</svg>" \
        f"<div style='font-size:11px'>mean {mean:.3f} over {len(values)} volumes</div>"


def grid_table(trials: Iterable[dict[str, Any]], limit: int = 12, empty: str = "no data yet") -> str:
    """HTML table of hyper-parameter grid points, best first.

    Parameters
    ----------
    trials : iterable of dict
        Grid points as :class:`~nx47_widgets.state.charts.ChartState` keeps them.
    limit : int
        Rows shown.

    Returns
    -------
    str
        HTML.
    """
    trials = sorted(trials, key=lambda t: -t["value"])
    if not trials:
        return "<div style='font-size:12px'><b>Hyper-parameter grid</b></div>" \
               f"<div class='nx47-empty' style='color:#888;font-size:12px'>{h(empty)}</div>"
    keys = [k for k in trials[0] if k not in ("name", "value", "n", "final")][:5]
    best = max(t["value"] for t in trials)
    head = "".join(f"<th>{h(k)}</th>" for k in keys) + "<th>score</th>"
    rows = []
    for t in trials[:limit]:
        style = " style='font-weight:bold;color:#2e7d32'" if t["value"] == best else ""
        cells = "".join(f"<td>{h(fmt(t.get(k, '')))}</td>" for k in keys)
        rows.append(f"<tr{style}>{cells}<td>{t['value']:.4f}</td></tr>")
    return (f"<div style='font-size:12px'><b>Hyper-parameter grid</b> "
            f"({len(trials)} points, best first)</div>"
            f"<table style='font-size:11px'><tr>{head}</tr>{''.join(rows)}</table>")
