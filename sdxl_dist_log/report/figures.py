"""Plotly figures as plain dicts (``{"data": [...], "layout": {...}}``), ready for ``Plotly.newPlot``. Pure.

The figures are built as JSON-ready dicts rather than ``plotly.graph_objects``: no validation pass over tens of
thousands of numbers, no plotly import until the page is written, and tests can read every trace without it.
Numbers are rounded to the digits a chart can show (:func:`numbers`), NaN becomes ``null`` (a gap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sdxl_dist_log.report.downsample import MAX_LINE_POINTS, band_points, finite, minmax_points

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
"""Line colours, repeated in order (plotly's own default sequence, so bands can reuse a line's colour)."""
END_STYLES = {
    "finished": ("#2ca02c", "circle"),
    "preempted": ("#ff7f0e", "triangle-down"),
    "failed": ("#d62728", "x"),
    "killed": ("#d62728", "x"),
}
"""Colour and end-marker symbol of an attempt by how it ended."""
MARGIN = {"l": 56, "r": 16, "t": 34, "b": 40}
LINE_DIGITS = 5
"""Significant digits of a line's values: finer than a 260 px chart can show, and what hover text needs."""
MAX_ROWS_AT_FULL_HEIGHT = 48
"""Heatmap rows drawn 16 px high; more rows (a 1,000-GPU job) share the height of this many, to stay on a screen."""


