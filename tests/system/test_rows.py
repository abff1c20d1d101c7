"""Tests of sdxl_dist_log.system.rows: key naming, aggregates, row assembly and staleness, all pure."""

from __future__ import annotations

import pytest

from sdxl_dist_log.system.gpus import GpuIdentity
from sdxl_dist_log.system.rows import (
    NodeReport,
    RankReport,
    StalenessTracker,
    aggregate_figures,
    assemble_row,
    entity_key,
    node_figure_key,
)


@pytest.mark.parametrize(
    ("figure", "node", "multi", "expected"),
    [
        ("cpu/percent", 0, False, "system/cpu/percent"),
        ("memory/percent", 0, False, "system/memory/percent"),
        ("disk/percent", 3, True, "system/node3/disk/percent"),
        ("network/sent_bytes_per_s", 1, True, "system/node1/network/sent_bytes_per_s"),
    ],
)
def test_node_figure_key(figure: str, node: int, multi: bool, expected: str) -> None:
    assert node_figure_key(figure, node, multi_node=multi) == expected


@pytest.mark.parametrize(
    ("label", "figure", "node", "multi", "expected"),
    [
        ("gpu0", "utilization", 0, False, "system/gpu0/utilization"),
        ("gpu0", "memory_allocated", 0, False, "system/gpu0/memory_allocated"),
        ("gpu5", "utilization", 3, True, "system/node3/gpu5/utilization"),
        ("rank7", "memory_reserved", 1, True, "system/node1/rank7/memory_reserved"),
    ],
)
def test_entity_key(label: str, figure: str, node: int, multi: bool, expected: str) -> None:
    assert entity_key(label, figure, node, multi_node=multi) == expected


@pytest.mark.parametrize(
    ("entities", "expected"),
    [
        ([], {}),
        ([{"u": 4.0}], {"p/u/min": 4.0, "p/u/mean": 4.0, "p/u/max": 4.0}),
        ([{"u": 0.0}, {"u": 10.0}, {"u": 5.0}, {"u": 15.0}], {"p/u/min": 0.0, "p/u/mean": 7.5, "p/u/max": 15.0}),
        # a figure only some entities have is aggregated over those
        ([{"u": 1.0, "m": 2.0}, {"u": 3.0}], {"p/u/min": 1.0, "p/u/mean": 2.0, "p/u/max": 3.0,
                                              "p/m/min": 2.0, "p/m/mean": 2.0, "p/m/max": 2.0}),
        ([{"u": float("nan")}, {"u": 2.0}], {"p/u/min": 2.0, "p/u/mean": 2.0, "p/u/max": 2.0}),
    ],
)
def test_aggregate_figures(entities: list[dict[str, float]], expected: dict[str, float]) -> None:
    assert aggregate_figures(entities, "p") == expected


def _node(n: int, utils: list[float], host: str = "h") -> NodeReport:
    return NodeReport(
        n, host, [GpuIdentity(i, f"GPU-n{n}g{i}", None) for i in range(len(utils))],
        figures={"cpu/percent": 10.0 * (n + 1)},
        gpu_figures={i: {"utilization": u} for i, u in enumerate(utils)},
    )


def test_assemble_row_multi_node_keys_and_exact_aggregates() -> None:
    nodes = {0: _node(0, [0.0, 10.0]), 1: _node(1, [5.0, 15.0])}
    # CUDA device 0 of rank 0 is NVML GPU 1 (CUDA_VISIBLE_DEVICES=1,0): mapped by UUID, not by index
    ranks = [RankReport(0, 0, 2, 0, "n0g1", None, {"memory_allocated": 100.0}),
             RankReport(1, 0, 2, 1, "n0g0", None, {"memory_allocated": 300.0})]
    row = assemble_row(nodes, ranks, multi_node=True)
    assert row["system/node0/gpu0/utilization"] == 0.0
    assert row["system/node1/gpu1/utilization"] == 15.0
    assert row["system/node0/gpu1/memory_allocated"] == 100.0
    assert row["system/node0/gpu0/memory_allocated"] == 300.0
    assert row["system/node1/cpu/percent"] == 20.0
    assert (row["system/all/gpu/utilization/min"], row["system/all/gpu/utilization/mean"],
            row["system/all/gpu/utilization/max"]) == (0.0, 7.5, 15.0)
    assert row["system/all/gpu/memory_allocated/mean"] == 200.0
    assert row["system/all/cpu/percent/mean"] == 15.0
    assert row["system/all/gpu/count"] == 4.0
    assert row["system/stale_nodes"] == 0.0


def test_assemble_row_single_node_keys_have_no_node() -> None:
    row = assemble_row({0: _node(0, [42.0])}, [RankReport(0, 0, 1, 0, "n0g0", None, {"memory_allocated": 1.0})],
                       multi_node=False)
    assert row["system/gpu0/utilization"] == 42.0
    assert row["system/gpu0/memory_allocated"] == 1.0
    assert row["system/cpu/percent"] == 10.0
    assert not any(k.startswith("system/node0/") for k in row)


def test_assemble_row_aggregate_only_and_stale() -> None:
    row = assemble_row({0: _node(0, [1.0, 3.0])}, [], stale_nodes=[2], multi_node=True, aggregate_only=True)
    assert all(k.startswith(("system/all/", "system/stale", "system/node2/stale")) for k in row), sorted(row)
    assert row["system/node2/stale"] == 1.0
    assert row["system/stale_nodes"] == 1.0
    assert row["system/all/gpu/utilization/mean"] == 2.0


def test_assemble_row_keeps_only_the_jobs_gpus_when_ranks_name_them() -> None:
    # NVML sees 4 GPUs; the job's one rank uses NVML GPU 2: the other job's GPUs are not logged
    row = assemble_row({0: _node(0, [1.0, 2.0, 3.0, 4.0])}, [RankReport(0, 0, 1, 0, "GPU-n0g2", None, {})],
                       multi_node=False)
    assert [k for k in row if k.endswith("/utilization")] == ["system/gpu2/utilization"]


@pytest.mark.parametrize(
    ("lws", "cuda", "expected_label"),
    [(1, 0, "gpu0"), (1, 3, "gpu3"), (4, 0, "rank5")],  # several ranks may each call their device cuda:0
)
def test_rank_without_nvml_match_gets_a_non_colliding_label(lws: int, cuda: int, expected_label: str) -> None:
    node = NodeReport(0, "h", [])
    row = assemble_row({0: node}, [RankReport(5, 0, lws, cuda, "x", None, {"memory_allocated": 7.0})],
                       multi_node=False)
    assert row[f"system/{expected_label}/memory_allocated"] == 7.0


def test_staleness_is_judged_by_sequence_on_the_readers_clock() -> None:
    t = StalenessTracker(stale_after=3.0, started=100.0)
    assert not t.is_stale("a", 102.0)  # never seen, still within grace
    assert t.is_stale("a", 103.5)  # never seen, grace over
    t.observe("a", 1, 104.0)
    t.observe("a", 1, 106.0)  # same sequence: no progress, whatever the writer's wall clock says
    assert not t.is_stale("a", 106.9)
    assert t.is_stale("a", 107.1)
    t.observe("a", 2, 108.0)  # it came back
    assert not t.is_stale("a", 110.0)
