"""Fewer points than a run has, keeping what a screen must show: the extremes of every stretch. Pure numpy.

A chart a thousand pixels wide cannot show 100,000 points, and a browser slows down drawing them; but averaging them
would hide the one spike (a loss blow-up, a GPU at 0 %) a user opens the report to find. So:

* :func:`minmax_points` splits a line into equal-count buckets and keeps each bucket's lowest and highest point, in
  step order: the drawn line covers every value's envelope;
* :func:`band_points` does the same for a min/max band: each bucket's lowest low and highest high;
* :func:`grid` bins values into equal-width columns (a heatmap row) and keeps each column's *worst* value, the
  lowest or the highest as the caller says; a column with no value is NaN (a gap).
"""

from __future__ import annotations

import numpy as np

MAX_LINE_POINTS = 1000
"""Points kept per line: two per pixel column of the report's charts (about 450 px wide), what the lowest and the
highest value of each column need."""
MAX_GRID_COLUMNS = 1000
"""Columns kept per heatmap row."""


def finite(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop the points whose x or y is NaN or infinite.

    Args:
        xs: x values.
        ys: y values, the same length.

    Returns:
        ``(xs, ys, dropped)``: the finite points and how many were dropped.
    """
    keep = np.isfinite(xs) & np.isfinite(ys)
    return xs[keep], ys[keep], int(len(xs) - np.count_nonzero(keep))


def _bucket_starts(n: int, buckets: int) -> np.ndarray:
    return (np.arange(buckets, dtype=np.int64) * n) // buckets


def minmax_points(xs: np.ndarray, ys: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a line: each equal-count bucket's lowest and highest point, in order.

    Args:
        xs: x values in drawing order (steps), finite.
        ys: y values, finite, the same length.
        max_points: the most points returned (at least 2).

    Returns:
        ``(xs, ys)``, unchanged when short enough; else two points per bucket (one when a bucket's minimum and
        maximum are the same point), so the global minimum and maximum are always kept.

    Example:
        >>> x, y = minmax_points(np.arange(6.0), np.array([0.0, 5, 1, 1, -3, 2]), max_points=4)
        >>> x.tolist(), y.tolist()
        ([0.0, 1.0, 4.0, 5.0], [0.0, 5.0, -3.0, 2.0])
    """
    if max_points < 2:
        raise ValueError(f"max_points must be >= 2, got {max_points}")
    n = len(xs)
    if n <= max_points:
        return xs, ys
    buckets = max_points // 2
    starts = _bucket_starts(n, buckets)
    bucket = np.repeat(np.arange(buckets), np.diff(np.append(starts, n)))
    order = np.lexsort((ys, bucket))  # by bucket, then by value: a bucket's first is its min, its last its max
    ends = np.append(starts[1:], n) - 1
    picked = np.unique(np.concatenate([order[starts], order[ends]]))  # sorted indices: drawing order kept
    return xs[picked], ys[picked]


def band_points(
    xs: np.ndarray, lows: np.ndarray, highs: np.ndarray, max_points: int = MAX_LINE_POINTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """At most ``max_points`` points of a band: per equal-count bucket, its first x, lowest low and highest high.

    Args:
        xs: x values in order, finite.
        lows: lower edge, finite.
        highs: upper edge, finite.
        max_points: the most points returned.

    Returns:
        ``(xs, lows, highs)``, unchanged when short enough.

    Example:
        >>> x, lo, hi = band_points(np.arange(4.0), np.array([1.0, 0, 2, 3]), np.array([2.0, 5, 3, 4]), 2)
        >>> x.tolist(), lo.tolist(), hi.tolist()
        ([0.0, 2.0], [0.0, 2.0], [5.0, 4.0])
    """
    n = len(xs)
    if n <= max_points:
        return xs, lows, highs
    starts = _bucket_starts(n, max_points)
    return xs[starts], np.minimum.reduceat(lows, starts), np.maximum.reduceat(highs, starts)


def grid(
    xs: np.ndarray, values: np.ndarray, edges: np.ndarray, worst: str
) -> np.ndarray:
    """Bin ``values`` into the columns that ``edges`` bound, keeping each column's worst value.

    Args:
        xs: where each value lies (time or step); values outside the edges are dropped.
        values: the values; NaN ones are ignored.
        edges: ``columns + 1`` increasing column edges; a column holds ``edges[i] <= x < edges[i+1]`` (the last one
            includes its right edge).
        worst: ``"max"`` keeps the highest value of a column (temperature, memory), ``"min"`` the lowest
            (utilization, clocks).

    Returns:
        One float per column, NaN where the column holds no value.

    Raises:
        ValueError: ``worst`` is neither ``"min"`` nor ``"max"``.

    Example:
        >>> grid(np.array([0.0, 0.5, 2.5]), np.array([3.0, 1.0, 7.0]), np.array([0.0, 1, 2, 3]), "min").tolist()
        [1.0, nan, 7.0]
    """
    if worst not in ("min", "max"):
        raise ValueError(f"worst must be 'min' or 'max', got {worst!r}")
    columns = len(edges) - 1
    out = np.full(columns, np.nan)
    keep = np.isfinite(xs) & np.isfinite(values) & (xs >= edges[0]) & (xs <= edges[-1])
    if not keep.any() or columns < 1:
        return out
    index = np.clip(np.searchsorted(edges, xs[keep], side="right") - 1, 0, columns - 1)
    ufunc = np.fmax if worst == "max" else np.fmin
    ufunc.at(out, index, values[keep])  # fmax/fmin treat the NaN start value as missing
    return out


def grid_edges(start: float, stop: float, columns: int = MAX_GRID_COLUMNS, step: float | None = None) -> np.ndarray:
    """Equal-width column edges covering ``start`` to ``stop``: ``columns`` of them, or one per sample when samples
    ``step`` apart need fewer.

    Args:
        start: the lowest x.
        stop: the highest x (equal to start: one column).
        columns: the most columns.
        step: the usual spacing of the samples (the sampling interval, one logging interval in steps), or None.

    Returns:
        ``n + 1`` increasing edges, ``1 <= n <= columns``; the edges may reach half a column beyond the range.

    Example:
        >>> grid_edges(0.0, 10.0, columns=1000, step=2.0).tolist()
        [-1.0, 1.0, 3.0, 5.0, 7.0, 9.0, 11.0]
        >>> grid_edges(0.0, 10.0, columns=2).tolist()
        [0.0, 5.0, 10.0]
    """
    span = stop - start
    if span <= 0:
        half = (step or 1.0) / 2
        return np.array([start - half, start + half])
    if step and step > 0:
        samples = int(round(span / step)) + 1
        if samples <= columns:
            # One column per sample, centred on where the samples fall (spacing fitted to the span), so a sample
            # that comes a little early or late stays in its own column instead of leaving a gap beside a pair.
            width = span / (samples - 1)
            return start - width / 2 + np.arange(samples + 1) * width
    return np.linspace(start, stop, columns + 1)
