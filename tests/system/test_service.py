"""Tests of sdxl_dist_log.system.service: the schedule on a hand-driven clock, one process on a HashStore, and real
processes (gloo, the default store) simulating two nodes.

No assertion here depends on how fast the machine is: waits are for events (a row that satisfies a condition, a key
in the store, a thread that ended), each with a hard bound that only a broken run reaches.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.ranks import RankInfo
from sdxl_dist_log.system.service import SystemMetrics, first_delay, run_every, start_system_metrics
from sdxl_dist_log.testing.fake_cuda import FakeCuda
from sdxl_dist_log.testing.fake_nvml import GIB, MIB, FakeNvml

pytestmark = pytest.mark.timeout(180)

WAIT_S = 60.0  # the bound of every wait below; a healthy run never gets near it
SINGLE_NODE_KEYS = (
    "system/gpu0/utilization",
    "system/gpu0/memory_allocated",
    "system/gpu0/memory_reserved",
    "system/cpu/percent",
    "system/memory/percent",
    "system/disk/percent",
)


class Rows:
    """A sink that keeps rows in arrival order and lets the test wait for one that satisfies a condition."""

    def __init__(self, fail_first: int = 0) -> None:
        self.rows: list[dict[str, float]] = []
        self.fail_first = fail_first
        self._cond = threading.Condition()

    def __call__(self, row: dict[str, float]) -> None:
        with self._cond:
            self.rows.append(row)
            self._cond.notify_all()
            if len(self.rows) <= self.fail_first:
                raise RuntimeError("backend hiccup")

    def wait_for(self, predicate: Callable[[dict[str, float]], bool], start: int = 0,
                 what: str = "a matching row") -> int:
        """Index of the first row at or after ``start`` that satisfies ``predicate``; fails after WAIT_S."""
        found: list[int] = []

        def check() -> bool:
            found[:] = [i for i in range(start, len(self.rows)) if predicate(self.rows[i])][:1]
            return bool(found)

        with self._cond:
            assert self._cond.wait_for(check, timeout=WAIT_S), f"no {what} within {WAIT_S} s ({len(self.rows)} rows)"
        return found[0]

    def wait_count(self, count: int) -> None:
        self.wait_for(lambda _: True, start=count - 1, what=f"row number {count}")


def _sm_threads(before: frozenset[threading.Thread] = frozenset()) -> list[threading.Thread]:
    """SystemMetrics threads alive now that were not in ``before`` (another test's leftovers are not this test's)."""
    return [t for t in threading.enumerate() if t.name.startswith("sdxl-sysstats") and t.is_alive() and t not in before]


# ----------------------------------------------------------------------------------------------------------------------
# The schedule
# ----------------------------------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_one_call_per_interval_and_an_overrun_skips_instead_of_bursting() -> None:
    clock = _Clock(100.0)
    waits: list[float] = []
    calls: list[float] = []
    takes = {2: 3.5, 3: 0.3}  # call 2 overruns three intervals, call 3 a third of one

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        clock.now += seconds
        return len(waits) > 5

    def body() -> None:
        calls.append(clock.now)
        clock.now += takes.get(len(calls), 0.0)

    run_every(1.0, body, first=0.5, clock=clock, wait=wait)
    assert calls == [100.5, 101.5, 106.0, 107.0, 108.0]
    assert waits == pytest.approx([0.5, 1.0, 1.0, 0.7, 1.0, 1.0])  # never 0: no burst to catch up


def test_a_stop_before_the_first_call_calls_nothing() -> None:
    calls: list[int] = []
    run_every(1.0, lambda: calls.append(1), first=0.5, clock=_Clock(0.0), wait=lambda s: True)
    assert calls == []
    assert first_delay(60.0) == 0.5 and first_delay(0.1) == 0.1


# ----------------------------------------------------------------------------------------------------------------------
# One process, HashStore
# ----------------------------------------------------------------------------------------------------------------------
class _RecordingStore:
    """A HashStore that records which thread called it and, until ``open`` is set, blocks every call."""

    def __init__(self, gated: bool = False) -> None:
        import torch.distributed as dist

        self.inner = dist.HashStore()
        self.open = threading.Event()
        if not gated:
            self.open.set()
        self.callers: list[str] = []

    def _enter(self) -> None:
        self.callers.append(threading.current_thread().name)
        assert self.open.wait(WAIT_S)

    def set(self, key: str, value: Any) -> None:
        self._enter()
        self.inner.set(key, value)

    def check(self, keys: list[str]) -> bool:
        self._enter()
        return self.inner.check(keys)

    def get(self, key: str) -> bytes:
        self._enter()
        return self.inner.get(key)


def test_construction_and_start_never_wait_for_the_store(tmp_path: Path) -> None:
    store = _RecordingStore(gated=True)
    before = frozenset(threading.enumerate())
    sm = SystemMetrics(RankInfo(), store, interval=0.1, run_dir=str(tmp_path), sink=Rows(), nvml=FakeNvml(gpus=1))
    assert store.callers == []  # the constructor only stores its arguments
    started = threading.Event()
    caller = threading.Thread(target=lambda: (sm.start(), started.set()), name="caller")
    caller.start()
    try:
        assert started.wait(WAIT_S), "start() waited for the store"
        assert "caller" not in store.callers
    finally:
        store.open.set()
        caller.join(WAIT_S)
        sm.stop(timeout=WAIT_S)
    assert not _sm_threads(before)


def test_stop_wakes_the_threads_instead_of_waiting_out_the_interval(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    import torch.distributed as dist

    caplog.set_level(logging.WARNING)
    before = frozenset(threading.enumerate())
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=3600.0, run_dir=str(tmp_path), sink=Rows(),
                       nvml=FakeNvml(gpus=1))
    sm.start()
    assert len(_sm_threads(before)) == 2  # sampler and collector, each waiting for its next due time
    sm.stop(timeout=WAIT_S)  # an hour-long wait that stop() did not cut short would outlast this bound
    assert not _sm_threads(before)
    assert not [r for r in caplog.records if "did not stop" in r.getMessage()]


def test_single_process_hashstore_single_node_keys(tmp_path: Path) -> None:
    import torch.distributed as dist

    nv = FakeNvml(gpus=1)
    cuda = FakeCuda({"memory_allocated": 11.0, "memory_reserved": 22.0, "max_memory_allocated": 33.0},
                    uuid=nv.uuid_of(0)[4:])
    rows = Rows()
    threads_before = set(threading.enumerate())
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=0.1, run_dir=str(tmp_path), sink=rows,
                       nvml=nv, cuda_device=0, cuda_probe=cuda, stale_after=WAIT_S)
    sm.start()
    rows.wait_count(3)
    rows.wait_for(lambda _: sm.samples_published >= 3, what="row after the third sample")
    sm.stop()
    sm.stop()  # idempotent
    row = rows.rows[-1]
    for key in SINGLE_NODE_KEYS:
        assert key in row, key
    assert row["system/gpu0/memory_allocated"] == 11.0
    assert row["system/gpu0/utilization"] == 0.0
    # one GPU on one node: no aggregates that would only repeat its own figures
    assert not any(k.startswith("system/all/") and not k.endswith("/count") for k in row)
    assert row["system/all/gpu/count"] == 1.0
    assert row["system/stale_nodes"] == 0.0
    assert sm.hostnames == {0: "localhost"}
    assert sm.samples_published >= 3 and sm.rows_emitted == len(rows.rows)
    assert nv.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert nv.calls["nvmlShutdown"] == 0  # SystemMetrics does not shut down an NVML it was given
    assert not [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    now = sm.sample_now()  # the same figures, synchronously
    assert now["system/gpu0/memory_allocated"] == 11.0 and now["system/gpu0/utilization"] == 0.0


def test_single_process_without_nvml_logs_node_figures(tmp_path: Path) -> None:
    import torch.distributed as dist

    rows = Rows()
    # nvml=None loads the real pynvml: on a GPU-less machine that is one log line and no GPU keys
    with SystemMetrics(RankInfo(), dist.HashStore(), interval=0.1, run_dir=str(tmp_path), sink=rows,
                       stale_after=WAIT_S):
        rows.wait_count(2)
    assert "system/cpu/percent" in rows.rows[-1] and "system/disk/percent" in rows.rows[-1]


def test_nvml_that_cannot_count_its_gpus_turns_gpu_figures_off_only(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import torch.distributed as dist

    caplog.set_level(logging.WARNING)
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=1.0, run_dir=str(tmp_path), sink=None,
                       nvml=FakeNvml(gpus=2, fail={"nvmlDeviceGetCount": 999}))
    row = sm.sample_now()
    assert "system/cpu/percent" in row and not any(k.startswith("system/gpu") for k in row)
    assert any("NVML device enumeration failed" in r.getMessage() for r in caplog.records)


def test_aggregate_only_and_a_failing_sink_do_not_stop_the_collector(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    import torch.distributed as dist

    caplog.set_level(logging.WARNING)
    rows = Rows(fail_first=1)
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=0.1, run_dir=str(tmp_path), sink=rows,
                       nvml=FakeNvml(gpus=3), aggregate_only=True, stale_after=WAIT_S)
    with sm:
        rows.wait_count(3)
    assert all(k.startswith(("system/all/", "system/stale")) for k in rows.rows[-1])
    assert rows.rows[-1]["system/all/gpu/utilization/max"] == 20.0
    assert sm.rows_emitted == len(rows.rows) - 1  # the row the sink refused is not counted
    assert len([r for r in caplog.records if "sink failed (RuntimeError: backend hiccup)" in r.getMessage()]) == 1


def test_non_primary_rank_without_cuda_only_writes_meta(tmp_path: Path) -> None:
    import torch.distributed as dist

    store = dist.HashStore()
    info = RankInfo(rank=1, world_size=2, local_rank=1, local_world_size=2)
    before = frozenset(threading.enumerate())
    sm = SystemMetrics(info, store, interval=0.1, run_dir=str(tmp_path), sink=None, nvml=FakeNvml(gpus=1))
    sm.start()
    for t in _sm_threads(before):
        t.join(WAIT_S)  # it ends by itself after its meta: nothing to sample
    assert not _sm_threads(before)
    sm.stop()
    assert store.check(["sdxl_dist_log/sys/rank1/meta"])
    assert sm.samples_published == 0
    assert not store.check(["sdxl_dist_log/sys/node0/sample"])


def test_cpu_percent_is_primed_at_start(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import psutil
    import torch.distributed as dist

    calls: list[Any] = []
    real = psutil.cpu_percent

    def spy(interval: Any = None, percpu: bool = False) -> Any:
        calls.append((threading.current_thread().name, interval))
        return real(interval, percpu)

    monkeypatch.setattr(psutil, "cpu_percent", spy)
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=3600.0, run_dir=str(tmp_path), sink=None,
                       nvml=FakeNvml(gpus=0))
    sm.start()
    try:
        assert calls and calls[0] == (threading.current_thread().name, None)  # primed during start()
        spent = time.process_time()
        while time.process_time() - spent < 0.05:  # burn this process's CPU: the system cannot have been idle
            sum(i * i for i in range(10_000))
        first = sm.sample_now()
    finally:
        sm.stop()
    assert first["system/cpu/percent"] > 0.0


def test_the_sampling_thread_primes_cpu_percent_for_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import psutil
    import torch.distributed as dist

    # psutil keeps cpu_percent's reference per thread; this stand-in answers -1 to a thread's unprimed first call
    primed: set[int] = set()

    def cpu_percent(interval: Any = None, percpu: bool = False) -> float:
        first_call = threading.get_ident() not in primed
        primed.add(threading.get_ident())
        return -1.0 if first_call else 42.0

    monkeypatch.setattr(psutil, "cpu_percent", cpu_percent)
    rows = Rows()
    with SystemMetrics(RankInfo(), dist.HashStore(), interval=0.1, run_dir=str(tmp_path), sink=rows,
                       nvml=FakeNvml(gpus=0), stale_after=WAIT_S) as sm:
        rows.wait_count(1)
        assert sm.sample_now()["system/cpu/percent"] == 42.0  # the caller's thread was primed in start()
    assert rows.rows[0]["system/cpu/percent"] == 42.0


# ----------------------------------------------------------------------------------------------------------------------
# Real processes: 3 ranks simulating 2 nodes, gloo, the default store
# ----------------------------------------------------------------------------------------------------------------------
COLLECTIVES = (
    "all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast", "broadcast_object_list",
    "gather", "gather_object", "scatter", "scatter_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor",
    "all_to_all", "all_to_all_single", "barrier", "monitored_barrier", "send", "recv", "isend", "irecv",
)
INTERVAL = 0.2
STALE_AFTER = 10 * INTERVAL  # long enough that a busy machine does not make a live node look stale
RANK_INFOS = (
    RankInfo(rank=0, world_size=3, local_rank=0, local_world_size=2, node_rank=0, num_nodes=2, hostname="host-a"),
    RankInfo(rank=1, world_size=3, local_rank=1, local_world_size=2, node_rank=0, num_nodes=2, hostname="host-a"),
    RankInfo(rank=2, world_size=3, local_rank=0, local_world_size=1, node_rank=1, num_nodes=2, hostname="host-b"),
)
NODE_OFFSET = {0: 0, 1: 5}
ROWS_WHILE_GONE = 5


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


def _live(row: dict[str, float], node: int) -> bool:
    return f"system/node{node}/gpu0/utilization" in row


def _every_gpu_and_rank(row: dict[str, float]) -> bool:
    return (row.get("system/stale_nodes") == 0.0 and _live(row, 0) and _live(row, 1)
            and "system/node0/gpu0/memory_allocated" in row and "system/node0/gpu1/memory_allocated" in row)


def _node_worker(rank: int, scenario: str, run_dir: str) -> dict[str, Any]:
    """One rank. Phases are driven by keys in the store, never by sleeping: the primary says when it has seen node 1
    ("seen"), rank 2 then leaves and says so ("gone"), and the primary says when it is done ("done")."""
    from torch.distributed.distributed_c10d import _get_default_store

    info = RANK_INFOS[rank]
    nv = FakeNvml(gpus=2, offset=NODE_OFFSET[info.node_rank])
    # Simulated CUDA devices of node 0: rank 0 uses cuda:0, which is NVML GPU 1 (found by UUID); rank 1 uses
    # cuda:1, which is NVML GPU 0 (found by PCI bus id). Index = local rank would be wrong for both.
    identity = {0: (nv.uuid_of(1)[4:], None), 1: (None, "0000:10:00")}
    cuda = None
    if rank < 2:
        cuda = FakeCuda({"memory_allocated": 1000.0 * (rank + 1), "memory_reserved": 2000.0 * (rank + 1),
                         "max_memory_allocated": 3000.0 * (rank + 1)}, uuid=identity[rank][0], pci=identity[rank][1])
    counts: dict[str, int] = {}
    _count_collectives(counts)
    store = _get_default_store()
    wait = timedelta(seconds=WAIT_S)
    rows = Rows() if rank == 0 else None
    sm = SystemMetrics(info, store, interval=INTERVAL, run_dir=run_dir, sink=rows, nvml=nv,
                       cuda_device=rank if rank < 2 else None, cuda_probe=cuda, stale_after=STALE_AFTER)
    sm.start()
    report: dict[str, Any] = {"rank": rank}
    if rank == 0:
        assert rows is not None
        if scenario == "all":
            report["complete"] = rows.wait_for(_every_gpu_and_rank, what="row with every GPU and rank")
            rows.wait_count(5)
        else:
            report["seen"] = rows.wait_for(lambda r: _live(r, 1), what="row with node 1")
            store.set("test/seen", "1")
            store.wait(["test/gone"], wait)
            report["gone"] = len(rows.rows)
            report["stale"] = rows.wait_for(lambda r: r.get("system/node1/stale") == 1.0 and _live(r, 0),
                                            start=report["gone"], what="row with node 1 stale")
            rows.wait_count(report["stale"] + 1 + ROWS_WHILE_GONE)
        store.set("test/done", "1")
    elif rank == 2 and scenario != "all":
        store.wait(["test/seen"], wait)
        if scenario == "stop":
            sm.stop()
        store.set("test/gone", "1")
        if scenario == "exit":
            # return without stopping anything: the runner ends this process with os._exit right after
            return {**report, "counts": dict(counts)}
        store.wait(["test/done"], wait)
    else:
        store.wait(["test/done"], wait)
    sm.stop()
    report["threads_left"] = [t.name for t in _sm_threads()]
    report["counts"] = dict(counts)
    report["hostnames"] = {str(k): v for k, v in sm.hostnames.items()}
    report["samples_published"] = sm.samples_published
    report["rows"] = rows.rows if rows is not None else []
    return report


def _run_three_ranks(tmp_path: Path, scenario: str) -> list[dict[str, Any]]:
    return values_or_raise(run_ranks(lambda rank: _node_worker(rank, scenario, str(tmp_path)), 3, timeout=150))


@pytest.mark.slow
def test_two_nodes_every_gpu_reaches_the_primary_without_collectives(tmp_path: Path) -> None:
    reports = _run_three_ranks(tmp_path, "all")
    for rep in reports:
        assert rep["counts"] == {}, f"rank {rep['rank']} issued collectives: {rep['counts']}"
        assert rep["threads_left"] == [], rep
    assert reports[1]["samples_published"] > 0  # rank 1 ships its torch.cuda figures
    primary = reports[0]
    assert primary["hostnames"] == {"0": "host-a", "1": "host-b"}
    rows = primary["rows"]
    assert len(rows) >= 5
    row = rows[primary["complete"]]
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


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["stop", "exit"])
def test_node_that_stops_reporting_is_marked_stale_not_waited_for(tmp_path: Path, scenario: str) -> None:
    reports = _run_three_ranks(tmp_path, scenario)
    primary = reports[0]
    for rep in reports:
        assert rep["counts"] == {}, rep["counts"]
    assert primary["threads_left"] == []
    rows = primary["rows"]
    assert primary["seen"] < primary["gone"] <= primary["stale"]
    assert "system/node1/gpu0/utilization" in rows[primary["seen"]]
    row = rows[primary["stale"]]
    assert row["system/stale_nodes"] == 1.0
    assert not any(k.startswith("system/node1/") and not k.endswith("/stale") for k in row)
    assert row["system/node0/gpu0/utilization"] == 0.0  # the live node goes on
    assert row["system/all/gpu/utilization/max"] == 10.0  # aggregates over live GPUs only
    # the collector kept its cadence while node 1 was gone: more rows came, none waiting for node 1
    assert len(rows) >= primary["stale"] + 1 + ROWS_WHILE_GONE
    assert all(not math.isnan(v) for r in rows for v in r.values())


# -- start_system_metrics: what the logger calls ---------------------------------------------------------------
def _start(rank: RankInfo, cuda, logger: logging.Logger):
    import torch.distributed as dist

    return start_system_metrics(rank, dist.HashStore(), interval=3600.0, run_dir=".", sink=None, aggregate_only=False,
                                nvml=FakeNvml(gpus=2), namespace="t", logger=logger, cuda_probe=cuda)


@pytest.mark.parametrize(("device", "devices", "warned"), [(0, 2, True), (1, 2, False), (0, 1, False),
                                                           (None, 0, False)])
def test_a_rank_left_on_cuda0_is_told_to_set_its_device(device, devices, warned, caplog) -> None:
    rank = RankInfo(rank=1, world_size=2, local_rank=1, local_world_size=2)
    logger = logging.getLogger("test.start")
    with caplog.at_level(logging.WARNING, logger="test.start"):
        system = _start(rank, FakeCuda(device=device, devices=devices), logger)
    try:
        assert system is not None and system.cuda_device == device
        assert any("torch.cuda.set_device(local_rank)" in r.getMessage() for r in caplog.records) is warned
    finally:
        system.stop(timeout=5.0)


def test_a_system_sampler_that_cannot_start_is_one_warning_not_an_error(caplog) -> None:
    logger = logging.getLogger("test.start")
    broken = FakeCuda()
    broken.current_device = lambda: (_ for _ in ()).throw(RuntimeError("CUDA driver gone"))  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="test.start"):
        assert _start(RankInfo(), broken, logger) is None
    assert any("system metrics are off: RuntimeError: CUDA driver gone" in r.getMessage() for r in caplog.records)
