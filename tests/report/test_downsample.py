"""Downsampling (sdxl_dist_log.report.downsample): fewer points, every stretch's extremes kept."""

from __future__ import annotations

import numpy as np
import pytest

from sdxl_dist_log.report.downsample import band_points, finite, grid, grid_edges, minmax_points


def test_short_lines_are_unchanged() -> None:
    xs, ys = np.arange(10.0), np.arange(10.0) ** 2
    out_x, out_y = minmax_points(xs, ys, max_points=10)
    assert out_x is xs and out_y is ys


def test_minmax_keeps_every_spike_and_the_order() -> None:
    rng = np.random.default_rng(0)
    xs = np.arange(100_000, dtype=float)
    ys = rng.normal(size=xs.size)
    ys[12_345] = 50.0  # a loss spike in one step
    ys[77_777] = -40.0
    out_x, out_y = minmax_points(xs, ys, max_points=2000)
    assert len(out_x) <= 2000
    assert np.all(np.diff(out_x) > 0), "points stay in step order"
    assert 12_345.0 in out_x and 50.0 in out_y and -40.0 in out_y
    # each bucket's own extremes survive: the envelope of the drawn line equals the data's, bucket by bucket
    buckets = np.array_split(np.arange(xs.size), 1000)
    for index in buckets[::97]:
        kept = out_y[(out_x >= xs[index[0]]) & (out_x <= xs[index[-1]])]
        assert kept.max() == ys[index].max() and kept.min() == ys[index].min()


def test_minmax_rejects_fewer_than_two_points() -> None:
    with pytest.raises(ValueError, match="max_points must be >= 2"):
        minmax_points(np.arange(5.0), np.arange(5.0), max_points=1)


def test_band_keeps_the_lowest_low_and_highest_high_per_bucket() -> None:
    xs = np.arange(10.0)
    lows = np.array([5.0, 4, 3, 2, 1, 1, 2, 3, 4, -9])
    highs = lows + 1
    highs[3] = 100.0
    bx, lo, hi = band_points(xs, lows, highs, max_points=2)
    assert bx.tolist() == [0.0, 5.0]
    assert lo.tolist() == [1.0, -9.0] and hi.tolist() == [100.0, 5.0]


def test_finite_drops_and_counts_nan_and_inf() -> None:
    xs, ys, dropped = finite(np.array([0.0, 1, 2, np.nan]), np.array([1.0, np.inf, 3.0, 4.0]))
    assert xs.tolist() == [0.0, 2.0] and ys.tolist() == [1.0, 3.0] and dropped == 2


def test_grid_keeps_the_worst_value_and_leaves_gaps() -> None:
    xs = np.array([0.1, 0.2, 0.9, 2.5, 9.0, np.nan])
    values = np.array([50.0, 0.0, 70.0, 30.0, 1.0, 5.0])
    edges = np.array([0.0, 1.0, 2.0, 3.0])
    assert grid(xs, values, edges, "min").tolist()[0] == 0.0  # a GPU that stalled once in the bucket
    assert grid(xs, values, edges, "max").tolist()[0] == 70.0
    out = grid(xs, values, edges, "max")
    assert np.isnan(out[1]) and out[2] == 30.0  # no sample: a gap; 9.0 lies outside and is dropped
    assert grid(np.array([3.0]), np.array([8.0]), edges, "max").tolist()[-1] == 8.0  # the last edge is inside
    with pytest.raises(ValueError, match="worst must be 'min' or 'max'"):
        grid(xs, values, edges, "mean")


def test_grid_edges_one_column_per_sample_despite_jitter() -> None:
    times = 100.0 + np.arange(50) * 0.5 + np.random.default_rng(1).uniform(-0.1, 0.1, 50)
    edges = grid_edges(float(times.min()), float(times.max()), 1000, 0.5)
    assert len(edges) == 51
    per_column = np.histogram(times, bins=edges)[0]
    assert per_column.tolist() == [1] * 50, "an early or late sample must not leave a gap beside a pair"


def test_grid_edges_caps_the_columns_and_handles_one_sample() -> None:
    edges = grid_edges(0.0, 10_000.0, 1000, 1.0)
    assert len(edges) == 1001 and edges[0] == 0.0 and edges[-1] == 10_000.0
    assert len(grid_edges(0.0, 1.0, 5)) == 6  # no spacing known: the cap
    single = grid_edges(7.0, 7.0, 1000, 2.0)
    assert single.tolist() == [6.0, 8.0]
