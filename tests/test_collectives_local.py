"""Tests of sdxl_dist_log.collectives without a process group: the identity path and the pure call-header check.

The multi-process behaviour (timeouts, absent ranks) is tested with real gloo processes elsewhere; here only what
needs no peer: ``Collectives.create`` outside torch.distributed, ``CallInfo`` and ``_check_in_step`` on given headers.
"""

from __future__ import annotations

import numpy as np
import pytest

from sdxl_dist_log.collectives import (
    CALL_HEADER,
    CallInfo,
    CollectiveError,
    Collectives,
    RanksOutOfStepError,
)

dist = pytest.importorskip("torch.distributed")


@pytest.fixture
def local() -> Collectives:
    assert not (dist.is_available() and dist.is_initialized())
    return Collectives.create(rank=3, world_size=8, timeout=5.0)


def test_create_without_process_group_is_inactive(local: Collectives) -> None:
    assert local.active is False
    assert local.world_size == 1
    assert local.rank == 3
    assert local.store is None
    assert local.failure is None


def test_all_gather_rows_identity(local: Collectives) -> None:
    row = np.array([1.0, 2.0, float("nan")])
    out = local.all_gather_rows(row, CallInfo("log_metrics", 1))
    assert out.shape == (1, 3)
    np.testing.assert_array_equal(out[0], row)
    out[0, 0] = 99.0
    assert row[0] == 1.0  # a copy, not a view


def test_all_gather_object_identity(local: Collectives) -> None:
    obj = {"a": [1, 2]}
    assert local.all_gather_object(obj, CallInfo("log_metrics")) == [obj]


def test_gather_bytes_identity(local: Collectives) -> None:
    payload = np.frombuffer(b"hello", dtype=np.uint8)
    out = local.gather_bytes(payload, [5], dst=0, call=CallInfo("log_images", 2))
    assert len(out) == 1
    assert out[0].tobytes() == b"hello"


@pytest.mark.parametrize("obj", [None, {"run_id": "abc", "tags": ["x"]}, [1, 2.5], "s"])
def test_broadcast_json_identity(local: Collectives, obj) -> None:
    assert local.broadcast_json(obj, src=0, call=CallInfo("init"), timeout=1.0) is obj


def test_counts_stay_zero(local: Collectives) -> None:
    local.all_gather_rows(np.zeros(2), CallInfo("log_metrics"))
    local.all_gather_object(1, CallInfo("log_metrics"))
    local.gather_bytes(np.zeros(0, np.uint8), [0], 0, CallInfo("log_images"))
    local.broadcast_json({}, 0, CallInfo("init"))
    assert sum(local.counts.values()) == 0
    assert local._sequence == 0


def test_constructor_defaults() -> None:
    c = Collectives(rank=0, world_size=1, timeout=2.0)
    assert c.presence_after == 0.5  # a quarter of the timeout, at most one second
    assert Collectives(rank=0, world_size=1, timeout=60.0).presence_after == 1.0
    assert c.active is False


# -- CallInfo ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "text", "kind"),
    [
        (CallInfo("log_metrics", 3), "log_metrics at step 3", 2),
        (CallInfo("log_metrics", 0), "log_metrics at step 0", 2),
        (CallInfo("init"), "init", 1),
        (CallInfo("log_images", 1200), "log_images at step 1200", 3),
        (CallInfo("log_model"), "log_model", 4),
        (CallInfo("log_config"), "log_config", 5),
        (CallInfo("finish"), "finish", 6),
        (CallInfo("something_else", 1), "something_else at step 1", 0),
    ],
)
def test_call_info(call: CallInfo, text: str, kind: int) -> None:
    assert str(call) == text
    assert call.kind == kind


# -- _check_in_step ---------------------------------------------------------------------------------------------
def _headers(*rows: tuple[float, float, float]) -> np.ndarray:
    """(sequence, kind, step) per rank; the row-length column is filled with a constant."""
    out = np.array([(*r, 8.0) for r in rows], dtype=np.float64)
    assert out.shape[1] == CALL_HEADER
    return out


LOG_METRICS = CallInfo("log_metrics", 3)


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_check_in_step_equal_headers_pass(rank: int) -> None:
    c = Collectives(rank=rank, world_size=3)
    c._check_in_step(_headers((5, 2, 3), (5, 2, 3), (5, 2, 3)), LOG_METRICS)
    c._check_in_step(_headers((1, 1, -1), (1, 1, -1), (1, 1, -1)), CallInfo("init"))
    assert c.failure is None


def test_check_in_step_rank_ahead_by_one_call() -> None:
    c = Collectives(rank=0, world_size=3)
    with pytest.raises(RanksOutOfStepError) as info:
        c._check_in_step(_headers((5, 2, 3), (5, 2, 3), (6, 2, 4)), LOG_METRICS)
    error = info.value
    message = str(error)
    assert error.ranks == [2]
    assert error.call == "log_metrics at step 3"
    assert "rank 2: log_metrics at step 4 (logging call #6)" in message
    assert "rank 0: log_metrics at step 3 (logging call #5)" in message
    assert "rank 1:" not in message  # only the reference and the odd ranks are listed
    assert "skipped or added a call" in message
    assert "on rank 0 (call #5)" in message
    assert c.failure is error
    assert isinstance(error, CollectiveError)


def test_check_in_step_different_kinds() -> None:
    c = Collectives(rank=1, world_size=3)
    with pytest.raises(RanksOutOfStepError) as info:
        c._check_in_step(_headers((7, 2, 10), (7, 3, 10), (7, 2, 10)), CallInfo("log_images", 10))
    message = str(info.value)
    assert info.value.ranks == [1]
    assert "ranks made different logging calls" in message
    assert "rank 1: log_images at step 10" in message
    assert "rank 0: log_metrics at step 10" in message


def test_check_in_step_different_steps_are_a_skipped_call() -> None:
    # gloo pairs the n-th collective of each rank: a rank that skipped a log_metrics call is one step ahead
    c = Collectives(rank=0, world_size=3)
    with pytest.raises(RanksOutOfStepError, match="ranks are at different steps") as info:
        c._check_in_step(_headers((4, 2, 100), (4, 2, 101), (4, 2, 100)), CallInfo("log_metrics", 100))
    assert info.value.ranks == [1]


def test_check_in_step_without_steps_cannot_compare_them() -> None:
    c = Collectives(rank=0, world_size=2)
    c._check_in_step(_headers((4, 2, -1), (4, 2, 101)), CallInfo("log_metrics"))
    assert c.failure is None


def test_check_in_step_unknown_kind_and_no_step_described() -> None:
    c = Collectives(rank=0, world_size=2)
    with pytest.raises(RanksOutOfStepError) as info:
        c._check_in_step(_headers((2, 6, -1), (2, 9, -1)), CallInfo("finish"))
    message = str(info.value)
    assert "rank 0: finish (logging call #2)" in message
    assert "rank 1: call kind 9 (logging call #2)" in message


def test_check_in_step_rank0_behind_is_the_one_named() -> None:
    c = Collectives(rank=1, world_size=3)
    with pytest.raises(RanksOutOfStepError) as info:
        c._check_in_step(_headers((4, 2, 3), (5, 2, 4), (5, 2, 4)), CallInfo("log_metrics", 4))
    assert info.value.ranks == [0]
