"""Tests of sdxl_dist_log.collectives without a process group: the identity path, and what a failed check leaves.

The multi-process behaviour (timeouts, absent ranks, peers out of step) is tested with real gloo processes in
tests/test_distributed.py; the pure call-header check in tests/test_framing.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdxl_dist_log.collectives import Collectives, placed_by_process_group
from sdxl_dist_log.errors import RanksOutOfStepError
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.ranks import RankInfo

dist = pytest.importorskip("torch.distributed")


@pytest.fixture
def local() -> Collectives:
    assert not (dist.is_available() and dist.is_initialized())
    return Collectives.create(rank=3, world_size=8, timeout=5.0)


def test_create_without_process_group_is_inactive(local: Collectives) -> None:
    assert local.active is False
    assert local.world_size == 1
    assert local.rank == 3
    assert local.store is local.store  # a private in-process store, made once
    local.store.set("k", "v")
    assert local.store.get("k") == b"v"
    assert local.failure is None


def test_a_call_without_a_process_group_reduces_this_rank_alone(local: Collectives) -> None:
    from sdxl_dist_log.metric_stage import V_CODE, VALID, MetricStage
    from sdxl_dist_log.metrics import MetricPlan, pack_row, resolve_reduce

    keys = ("a", "b", "c")
    plan = MetricPlan(keys, resolve_reduce(keys, {"a": "sum", "b": "per_rank", "c": "local"}))
    stage = MetricStage(plan, 1)
    outcome = local.reduce_call(pack_row(plan, np.array([1.0, 2.0, float("nan")])), CallInfo("log_metrics", 1), stage)
    assert outcome.stage[V_CODE] == VALID
    values = stage.values(outcome.stage, outcome.block[:, :1])
    assert values["a"] == 1.0 and values["b/rank0"] == 2.0 and np.isnan(values["c"])


def test_rare_paths_are_the_identity(local: Collectives) -> None:
    from sdxl_dist_log.hierarchy import bytes_to_primary, decided_at_primary

    obj = {"a": [1, 2]}
    assert local.run(decided_at_primary(local.topology, obj, lambda everyone: everyone), CallInfo("x")) == [obj]
    payload = np.frombuffer(b"hello", dtype=np.uint8)
    out = local.run(bytes_to_primary(local.topology, {0: 5}, payload), CallInfo("log_images", 2))
    assert out[0].tobytes() == b"hello"


@pytest.mark.parametrize("obj", [None, {"run_id": "abc", "tags": ["x"]}, [1, 2.5], "s"])
def test_broadcast_json_identity(local: Collectives, obj) -> None:
    assert local.broadcast_json(obj, src=0, call=CallInfo("init"), timeout=1.0) is obj


def test_identity_path_makes_no_collective(local: Collectives) -> None:
    from sdxl_dist_log.hierarchy import decided_at_primary
    from sdxl_dist_log.images.transport import ImageStage, pack_offer
    from sdxl_dist_log.testing.probe import CollectiveProbe

    with CollectiveProbe() as probe:
        local.reduce_call(pack_offer([], [], 4, failed=False), CallInfo("log_images"), ImageStage(4))
        local.run(decided_at_primary(local.topology, 1, len), CallInfo("log_metrics"))
        local.broadcast_json({}, 0, CallInfo("init"))
    assert probe.calls == [] and sum(probe.api.values()) == 0


def test_constructor_defaults() -> None:
    c = Collectives(rank=0, world_size=1, timeout=2.0)
    assert c.presence_after == 0.5  # a quarter of the timeout, at most one second
    assert Collectives(rank=0, world_size=1, timeout=60.0).presence_after == 1.0
    assert c.active is False




def test_a_failed_step_check_closes_the_group_for_logging() -> None:
    c = Collectives(rank=0, world_size=2)
    headers = np.array([(5, 2, 3, 8), (6, 2, 4, 8)], dtype=np.float64)
    with pytest.raises(RanksOutOfStepError) as info:
        c._check_in_step(headers, CallInfo("log_metrics", 3))
    assert c.failure is info.value


def test_placement_without_a_process_group_is_the_environment_s() -> None:
    rank = RankInfo(rank=1, world_size=4, local_rank=1, local_world_size=4)
    assert placed_by_process_group(rank) is rank
