"""The chart sections (sdxl_dist_log.report.charts) on hand-made rows: what each chart holds, and empty runs."""

from __future__ import annotations

import re

import pytest

from sdxl_dist_log.report.charts import MAX_TRACES, gpus_section, metrics_section, stragglers_section, system_section
from sdxl_dist_log.report.columns import collect_columns


def chart_ids(body: str) -> list[str]:
    return re.findall(r'<div class="chart[^"]*" id="([^"]+)">', body)


def gpu_rows(samples: int = 20, nodes: int = 2, gpus: int = 2) -> list[dict]:
    rows = []
    for i in range(samples):
        row = {"trainer/step": i, "_timestamp": 1000.0 + 10 * i}
        for n in range(nodes):
            for g in range(gpus):
                row[f"system/node{n}/gpu{g}/utilization"] = 0.0 if (n, g, i) == (1, 1, 7) else 90.0
                row[f"system/node{n}/gpu{g}/temperature"] = 60.0 + n + g
        rows.append(row)
    return rows


def test_metrics_section_one_chart_per_key_band_and_every_div_has_its_figure() -> None:
    rows = [{"trainer/step": s, "metrics/loss": 1.0 / (s + 1), "metrics/loss_min": 0.5 / (s + 1),
             "metrics/loss_max": 2.0 / (s + 1), "metrics/lr": 0.1, "system/cpu/percent": 5.0} for s in range(50)]
    section = metrics_section(collect_columns(rows, "trainer/step"), "trainer/step")
    assert not section.empty and section.id == "metrics"
    assert chart_ids(section.body) == list(section.figures)
    titles = [f["layout"]["title"]["text"] for f in section.figures.values()]
    assert titles == ["metrics/loss", "metrics/lr"], "system figures have a section of their own"
    loss = next(iter(section.figures.values()))
    assert [t.get("fill") for t in loss["data"]] == [None, "tonexty", None]
    assert loss["data"][2]["x"] == list(range(50)) and loss["layout"]["xaxis"]["title"]["text"] == "trainer/step"
    assert "<h3>metrics</h3>" in section.body and "tickformat" not in loss["layout"]["yaxis"]
    lr = list(section.figures.values())[1]
    assert lr["layout"]["yaxis"]["range"] == pytest.approx([0.05, 0.15]), "a constant 0.1 is on an axis around 0.1"


def test_system_section_aggregates_as_bands_and_nodes_as_lines() -> None:
    rows = [{"s": s, "system/all/gpu/memory_used/min": 1e9, "system/all/gpu/memory_used/mean": 2e9,
             "system/all/gpu/memory_used/max": 3e9, "system/node0/cpu/percent": 10.0,
             "system/node1/cpu/percent": 20.0, "metrics/loss": 1.0}
            for s in range(5)]
    section = system_section(collect_columns(rows, "s"), "s")
    assert chart_ids(section.body) == list(section.figures) and section.id == "system"
    memory, cpu = section.figures.values()
    assert memory["layout"]["title"]["text"] == "system/all/gpu/memory_used"
    assert [t["y"][0] for t in memory["data"]] == [3e9, 1e9, 2e9] and memory["layout"]["yaxis"]["tickformat"]
    assert cpu["layout"]["title"]["text"] == "system/node*/cpu/percent"
    assert [t["name"] for t in cpu["data"]] == ["node0", "node1"] and cpu["layout"]["showlegend"]
    with_gpus = [{**row, "system/node0/gpu0/utilization": 5.0} for row in rows]
    (cpu_only,) = system_section(collect_columns(with_gpus, "s"), "s").figures.values()
    assert cpu_only["layout"]["title"]["text"] == "system/node*/cpu/percent", "the heatmaps show the GPU figures"
    empty = system_section(collect_columns([{"s": 0, "metrics/loss": 1.0}], "s"), "s")
    assert empty.empty and "no node or cluster-wide system figures" in empty.body


def test_metrics_section_says_what_it_left_out() -> None:
    rows = [{"s": 0, **{f"m/x/rank{r}": float(r) for r in range(MAX_TRACES + 6)}}, {"s": 1, "m/y": float("nan")},
            {"s": 2, "m/y": 1.0}]
    section = metrics_section(collect_columns(rows, "s"), "s")
    titles = [f["layout"]["title"]["text"] for f in section.figures.values()]
    assert titles == [f"m/x/rank* (first {MAX_TRACES} of {MAX_TRACES + 6} lines)", "m/y (m/y: 1 NaN/inf not drawn)"]


