"""Tests of sdxl_dist_log.system.collector on a HashStore with a hand-driven clock: no threads, no sleeps."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sdxl_dist_log.system.collector import Collector
from sdxl_dist_log.system.gpus import GpuIdentity
from sdxl_dist_log.system.wire import (
    RankMeta,
    StoreKeys,
    WireError,
    encode_node_meta,
    encode_node_sample,
    encode_rank_meta,
    encode_rank_sample,
)

KEYS = StoreKeys("t/sys")
STALE_AFTER = 3.0


class _Store:
    """A HashStore that refuses a read of a missing key (the real one would block) and records reads."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.inner = dist.HashStore()
        self.read: list[str] = []
        self.multi_gets = 0

    def set(self, key: str, value: Any) -> None:
        self.inner.set(key, value)

    def check(self, keys: list[str]) -> bool:
        return self.inner.check(keys)

    def get(self, key: str) -> bytes:
        assert self.inner.check([key]), f"get({key!r}) of a missing key would block"
        self.read.append(key)
        return self.inner.get(key)

    def multi_get(self, keys: list[str]) -> list[bytes]:
        for key in keys:
            assert self.inner.check([key]), f"multi_get of missing {key!r} would block"
        self.read.extend(keys)
        self.multi_gets += 1
        return self.inner.multi_get(keys)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _collector(store: Any, clock: _Clock, *, nodes: int = 2, world: int = 3, **kwargs: Any) -> Collector:
    return Collector(store, KEYS, num_nodes=nodes, world_size=world, stale_after=STALE_AFTER, clock=clock,
                     logger=logging.getLogger("t.collector"), **kwargs)


def _node_meta(store: Any, n: int, gpus: int = 2) -> None:
    identities = [GpuIdentity(i, f"GPU-n{n}g{i}", None) for i in range(gpus)]
    store.set(KEYS.node_meta(n), encode_node_meta(f"host-{n}", identities))


def _node_sample(store: Any, n: int, seq: int, gpus: int = 2) -> None:
    figures = {i: {"utilization": 10.0 * i + 100.0 * n} for i in range(gpus)}
    store.set(KEYS.node_sample(n), encode_node_sample(seq, 0.0, {"cpu/percent": 1.0 + n}, figures))


def test_nothing_heard_is_no_row_until_the_grace_period_ends() -> None:
    store, clock = _Store(), _Clock()
    collector = _collector(store, clock)
    assert collector.collect() is None
    clock.now = STALE_AFTER
    assert collector.collect() is None  # stale only once stale_after has *passed*
    clock.now = STALE_AFTER + 0.1
    row = collector.collect()
    assert row is not None
    assert (row["system/node0/stale"], row["system/node1/stale"], row["system/stale_nodes"]) == (1.0, 1.0, 2.0)
    assert row["system/all/node/count"] == 0.0


def test_a_node_whose_sequence_stops_is_stale_on_my_clock_and_comes_back() -> None:
    store, clock = _Store(), _Clock()
    collector = _collector(store, clock)
    for n in (0, 1):
        _node_meta(store, n)
        _node_sample(store, n, seq=1)
    clock.now = 1.0
    row = collector.collect()
    assert row is not None and row["system/node1/gpu1/utilization"] == 110.0 and row["system/stale_nodes"] == 0.0
    assert collector.hostnames == {0: "host-0", 1: "host-1"}
    for seq, now in ((2, 2.0), (3, 3.0), (4, 4.0)):  # node 0 advances, node 1 does not
        _node_sample(store, 0, seq=seq)
        clock.now = now
        row = collector.collect()
        assert row is not None and row["system/stale_nodes"] == 0.0, now
    clock.now = 1.0 + STALE_AFTER + 0.01  # node 1 last advanced at 1.0 on this clock
    _node_sample(store, 0, seq=5)
    row = collector.collect()
    assert row is not None
    assert row["system/node1/stale"] == 1.0 and row["system/stale_nodes"] == 1.0
    assert not any(k.startswith("system/node1/") and not k.endswith("/stale") for k in row)
    assert row["system/node0/gpu1/utilization"] == 10.0
    assert row["system/all/gpu/count"] == 2.0 and row["system/all/node/count"] == 1.0
    assert "system/all/cpu/percent/mean" not in row  # one live node: nothing to aggregate
    _node_sample(store, 1, seq=2)  # it came back
    clock.now += 0.5
    row = collector.collect()
    assert row is not None and row["system/stale_nodes"] == 0.0 and "system/node1/stale" not in row
    assert row["system/all/cpu/percent/mean"] == 1.5


def test_ranks_with_a_device_are_placed_on_their_gpu_and_counted_when_stale() -> None:
    store, clock = _Store(), _Clock()
    collector = _collector(store, clock, nodes=1, world=3)
    _node_meta(store, 0)
    _node_sample(store, 0, seq=1)
    # rank 0 is NVML GPU 1 by UUID; rank 1 reports no device; rank 2 has not said anything yet
    store.set(KEYS.rank_meta(0), encode_rank_meta(RankMeta(0, 3, cuda_device=0, uuid="n0g1")))
    store.set(KEYS.rank_meta(1), encode_rank_meta(RankMeta(0, 3)))
    store.set(KEYS.rank_sample(0), encode_rank_sample(1, 0.0, {"memory_allocated": 7.0}))
    row = collector.collect()
    assert row is not None
    assert row["system/gpu1/memory_allocated"] == 7.0 and "system/gpu0/memory_allocated" not in row
    assert [k for k in row if k.endswith("/utilization")] == ["system/gpu1/utilization"]  # the job's GPU only
    assert collector.no_cuda_ranks == {1} and set(collector.ranks) == {0}
    store.read.clear()
    round_trips = store.multi_gets
    collector.collect()
    assert sorted(store.read) == sorted([KEYS.node_sample(0), KEYS.rank_sample(0)])  # meta is read once
    assert store.multi_gets == round_trips + 1  # every sample in one round trip
    clock.now = STALE_AFTER + 1.0
    _node_sample(store, 0, seq=2)
    row = collector.collect()
    assert row is not None and row["system/stale_ranks"] == 1.0 and "system/gpu1/memory_allocated" not in row
    assert row["system/stale_nodes"] == 0.0


def test_a_damaged_record_fails_that_collect_only() -> None:
    store, clock = _Store(), _Clock()
    collector = _collector(store, clock, nodes=1, world=1)
    _node_meta(store, 0)
    store.set(KEYS.node_sample(0), b"{not json")
    with pytest.raises(WireError):
        collector.collect()
    _node_sample(store, 0, seq=1)
    row = collector.collect()
    assert row is not None and row["system/gpu0/utilization"] == 0.0


def test_aggregate_only_rows() -> None:
    store, clock = _Store(), _Clock()
    collector = _collector(store, clock, nodes=2, world=2, aggregate_only=True)
    for n in (0, 1):
        _node_meta(store, n)
        _node_sample(store, n, seq=1)
    row = collector.collect()
    assert row is not None
    assert all(k.startswith(("system/all/", "system/stale")) for k in row), sorted(row)
    assert row["system/all/gpu/utilization/max"] == 110.0
