"""Plotly figure dicts (sdxl_dist_log.report.figures): JSON-ready numbers, bands under lines, heatmaps, timeline."""

from __future__ import annotations

import json

import numpy as np

from sdxl_dist_log.report.figures import END_STYLES, aligned, heatmap, line_traces, numbers, timeline


def test_numbers_are_json_ready_and_short() -> None:
    assert numbers(np.array([0.0, 3.0, -2.0])) == [0, 3, -2]
    assert numbers(np.array([1234.56789, 0.5])) == [1234.57, 0.5]
    assert numbers(np.array([1.23456789e-5, np.nan, np.inf])) == [1.23457e-05, None, None]
    assert numbers(np.array([1.796e12 + 0.4, 1.796e12 + 500.6]), 13) == [1.796e12, 1.796000000501e12]  # ms
    assert numbers(np.array([])) == []
    json.dumps(numbers(np.array([np.nan, 1.5])), allow_nan=False)


def test_line_with_band_draws_the_band_first_and_counts_dropped_values() -> None:
    xs = np.arange(5.0)
    ys = np.array([1.0, np.nan, 3.0, np.inf, 5.0])
    band = (xs, ys - 1, ys + 1)
    traces, dropped = line_traces("loss", xs, ys, "#1f77b4", band)
    upper, lower, line = traces
    assert dropped == 2
    assert upper["y"] == [2, 4, 6] and lower["y"] == [0, 2, 4] and lower["fill"] == "tonexty"
    assert lower["fillcolor"] == "rgba(31,119,180,0.2)" and upper["hoverinfo"] == "skip"
    assert line["name"] == "loss" and line["x"] == [0, 2, 4] and line["y"] == [1, 3, 5]


def test_long_lines_are_cut_to_max_points() -> None:
    xs = np.arange(10_000.0)
    traces, _ = line_traces("x", xs, np.sin(xs), "#000000", (xs, np.sin(xs) - 1, np.sin(xs) + 1), max_points=500)
    assert all(len(t["x"]) <= 500 for t in traces)


def test_a_single_point_is_a_marker() -> None:
    (trace,), _ = line_traces("x", np.array([3.0]), np.array([1.0]), "#000000")
    assert trace["mode"] == "markers"


def test_aligned_keeps_the_steps_both_edges_logged() -> None:
    xs, a, b = aligned(np.array([0.0, 1, 2]), np.array([5.0, 6, 7]), np.array([2.0, 0]), np.array([9.0, 8]))
    assert xs.tolist() == [0.0, 2.0] and a.tolist() == [5.0, 7.0] and b.tolist() == [8.0, 9.0]
    assert [len(v) for v in aligned(np.array([1.0]), np.array([1.0]), np.array([2.0]), np.array([1.0]))] == [0] * 3


def test_heatmap_rows_labels_and_gaps() -> None:
    figure = heatmap("t", ["gpu0", "gpu1"], np.array([0.0, 1.0, 2.0]), [np.array([1.0, np.nan]),
                                                                          np.array([3.0, 4.0])], unit="%", zmid=1.0)
    (trace,) = figure["data"]
    assert trace["type"] == "heatmap" and trace["y"] == ["gpu0", "gpu1"] and trace["x"] == [0, 1, 2]
    assert trace["z"] == [[1, None], [3, 4]] and trace["zmid"] == 1.0 and trace["hoverongaps"] is False
    assert figure["layout"]["yaxis"]["autorange"] == "reversed"
    tall = heatmap("t", [f"r{i}" for i in range(1000)], np.array([0.0, 1.0]), [np.array([1.0])] * 1000)
    assert tall["layout"]["height"] < 1000, "a 1,000-rank heatmap stays on a screen"


def test_timeline_one_bar_and_one_end_marker_per_attempt() -> None:
    figure = timeline([
        {"label": "attempt 1", "start": 0, "end": 1000, "state": "preempted", "text": "a"},
        {"label": "attempt 2", "start": 2000, "end": 3000, "state": "killed", "text": "b"},
    ])
    bars = figure["data"][0::2]
    ends = figure["data"][1::2]
    assert [b["x"] for b in bars] == [[0, 1000], [2000, 3000]]
    assert [e["marker"]["symbol"] for e in ends] == [END_STYLES["preempted"][1], END_STYLES["killed"][1]]
    assert [e["text"] for e in ends] == [["preempted"], ["killed"]]
    assert figure["layout"]["xaxis"]["type"] == "date"