def test_metrics_section_of_a_run_without_metrics_says_so() -> None:
    section = metrics_section(collect_columns([{"s": 1, "system/gpu0/utilization": 5.0}], "s"), "s")
    assert section.empty and section.figures == {} and "no numeric metrics" in section.body


def test_gpu_heatmaps_one_row_per_node_and_gpu_keeping_the_worst_sample() -> None:
    section = gpus_section(collect_columns(gpu_rows(), "trainer/step"), {"node0": "host-a", "node1": "host-b"})
    util, temp = section.figures.values()
    (trace,) = util["data"]
    assert trace["y"] == ["node0/gpu0 (host-a)", "node0/gpu1 (host-a)", "node1/gpu0 (host-b)", "node1/gpu1 (host-b)"]
    assert len(trace["z"][0]) == 20, "20 samples 10 s apart: one column each"
    assert trace["z"][3][7] == 0 and set(trace["z"][3][:7]) == {90}, "the one stalled sample shows"
    assert temp["data"][0]["z"][3][0] == 62
    assert util["layout"]["xaxis"]["type"] == "date" and trace["x"][0] == 995_000, "ms since the epoch"
    assert "4 GPUs, 20 time buckets of 10 s" in section.body


def test_gpu_heatmaps_bucket_long_runs_and_keep_the_stall() -> None:
    section = gpus_section(collect_columns(gpu_rows(samples=3000), "trainer/step"), max_columns=100)
    util = next(iter(section.figures.values()))["data"][0]
    assert len(util["z"][3]) == 100 and util["z"][3].count(0) == 1 and min(util["z"][0]) == 90


def test_gpu_memory_panel_takes_the_first_figure_the_run_has() -> None:
    rows = [{"_timestamp": float(t), "system/gpu0/memory_allocated": 2.0 * 2**30} for t in range(3)]
    section = gpus_section(collect_columns(rows, "s"))
    (figure,) = section.figures.values()
    assert "memory_allocated" in figure["layout"]["title"]["text"] and figure["data"][0]["z"] == [[2, 2, 2]]
    assert figure["data"][0]["y"] == ["gpu0"]


def test_gpu_section_without_gpu_rows_says_so() -> None:
    section = gpus_section(collect_columns([{"s": 1, "metrics/loss": 1.0}], "s"))
    assert section.empty and "no per-GPU system rows" in section.body
    odd = gpus_section(collect_columns([{"_timestamp": 1.0, "system/gpu0/fan_speed": 1.0}], "s"))
    assert odd.empty and "fan_speed" in odd.body


def test_straggler_section_heatmap_per_section_and_the_slowest_rank_named_with_its_place() -> None:
    rows = []
    for step in range(0, 100, 10):
        slow = 1 if step >= 30 else 0
        scores = {r: (2.5 if r == slow else 1.0) for r in range(3)}
        rows.append({"trainer/step": step, **{f"straggler/data/score/rank{r}": s for r, s in scores.items()},
                     "straggler/data/slowest_rank": slow, "straggler/data/spread": 2.5})
    config = {"sdxl_dist_log": {"ranks": {"1": {"host": "node-b", "gpu": 5}}}}
    section = stragglers_section(collect_columns(rows, "trainer/step"), config, "trainer/step")
    assert not section.empty and chart_ids(section.body) == list(section.figures)
    heat, spread = section.figures.values()
    trace = heat["data"][0]
    assert trace["y"] == ["rank 0", "rank 1 (node-b/gpu5)", "rank 2"] and trace["zmid"] == 1.0
    assert len(trace["z"][0]) == 10 and trace["z"][1][3:] == [2.5] * 7
    assert spread["data"][0]["y"] == [2.5] * 10
    assert "<b>rank 1</b></td><td>node-b/gpu5</td><td>7 of 10</td><td>2.5</td><td>2.5</td>" in section.body
    assert "intervals slowest" in section.body


def test_straggler_section_of_a_run_without_a_slow_rank_names_none() -> None:
    rows = [{"s": step, "straggler/data/score/rank0": 1.0, "straggler/data/score/rank1": 1.0,
             "straggler/data/slowest_rank": 0, "straggler/data/spread": 1.0} for step in range(5)]
    section = stragglers_section(collect_columns(rows, "s"), {}, "s")
    assert "none (every interval within 1.05x)</td><td>-</td><td>0 of 5</td>" in section.body
    assert "<b>rank" not in section.body


def test_straggler_section_of_a_run_without_scores_says_so() -> None:
    section = stragglers_section(collect_columns([{"s": 0, "metrics/loss": 1.0}], "s"), {}, "s")
    assert section.empty and section.figures == {} and "no straggler scores" in section.body
