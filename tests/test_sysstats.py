"""Tests of sdxl_dist_log.sysstats: pure key/aggregation functions, the samplers with a fake NVML, a single process
on a HashStore, and real processes (gloo, the default store) simulating two nodes."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log import sysstats
from sdxl_dist_log.launch.ports import free_port
from sdxl_dist_log.ranks import RankInfo
from sdxl_dist_log.sysstats import (
    GpuIdentity,
    NodeReport,
    RankReport,
    StalenessTracker,
    SystemMetrics,
    aggregate_figures,
    assemble_row,
    decode_node_sample,
    decode_rank_sample,
    encode_node_sample,
    encode_rank_sample,
    entity_key,
    load_nvml,
    match_gpu,
    node_figure_key,
    normalize_pci_bus_id,
    normalize_uuid,
)
from sdxl_dist_log.testing.fake_nvml import (
    GIB,
    MIB,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeNvml,
    parse_fake_nvml_spec,
)

pytestmark = pytest.mark.timeout(60)

SEED_KEYS = (
    "system/gpu0/utilization",
    "system/gpu0/memory_allocated",
    "system/gpu0/memory_reserved",
    "system/cpu/percent",
    "system/memory/percent",
    "system/disk/percent",
)


# ----------------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------------
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


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("GPU-5a0cA1b2-0000", "5a0ca1b2-0000"),
        (b"GPU-abc\x00", "abc"),
        ("abc", "abc"),
        ("MIG-xyz", "xyz"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_uuid(raw: Any, expected: str | None) -> None:
    assert normalize_uuid(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"00000000:19:00.0", "0000:19:00"),  # NVML, bytes
        ("00000000:AB:00.0", "0000:ab:00"),
        ("0000:ab:00", "0000:ab:00"),  # torch's pci_domain/bus/device formatted
        ("19:00.0", "0000:19:00"),
        ("not a bus id", None),
        (None, None),
    ],
)
def test_normalize_pci_bus_id(raw: Any, expected: str | None) -> None:
    assert normalize_pci_bus_id(raw) == expected


GPUS = [GpuIdentity(0, "GPU-aaaa", "00000000:10:00.0"), GpuIdentity(1, "GPU-bbbb", "00000000:11:00.0")]


@pytest.mark.parametrize(
    ("uuid", "pci", "expected"),
    [
        ("bbbb", None, 1),  # torch omits the GPU- prefix
        ("GPU-AAAA", None, 0),
        (None, "0000:11:00", 1),  # PCI when the UUID is unknown
        ("cccc", "0000:10:00", 0),  # UUID unknown to NVML (e.g. MIG): fall back to PCI
        ("cccc", None, None),
        (None, None, None),
    ],
)
def test_match_gpu_by_uuid_or_pci(uuid: str | None, pci: str | None, expected: int | None) -> None:
    assert match_gpu(uuid, pci, GPUS) == expected


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


def test_assemble_row_single_node_uses_seed_keys() -> None:
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


def test_wire_round_trip_and_linear_size() -> None:
    nv = FakeNvml(gpus=8)
    sampler = sysstats.NvmlSampler(nv, logging.getLogger("t"))
    gpus = sampler.sample()
    raw = encode_node_sample(7, 1.5, {"cpu/percent": 12.5}, gpus)
    seq, wall, node, back = decode_node_sample(raw)
    assert (seq, wall, node) == (7, 1.5, {"cpu/percent": 12.5})
    assert back[3]["utilization"] == 30.0 and back[3]["memory_used"] == 4 * GIB
    sizes = [len(encode_node_sample(1, 1.0, {}, sysstats.NvmlSampler(FakeNvml(gpus=n), logging.getLogger("t")).sample()))
             for n in (1, 2, 4)]
    assert sizes[2] - sizes[1] == pytest.approx(2 * (sizes[1] - sizes[0]), rel=0.1)  # linear in GPUs
    assert sizes[1] - sizes[0] < 200  # bytes per extra GPU
    assert decode_rank_sample(encode_rank_sample(3, 2.0, {"memory_allocated": 5.0})) == (3, 2.0,
                                                                                         {"memory_allocated": 5.0})


# ----------------------------------------------------------------------------------------------------------------------
# Fake NVML, NVML loading, samplers
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gpus=2", {"gpus": 2}),
        ("4", {"gpus": 4}),
        ("gpus=2, offset=5", {"gpus": 2, "offset": 5}),
        ("gpus=1,fail=nvmlDeviceGetTotalEccErrors+nvmlDeviceGetPowerUsage",
         {"gpus": 1, "fail": {"nvmlDeviceGetTotalEccErrors": NVML_ERROR_NOT_SUPPORTED,
                              "nvmlDeviceGetPowerUsage": NVML_ERROR_NOT_SUPPORTED}}),
    ],
)
def test_parse_fake_nvml_spec(spec: str, expected: dict[str, Any]) -> None:
    assert parse_fake_nvml_spec(spec) == expected


def test_a_spec_builds_the_fake_it_describes() -> None:
    assert parse_fake_nvml_spec("") == {}
    fake = FakeNvml(**parse_fake_nvml_spec("gpus=3,offset=2"))
    assert fake.gpus == 3 and fake.offset == 2
    with pytest.raises(ValueError, match="fake NVML spec 'gpus=two'"):
        parse_fake_nvml_spec("gpus=two")
    with pytest.raises(ValueError, match="unknown key"):
        parse_fake_nvml_spec("colour=red")


def test_load_nvml_without_gpu_is_one_log_line_not_a_crash(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sysstats, "_nvml_unavailable_logged", False)
    caplog.set_level(logging.INFO, logger="sdxl_dist_log.sysstats")
    assert load_nvml(module=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)) is None
    assert load_nvml(module=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)) is None
    lines = [r for r in caplog.records if "NVML unavailable" in r.getMessage()]
    assert len(lines) == 1 and "Library Not Found" in lines[0].getMessage()
    fake = FakeNvml(gpus=1)
    assert load_nvml(module=fake) is fake and fake.initialised == 1


def test_real_pynvml_on_this_machine_returns_module_or_none() -> None:
    nvml = load_nvml()
    pynvml = pytest.importorskip("pynvml")
    assert nvml is None or nvml is pynvml
    if nvml is not None:
        nvml.nvmlShutdown()


def test_installed_pynvml_has_the_functions_the_table_names() -> None:
    pynvml = pytest.importorskip("pynvml")
    for spec in sysstats.NVML_FIELDS:
        assert any(hasattr(pynvml, f) for f in spec.functions), spec
        assert all(hasattr(pynvml, a) for a in spec.args if isinstance(a, str)), spec


def test_nvml_sampler_values_and_never_pcie() -> None:
    nv = FakeNvml(gpus=2, offset=5)
    sampler = sysstats.NvmlSampler(nv, logging.getLogger("t"))
    out = sampler.sample()
    assert out[1] == {
        "utilization": 15.0, "memory_used": float(2 * GIB + 5 * MIB), "memory_total": float(80 * GIB),
        "memory_percent": 100.0 * (2 * GIB + 5 * MIB) / (80 * GIB), "temperature": 46.0,
        "power_watts": 115.0, "power_limit_watts": 700.0, "power_percent": 100.0 * 115 / 700,
        "sm_clock_mhz": 1979.0, "clock_event_reasons": 4.0, "clock_throttled": 1.0, "ecc_corrected": 1.0,
    }
    assert nv.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert nv.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 2  # the newer name when present
    assert [g.uuid for g in sampler.identities] == [nv.uuid_of(0), nv.uuid_of(1)]


def test_per_field_failure_disables_that_field_once_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    nv = FakeNvml(gpus=3, fail={"nvmlDeviceGetTotalEccErrors": NVML_ERROR_NOT_SUPPORTED})
    caplog.set_level(logging.WARNING)
    sampler = sysstats.NvmlSampler(nv, logging.getLogger("t.ecc"))
    for _ in range(4):
        out = sampler.sample()
    assert all("ecc_corrected" not in g and g["utilization"] == 10.0 * i for i, g in out.items())
    assert nv.calls["nvmlDeviceGetTotalEccErrors"] == 3  # once per GPU, then never again
    assert len([r for r in caplog.records if "ecc_corrected" in r.getMessage()]) == 1


class _OldNvml:
    """A pynvml without the newer clock-event name."""

    def __init__(self, inner: FakeNvml) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "nvmlDeviceGetCurrentClocksEventReasons":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_older_nvml_uses_the_throttle_reasons_name() -> None:
    inner = FakeNvml(gpus=2)
    out = sysstats.NvmlSampler(_OldNvml(inner), logging.getLogger("t")).sample()
    assert out[1]["clock_throttled"] == 1.0
    assert inner.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2


def test_cpu_percent_is_primed_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import psutil

    calls: list[Any] = []
    real = psutil.cpu_percent

    def spy(interval: Any = None, percpu: bool = False) -> Any:
        calls.append((time.monotonic(), interval))
        return real(interval, percpu)

    monkeypatch.setattr(psutil, "cpu_percent", spy)
    import torch.distributed as dist

    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=0.3, run_dir=str(tmp_path), sink=lambda r: None,
                       nvml=FakeNvml(gpus=0))
    sm.start()
    assert calls and calls[0][1] is None  # primed during start(), before any sample
    deadline = time.monotonic() + 0.25
    while time.monotonic() < deadline:  # burn CPU before the first sample
        sum(i * i for i in range(10_000))
    first = sm.sample_now()
    sm.stop()
    assert first["system/cpu/percent"] > 0.0


# ----------------------------------------------------------------------------------------------------------------------
# One process, HashStore
# ----------------------------------------------------------------------------------------------------------------------
def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_single_process_hashstore_seed_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch.distributed as dist

    nv = FakeNvml(gpus=1)
    monkeypatch.setattr(sysstats, "_cuda_device_identity", lambda d: (nv.uuid_of(0)[4:], None))
    monkeypatch.setattr(sysstats, "_cuda_memory_stats",
                        lambda d: {"memory_allocated": 11.0, "memory_reserved": 22.0, "max_memory_allocated": 33.0})
    rows: list[dict[str, float]] = []
    threads_before = set(threading.enumerate())
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=0.1, run_dir=str(tmp_path), sink=rows.append,
                       nvml=nv, cuda_device=0)
    t0 = time.monotonic()
    sm.start()
    assert time.monotonic() - t0 < 0.5  # start never waits
    assert _wait_for(lambda: len(rows) >= 3, 10)
    sm.stop()
    sm.stop()  # idempotent
    row = rows[-1]
    for key in SEED_KEYS:
        assert key in row, key
    assert row["system/gpu0/memory_allocated"] == 11.0
    assert row["system/gpu0/utilization"] == 0.0
    # one GPU on one node: no aggregates that would only repeat its own figures
    assert not any(k.startswith("system/all/") and not k.endswith("/count") for k in row)
    assert row["system/all/gpu/count"] == 1.0
    assert row["system/stale_nodes"] == 0.0
    assert sm.hostnames == {0: "localhost"}
    assert sm.samples_published >= 3 and sm.rows_emitted == len(rows)
    assert nv.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert nv.calls["nvmlShutdown"] == 0  # SystemMetrics does not shut down an NVML it was given
    assert not [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]


def test_single_process_without_nvml_logs_node_figures(tmp_path: Path) -> None:
    import torch.distributed as dist

    rows: list[dict[str, float]] = []
    # nvml=None loads the real pynvml: on a GPU-less machine that is one log line and no GPU keys
    with SystemMetrics(RankInfo(), dist.HashStore(), interval=0.1, run_dir=str(tmp_path), sink=rows.append):
        assert _wait_for(lambda: len(rows) >= 2, 10)
    assert "system/cpu/percent" in rows[-1] and "system/disk/percent" in rows[-1]


def test_aggregate_only_and_a_failing_sink_do_not_stop_the_collector(tmp_path: Path) -> None:
    import torch.distributed as dist

    rows: list[dict[str, float]] = []

    def sink(row: dict[str, float]) -> None:
        rows.append(row)
        if len(rows) == 1:
            raise RuntimeError("backend hiccup")

    with SystemMetrics(RankInfo(), dist.HashStore(), interval=0.1, run_dir=str(tmp_path), sink=sink,
                       nvml=FakeNvml(gpus=3), aggregate_only=True):
        assert _wait_for(lambda: len(rows) >= 3, 10)
    assert all(k.startswith(("system/all/", "system/stale")) for k in rows[-1])
    assert rows[-1]["system/all/gpu/utilization/max"] == 20.0


def test_non_primary_rank_without_cuda_only_writes_meta(tmp_path: Path) -> None:
    import torch.distributed as dist

    store = dist.HashStore()
    info = RankInfo(rank=1, world_size=2, local_rank=1, local_world_size=2)
    sm = SystemMetrics(info, store, interval=0.1, run_dir=str(tmp_path), sink=None, nvml=FakeNvml(gpus=1))
    sm.start()
    assert _wait_for(lambda: store.check(["sdxl_dist_log/sys/rank1/meta"]), 5)
    time.sleep(0.3)
    sm.stop()
    assert sm.samples_published == 0
    assert not store.check(["sdxl_dist_log/sys/node0/sample"])


# ----------------------------------------------------------------------------------------------------------------------
# Real processes: 3 ranks simulating 2 nodes, gloo, the default store
# ----------------------------------------------------------------------------------------------------------------------
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast", "broadcast_object_list",
    "gather", "gather_object", "scatter", "scatter_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor",
    "all_to_all", "all_to_all_single", "barrier", "monitored_barrier", "send", "recv", "isend", "irecv",
)
INTERVAL = 0.2
RANK_INFOS = (
    RankInfo(rank=0, world_size=3, local_rank=0, local_world_size=2, node_rank=0, num_nodes=2, hostname="host-a"),
    RankInfo(rank=1, world_size=3, local_rank=1, local_world_size=2, node_rank=0, num_nodes=2, hostname="host-a"),
    RankInfo(rank=2, world_size=3, local_rank=0, local_world_size=1, node_rank=1, num_nodes=2, hostname="host-b"),
)
NODE_OFFSET = {0: 0, 1: 5}


def _count_collectives(counts: dict[str, int]) -> None:
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    for name in COLLECTIVES:
        for module in (dist, c10d):
            real = getattr(module, name, None)
            if real is None:
                continue

            def wrapper(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
                counts[_name] = counts.get(_name, 0) + 1
                return _real(*args, **kwargs)

            setattr(module, name, wrapper)


def _worker(rank: int, port: int, out_dir: str, scenario: str) -> None:
    import torch.distributed as dist
    from torch.distributed.distributed_c10d import _get_default_store

    from sdxl_dist_log import sysstats as ss

    info = RANK_INFOS[rank]
    nv = FakeNvml(gpus=2, offset=NODE_OFFSET[info.node_rank])
    # Simulated CUDA devices of node 0: rank 0 uses cuda:0, which is NVML GPU 1 (found by UUID); rank 1 uses
    # cuda:1, which is NVML GPU 0 (found by PCI bus id). Index = local rank would be wrong for both.
    identity = {0: (nv.uuid_of(1)[4:], None), 1: (None, "0000:10:00")}
    ss._cuda_device_identity = lambda d: identity[rank]
    ss._cuda_memory_stats = lambda d: {"memory_allocated": 1000.0 * (rank + 1),
                                       "memory_reserved": 2000.0 * (rank + 1),
                                       "max_memory_allocated": 3000.0 * (rank + 1)}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=3,
                            timeout=timedelta(seconds=30))
    counts: dict[str, int] = {}
    _count_collectives(counts)
    rows: list[tuple[float, dict[str, float]]] = []
    sm = SystemMetrics(info, _get_default_store(), interval=INTERVAL, run_dir=out_dir,
                       sink=(lambda row: rows.append((time.time(), row))) if rank == 0 else None,
                       nvml=nv, cuda_device=rank if rank < 2 else None)
    t0 = time.monotonic()
    sm.start()
    start_s = time.monotonic() - t0
    report: dict[str, Any] = {"rank": rank, "start_s": start_s}
    if scenario == "all" or rank != 2:
        time.sleep(2.5 if scenario == "all" else 4.0)
    else:  # node 1 stops reporting after 1 s
        time.sleep(1.0)
        report["gone_at"] = time.time()
        if scenario == "exit":
            Path(out_dir, f"rank{rank}.json").write_text(json.dumps({**report, "counts": counts}))
            os._exit(0)  # the process dies without stopping anything
        sm.stop()
        time.sleep(3.0)
    t1 = time.monotonic()
    sm.stop()
    report["stop_s"] = time.monotonic() - t1
    report["counts"] = dict(counts)  # before the process group is torn down
    report["hostnames"] = {str(k): v for k, v in sm.hostnames.items()}
    report["samples_published"] = sm.samples_published
    report["bytes_published"] = sm.bytes_published
    report["rows"] = rows
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    if scenario != "exit":
        dist.destroy_process_group()


def _run_three_ranks(tmp_path: Path, scenario: str) -> list[dict[str, Any]]:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(free_port(), str(tmp_path), scenario), nprocs=3, join=True)
    return [json.loads(Path(tmp_path, f"rank{r}.json").read_text()) for r in range(3)]


@pytest.mark.slow
def test_two_nodes_every_gpu_reaches_the_primary_without_collectives(tmp_path: Path) -> None:
    reports = _run_three_ranks(tmp_path, "all")
    for rep in reports:
        assert rep["counts"] == {}, f"rank {rep['rank']} issued collectives: {rep['counts']}"
        assert rep["start_s"] < 0.5
        assert rep["stop_s"] < 1.0
    assert reports[1]["samples_published"] > 0  # rank 1 ships its torch.cuda figures
    primary = reports[0]
    assert primary["hostnames"] == {"0": "host-a", "1": "host-b"}
    rows = [row for _, row in primary["rows"]]
    assert len(rows) >= 5
    row = rows[-1]
    for node, offset in NODE_OFFSET.items():
        for gpu in range(2):
            assert row[f"system/node{node}/gpu{gpu}/utilization"] == 10 * gpu + offset
            assert row[f"system/node{node}/gpu{gpu}/temperature"] == 40 + gpu + offset
            assert row[f"system/node{node}/gpu{gpu}/memory_used"] == (gpu + 1) * GIB + offset * MIB
        for figure in ("cpu/percent", "memory/percent", "disk/percent", "load/avg_1m"):
            assert f"system/node{node}/{figure}" in row
    # the ranks' torch.cuda figures land on the NVML GPU their CUDA device is, not on gpu{local_rank}
    assert row["system/node0/gpu1/memory_allocated"] == 1000.0  # rank 0, cuda:0 = NVML 1 (UUID)
    assert row["system/node0/gpu0/memory_allocated"] == 2000.0  # rank 1, cuda:1 = NVML 0 (PCI bus id)
    assert row["system/node0/gpu0/max_memory_allocated"] == 6000.0
    assert "system/node1/gpu0/memory_allocated" not in row  # rank 2 has no CUDA device
    assert (row["system/all/gpu/utilization/min"], row["system/all/gpu/utilization/mean"],
            row["system/all/gpu/utilization/max"]) == (0.0, 7.5, 15.0)
    assert row["system/all/gpu/temperature/mean"] == 43.0
    assert row["system/all/gpu/memory_allocated/mean"] == 1500.0
    assert row["system/all/gpu/count"] == 4.0
    assert row["system/all/node/count"] == 2.0
    assert row["system/stale_nodes"] == 0.0
    assert not any(k.startswith("system/gpu") for k in row)  # several nodes: the node is in every key
    # one row per interval, no burst, no long gap
    times = [t for t, _ in primary["rows"]]
    assert max(b - a for a, b in zip(times, times[1:])) < 3 * INTERVAL


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["stop", "exit"])
def test_node_that_stops_reporting_is_marked_stale_not_waited_for(tmp_path: Path, scenario: str) -> None:
    reports = _run_three_ranks(tmp_path, scenario)
    primary = reports[0]
    gone_at = reports[2]["gone_at"]
    for rep in reports:
        assert rep["counts"] == {}, rep["counts"]
    assert primary["stop_s"] < 1.0
    rows = primary["rows"]
    before = [row for t, row in rows if t < gone_at]
    assert before and "system/node1/gpu0/utilization" in before[-1]
    stale = [(t, row) for t, row in rows if row.get("system/node1/stale") == 1.0]
    assert stale, "node 1 never marked stale"
    first_stale_after = stale[0][0] - gone_at
    # stale_after = 3 intervals, plus up to one sampling and one collecting interval, plus scheduling slack
    assert first_stale_after < 5 * INTERVAL + 1.0, first_stale_after
    t_stale, row = stale[-1]
    assert row["system/stale_nodes"] == 1.0
    assert not any(k.startswith("system/node1/") and not k.endswith("/stale") for k in row)
    assert row["system/node0/gpu0/utilization"] == 0.0  # the live node goes on
    assert row["system/all/gpu/utilization/max"] == 10.0  # aggregates over live GPUs only
    # the collector kept its cadence while node 1 was gone
    after = [t for t, _ in rows if t > gone_at]
    assert len(after) >= int(2.5 / INTERVAL)
    assert max(b - a for a, b in zip(after, after[1:])) < 3 * INTERVAL
    assert all(not math.isnan(v) for _, r in rows for v in r.values())