def numbers(values: np.ndarray, digits: int = 6) -> list[Any]:
    """``values`` as a JSON-ready list: integers stay integers, floats keep ``digits`` significant digits (relative
    to the largest magnitude), NaN and infinities become None.

    Example:
        >>> numbers(np.array([1.0, 2.0])), numbers(np.array([0.1234567, float("nan")]), 3)
        ([1, 2], [0.123, None])
    """
    array = np.asarray(values, dtype=float)
    ok = np.isfinite(array)
    if ok.all() and np.all(array == np.round(array)) and (len(array) == 0 or np.abs(array).max() < 2**53):
        return array.astype(np.int64).tolist()
    top = float(np.abs(array[ok]).max()) if ok.any() else 0.0
    decimals = digits - 1 - (math.floor(math.log10(top)) if top > 0 else 0)
    rounded = np.round(array, max(decimals, 0)) if decimals >= 0 else np.round(array, decimals)
    return [v if keep else None for v, keep in zip(rounded.tolist(), ok.tolist())]


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def aligned(a_x: np.ndarray, a_y: np.ndarray, b_x: np.ndarray, b_y: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(xs, a values, b values)`` at the x both columns have (a band's edges: the rows that logged both).

    Example:
        >>> [v.tolist() for v in aligned(np.array([1.0, 2]), np.array([5.0, 6]), np.array([2.0]), np.array([9.0]))]
        [[2.0], [6.0], [9.0]]
    """
    if len(a_x) == len(b_x) and np.array_equal(a_x, b_x, equal_nan=True):
        return a_x, a_y, b_y
    other = dict(zip(b_x.tolist(), b_y.tolist()))
    pairs = [(x, y, other[x]) for x, y in zip(a_x.tolist(), a_y.tolist()) if x in other]
    if not pairs:
        empty = np.array([])
        return empty, empty, empty
    xs, lows, highs = (np.array(p, dtype=float) for p in zip(*pairs))
    return xs, lows, highs


def line_traces(
    label: str, xs: np.ndarray, ys: np.ndarray, color: str,
    band: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, max_points: int = MAX_LINE_POINTS,
) -> tuple[list[dict[str, Any]], int]:
    """The traces of one line (its band first, so the line draws on top), downsampled.

    Args:
        label: legend and hover name.
        xs: x of each value.
        ys: the values.
        color: ``#rrggbb``.
        band: ``(xs, lows, highs)`` of the band's edges, or None.
        max_points: most points per trace (see ``downsample``).

    Returns:
        ``(traces, dropped)``: plotly scatter traces, and how many non-finite values were left out.
    """
    traces: list[dict[str, Any]] = []
    if band is not None:
        bx, lows, highs = band
        keep = np.isfinite(bx) & np.isfinite(lows) & np.isfinite(highs)
        bx, lows, highs = band_points(bx[keep], lows[keep], highs[keep], max_points)
        common = {"type": "scatter", "mode": "lines", "x": numbers(bx), "line": {"width": 0, "color": color},
                  "hoverinfo": "skip", "showlegend": False, "legendgroup": label}
        traces.append({**common, "y": numbers(highs, LINE_DIGITS), "name": f"{label} max"})
        traces.append({**common, "y": numbers(lows, LINE_DIGITS), "name": f"{label} min", "fill": "tonexty",
                       "fillcolor": _rgba(color, 0.2)})
    fx, fy, dropped = finite(xs, ys)
    fx, fy = minmax_points(fx, fy, max_points)
    traces.append({"type": "scatter", "mode": "lines" if len(fx) > 1 else "markers", "name": label,
                   "legendgroup": label, "x": numbers(fx), "y": numbers(fy, LINE_DIGITS),
                   "line": {"width": 1.5, "color": color}, "marker": {"color": color}})
    return traces, dropped


def chart_layout(title: str, x_title: str, *, legend: bool, height: int = 280, date: bool = False
                 ) -> dict[str, Any]:
    """The layout of a small chart: title, axis titles, a legend below when several lines share it."""
    layout: dict[str, Any] = {
        "title": {"text": title, "font": {"size": 13}, "x": 0.01},
        "height": height,
        "margin": dict(MARGIN),
        "xaxis": {"title": {"text": x_title, "font": {"size": 11}}, "automargin": True},
        "yaxis": {"automargin": True},
        "showlegend": legend,
        "hovermode": "x unified" if not legend else "closest",
    }
    if date:
        layout["xaxis"]["type"] = "date"
    if legend:
        layout["legend"] = {"orientation": "h", "y": -0.3, "font": {"size": 10}}
        layout["height"] = height + 40
    return layout


def heatmap(
    title: str, labels: Sequence[str], edges: np.ndarray, rows: Sequence[np.ndarray], *, unit: str = "",
    date: bool = False, x_title: str = "", zmid: float | None = None, colorscale: Any = "Viridis",
    digits: int = 4,
) -> dict[str, Any]:
    """A heatmap figure: one row per label, columns bounded by ``edges``.

    Args:
        title: the chart title.
        labels: row labels, top to bottom.
        edges: ``columns + 1`` column edges (ms since the epoch when ``date``).
        rows: one array of ``columns`` values per label; NaN is a gap.
        unit: shown in hover text and the colour bar.
        date: the x axis is wall-clock time.
        x_title: the x axis title.
        zmid: the value at the colour scale's middle (1.0 for straggler scores), or None.
        colorscale: a plotly colour scale name or list.
        digits: significant digits kept.

    Returns:
        The figure; its height grows with the rows, up to :data:`MAX_ROWS_AT_FULL_HEIGHT` of them.
    """
    trace: dict[str, Any] = {
        "type": "heatmap", "x": numbers(edges, 13), "y": list(labels),
        "z": [numbers(row, digits) for row in rows], "colorscale": colorscale, "hoverongaps": False,
        "colorbar": {"title": {"text": unit, "side": "right"}, "thickness": 12},
        "hovertemplate": f"%{{y}}<br>%{{x}}<br>%{{z}} {unit}<extra></extra>",
    }
    if zmid is not None:
        trace["zmid"] = zmid
    rows_px = 16 * max(len(labels), 3) if len(labels) <= MAX_ROWS_AT_FULL_HEIGHT else 16 * MAX_ROWS_AT_FULL_HEIGHT
    layout = chart_layout(title, x_title, legend=False, height=90 + rows_px, date=date)
    layout["yaxis"] = {"autorange": "reversed", "automargin": True, "tickfont": {"size": 10}}
    return {"data": [trace], "layout": layout}


def timeline(attempts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The attempts of a run as bars on a wall-clock axis, each ending in a marker for how it ended.

    Args:
        attempts: dicts with ``label``, ``start`` and ``end`` (ms since the epoch), ``state`` (a key of
            :data:`END_STYLES`) and ``text`` (hover text).

    Returns:
        The figure.
    """
    data: list[dict[str, Any]] = []
    for attempt in attempts:
        color, symbol = END_STYLES.get(attempt["state"], ("#7f7f7f", "circle"))
        data.append({"type": "scatter", "mode": "lines", "x": [attempt["start"], attempt["end"]],
                     "y": [attempt["label"]] * 2, "line": {"width": 14, "color": _rgba(color, 0.55)},
                     "hoverinfo": "text", "text": attempt["text"], "showlegend": False})
        data.append({"type": "scatter", "mode": "markers+text", "x": [attempt["end"]], "y": [attempt["label"]],
                     "marker": {"symbol": symbol, "size": 14, "color": color, "line": {"width": 1}},
                     "text": [attempt["state"]], "textposition": "middle right", "hoverinfo": "text",
                     "hovertext": attempt["text"], "showlegend": False})
    layout = chart_layout("attempts", "wall-clock time", legend=False, height=90 + 36 * max(len(attempts), 2),
                          date=True)
    layout["yaxis"] = {"autorange": "reversed", "automargin": True}
    return {"data": data, "layout": layout}
