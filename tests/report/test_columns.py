"""Rows -> columns and which chart a key lands in (sdxl_dist_log.report.columns)."""

from __future__ import annotations

import numpy as np

from sdxl_dist_log.report.columns import DeviceKey, collect_columns, device_key, metric_charts


def test_columns_hold_numbers_with_their_step_and_time() -> None:
    media = {"_type": "images/separated", "count": 1, "filenames": ["a.png"]}
    rows = [
        {"trainer/step": 0, "_step": 0, "_timestamp": 10.0, "metrics/loss": 1.5, "flag": True, "text": "x"},
        {"trainer/step": 1, "_step": 1, "_timestamp": 11.0, "metrics/loss": 1, "sample/images": media},
        {"_step": 2, "metrics/loss": float("nan")},  # a row without the step key or a timestamp
    ]
    columns = collect_columns(rows, "trainer/step")
    assert list(columns) == ["metrics/loss"], "W&B's own keys, the step key, bools, text and media are left out"
    loss = columns["metrics/loss"]
    assert loss.values.tolist()[:2] == [1.5, 1.0] and np.isnan(loss.values[2])
    assert loss.steps.tolist()[:2] == [0.0, 1.0] and np.isnan(loss.steps[2])
    assert loss.times.tolist()[:2] == [10.0, 11.0] and np.isnan(loss.times[2])


def test_device_keys_of_one_node_and_of_several() -> None:
    assert device_key("system/gpu3/utilization") == DeviceKey(None, "gpu", 3, "utilization")
    many = device_key("system/node12/gpu7/memory_used")
    assert many == DeviceKey(12, "gpu", 7, "memory_used") and many.label == "node12/gpu7"
    assert device_key("system/node1/rank5/memory_allocated").label == "node1/rank5"
    for other in ("system/all/gpu/utilization/mean", "system/node1/cpu/percent", "system/cpu/percent",
                  "metrics/gpu0/x", "system/gpux/utilization"):
        assert device_key(other) is None, other
    assert sorted([device_key("system/node1/gpu0/u"), device_key("system/node0/rank1/u"),
                   device_key("system/node0/gpu10/u"), device_key("system/node0/gpu2/u")],
                  key=lambda d: d.order) == [DeviceKey(0, "gpu", 2, "u"), DeviceKey(0, "gpu", 10, "u"),
                                             DeviceKey(0, "rank", 1, "u"), DeviceKey(1, "gpu", 0, "u")]


def test_min_max_keys_become_a_band_not_charts_of_their_own() -> None:
    groups = metric_charts(["metrics/loss", "metrics/loss_min", "metrics/loss_max", "metrics/lr",
                            "metrics/only_min"])
    charts = {c.title: c for c in groups["metrics"]}
    assert sorted(charts) == ["metrics/loss", "metrics/lr", "metrics/only_min"]
    assert charts["metrics/loss"].traces[0].band == ("metrics/loss_min", "metrics/loss_max")
    assert charts["metrics/lr"].traces[0].band is None


def test_system_aggregates_mean_with_min_max_are_one_banded_chart() -> None:
    keys = [f"system/all/gpu/utilization/{s}" for s in ("min", "mean", "max")] + ["system/all/gpu/count"]
    charts = {c.title: c for c in metric_charts(keys)["system"]}
    assert sorted(charts) == ["system/all/gpu/count", "system/all/gpu/utilization"]
    trace = charts["system/all/gpu/utilization"].traces[0]
    assert trace.key == "system/all/gpu/utilization/mean"
    assert trace.band == ("system/all/gpu/utilization/min", "system/all/gpu/utilization/max")


def test_per_rank_and_per_node_keys_share_a_chart_in_rank_order() -> None:
    keys = [f"metrics/tokens/rank{r}" for r in (10, 2, 0)] + ["system/node1/cpu/percent", "system/node0/cpu/percent"]
    groups = metric_charts(keys)
    (tokens,) = groups["metrics"]
    assert tokens.title == "metrics/tokens/rank*"
    assert [t.label for t in tokens.traces] == ["rank0", "rank2", "rank10"]
    (cpu,) = groups["system"]
    assert cpu.title == "system/node*/cpu/percent" and [t.label for t in cpu.traces] == ["node0", "node1"]


def test_groups_by_prefix_user_groups_before_system_device_and_straggler_keys_elsewhere() -> None:
    keys = ["zeta/a", "system/cpu/percent", "alpha/b", "loss", "system/gpu0/utilization",
            "straggler/data/score/rank0", "straggler/data/spread"]
    groups = metric_charts(keys)
    assert list(groups) == ["", "alpha", "zeta", "system"]
    assert [c.title for c in groups[""]] == ["loss"]
    assert [c.title for c in groups["system"]] == ["system/cpu/percent"]


def test_a_superseded_row_gives_only_its_wall_clock_gpu_figures() -> None:
    rows = [{"s": 5, "_timestamp": 1.0, "_superseded": True, "loss": 9.0, "system/gpu0/utilization": 80.0},
            {"s": 5, "_timestamp": 2.0, "loss": 1.0, "system/gpu0/utilization": 70.0}]
    columns = collect_columns(rows, "s")
    assert columns["loss"].values.tolist() == [1.0], "the redone step's value is the later attempt's"
    assert columns["system/gpu0/utilization"].times.tolist() == [1.0, 2.0]
