"""Tests of sdxl_dist_log.collectives: the identity path without a process group, what a failed check leaves, and
how collectives fail across real gloo ranks (a rank that never arrives, a rank that skips a call).

The pure call-header check is tested in tests/test_framing.py.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdxl_dist_log.collectives import Collectives, placed_by_process_group
from sdxl_dist_log.errors import RanksOutOfStepError
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.launch.local import run_ranks, values_or_raise
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
    from sdxl_dist_log.exchange import bytes_to_primary, decided_at_primary

    obj = {"a": [1, 2]}
    assert local.run(decided_at_primary(local.topology, obj, lambda everyone: everyone), CallInfo("x")) == [obj]
    payload = np.frombuffer(b"hello", dtype=np.uint8)
    out = local.run(bytes_to_primary(local.topology, {0: 5}, payload), CallInfo("log_images", 2))
    assert out[0].tobytes() == b"hello"


@pytest.mark.parametrize("obj", [None, {"run_id": "abc", "tags": ["x"]}, [1, 2.5], "s"])
def test_broadcast_json_identity(local: Collectives, obj) -> None:
    assert local.broadcast_json(obj, src=0, call=CallInfo("init"), timeout=1.0) is obj


def test_identity_path_makes_no_collective(local: Collectives) -> None:
    from sdxl_dist_log.exchange import decided_at_primary
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


# ------------------------------------------------------------------------------------------------------------------
# across real gloo ranks: a rank that never arrives, a rank that skips a call
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_that_never_arrives_is_named_within_the_timeout(tmp_path: Path, make_logger: Callable,
                                                               only_run: Callable) -> None:
    """Rank 1 stays away until rank 0 has given up: rank 0 raises CollectiveTimeoutError naming rank 1 and the call,
    then logs on unreduced; the run still finishes.

    Rank 1 is released only after rank 0's error, so rank 0 can only have got there through its own timeout (had it
    waited for rank 1, both would wait forever and ``run_ranks`` would fail at its timeout).
    """
    released = mp.get_context("fork").Event()

    def body(rank: int):
        from sdxl_dist_log import CollectiveTimeoutError

        with make_logger(str(tmp_path), collective_timeout=3.0, on_logging_fault="raise") as wb:
            dist.barrier()  # both ranks start logging together: only the rank that stays away makes one wait
            wb.log_metrics({"loss": 1.0}, step=0)
            if rank == 1:
                assert released.wait(200), "rank 0 never gave up on rank 1"  # stuck in "training" meanwhile
                return None
            try:
                wb.log_metrics({"loss": 2.0}, step=1)
            except CollectiveTimeoutError as exc:
                wb.log_metrics({"loss": 3.0}, step=2)  # degraded: this rank's own value, no hang
                return {"error": str(exc), "ranks": exc.ranks, "call": exc.call}
            finally:
                released.set()
            return None

    result = values_or_raise(run_ranks(body, 2, timeout=240))[0]
    assert result is not None, "rank 0 did not raise"
    assert result["ranks"] == [1]
    assert "log_metrics at step 1" in result["error"] and "ranks [1] did not reach it" in result["error"]
    assert "timed out after 3 s" in result["error"]
    run = only_run(tmp_path)
    assert run.exit_code == 0  # the run was finished despite the failure
    assert [r["trainer/step"] for r in run.rows_with("metrics/loss")] == [0, 2]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_that_skips_a_call_is_caught_in_the_next_one(tmp_path: Path, make_logger: Callable) -> None:
    """Rank 1 skips a log_metrics call: at its next call (log_images) both ranks raise RanksOutOfStepError naming
    rank 1 and the call each rank is in."""

    def body(rank: int):
        with make_logger(str(tmp_path), on_logging_fault="raise") as wb:
            wb.log_metrics({"loss": 1.0}, step=0)
            try:
                if rank == 0:
                    wb.log_metrics({"loss": 2.0}, step=1)  # rank 1 skipped this one
                wb.log_images([np.zeros((4, 4, 3), np.uint8)], step=2)
            except RanksOutOfStepError as exc:
                return {"error": str(exc), "ranks": exc.ranks}
            return None

    for value in values_or_raise(run_ranks(body, 2, timeout=240)):
        assert value is not None and value["ranks"] == [1]
        assert "rank 1: log_images at step 2" in value["error"] and "rank 0: log_metrics at step 1" in value["error"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_that_skips_a_call_of_the_same_kind_is_caught_by_the_step(tmp_path: Path, make_logger: Callable,
                                                                         only_run: Callable) -> None:
    """Rank 1 skips step 1 of log_metrics: both ranks raise at the next call instead of averaging rank 0's step 1
    with rank 1's step 2 (gloo pairs the n-th collective of every rank), and nothing of it is logged."""

    def body(rank: int):
        with make_logger(str(tmp_path), on_logging_fault="raise") as wb:
            wb.log_metrics({"loss": 1.0}, step=0)
            try:
                for step in (1, 2) if rank == 0 else (2,):
                    wb.log_metrics({"loss": float(step)}, step=step)
            except RanksOutOfStepError as exc:
                return exc.ranks
            return None

    assert values_or_raise(run_ranks(body, 2, timeout=240)) == [[1], [1]]
    assert [r["trainer/step"] for r in only_run(tmp_path).rows_with("metrics/loss")] == [0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_primary_that_never_publishes_the_run_is_a_timeout_naming_it() -> None:
    """The run's start is broadcast through the store: rank 1 waits its bound for rank 0, then raises
    ``CollectiveTimeoutError`` naming rank 0, and its logging is closed. Rank 0 publishes only after that."""
    given_up = mp.get_context("fork").Event()

    def body(rank: int):
        from sdxl_dist_log.errors import CollectiveTimeoutError

        collectives = Collectives.create(rank=rank, world_size=2, timeout=30.0)
        if rank == 0:
            assert given_up.wait(200), "rank 1 never gave up"
            return None
        try:
            collectives.broadcast_json(None, src=0, call=CallInfo("init"), timeout=1.0)
        except CollectiveTimeoutError as exc:
            return {"ranks": exc.ranks, "message": str(exc), "active": collectives.active}
        finally:
            given_up.set()
        return None

    result = values_or_raise(run_ranks(body, 2, timeout=240))[1]
    assert result is not None and result["ranks"] == [0] and result["active"] is False
    assert result["message"].startswith("init on rank 1: rank 0 did not publish within 1 s")
