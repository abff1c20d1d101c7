"""Tests of sdxl_dist_log.framing: call descriptions and the pure check that every rank is in the same call."""

from __future__ import annotations

import numpy as np
import pytest

from sdxl_dist_log.errors import CollectiveError, RanksOutOfStepError
from sdxl_dist_log.framing import (
    CALL_HEADER,
    LENGTH,
    CallInfo,
    build_frame,
    checked_step,
    grown_frame,
    out_of_step,
)


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


# -- out_of_step ---------------------------------------------------------------------------------------------
def _headers(*rows: tuple[float, float, float]) -> np.ndarray:
    """(sequence, kind, step) per rank; the row-length column is filled with a constant."""
    out = np.array([(*r, 8.0) for r in rows], dtype=np.float64)
    assert out.shape[1] == CALL_HEADER
    return out


LOG_METRICS = CallInfo("log_metrics", 3)


def _error(error: RanksOutOfStepError | None) -> RanksOutOfStepError:
    assert isinstance(error, RanksOutOfStepError), error
    return error


@pytest.mark.parametrize("rank", [0, 1, 2])
def test_equal_headers_pass(rank: int) -> None:
    assert out_of_step(_headers((5, 2, 3), (5, 2, 3), (5, 2, 3)), LOG_METRICS, rank) is None
    assert out_of_step(_headers((1, 1, -1), (1, 1, -1), (1, 1, -1)), CallInfo("init"), rank) is None


def test_rank_ahead_by_one_call() -> None:
    rank = 0
    error = _error(out_of_step(_headers((5, 2, 3), (5, 2, 3), (6, 2, 4)), LOG_METRICS, rank))
    message = str(error)
    assert error.ranks == [2]
    assert error.call == "log_metrics at step 3"
    assert "rank 2: log_metrics at step 4 (logging call #6)" in message
    assert "rank 0: log_metrics at step 3 (logging call #5)" in message
    assert "rank 1:" not in message  # only the reference and the odd ranks are listed
    assert "skipped or added a call" in message
    assert "on rank 0 (call #5)" in message
    assert isinstance(error, CollectiveError)


def test_different_kinds() -> None:
    rank = 1
    error = _error(out_of_step(_headers((7, 2, 10), (7, 3, 10), (7, 2, 10)), CallInfo("log_images", 10), rank))
    message = str(error)
    assert error.ranks == [1]
    assert "ranks made different logging calls" in message
    assert "rank 1: log_images at step 10" in message
    assert "rank 0: log_metrics at step 10" in message


def test_different_steps_are_a_skipped_call() -> None:
    # gloo pairs the n-th collective of each rank: a rank that skipped a log_metrics call is one step ahead
    rank = 0
    error = _error(out_of_step(_headers((4, 2, 100), (4, 2, 101), (4, 2, 100)), CallInfo("log_metrics", 100), rank))
    assert "ranks are at different steps" in str(error)
    assert error.ranks == [1]


def test_without_steps_cannot_compare_them() -> None:
    rank = 0
    assert out_of_step(_headers((4, 2, -1), (4, 2, 101)), CallInfo("log_metrics"), rank) is None


def test_unknown_kind_and_no_step_described() -> None:
    rank = 0
    error = _error(out_of_step(_headers((2, 6, -1), (2, 9, -1)), CallInfo("finish"), rank))
    message = str(error)
    assert "rank 0: finish (logging call #2)" in message
    assert "rank 1: call kind 9 (logging call #2)" in message


def test_rank0_behind_is_the_one_named() -> None:
    rank = 1
    error = _error(out_of_step(_headers((4, 2, 3), (5, 2, 4), (5, 2, 4)), CallInfo("log_metrics", 4), rank))
    assert error.ranks == [0]


def test_frame_pads_to_one_size_and_keeps_the_true_length() -> None:
    frame = build_frame(np.array([1.0, 2.0, 3.0]), sequence=7, call=CallInfo("log_metrics", 12), frame=8)
    assert frame.shape == (CALL_HEADER + 8,)
    np.testing.assert_array_equal(frame[:CALL_HEADER], [7, 2, 12, 3])
    np.testing.assert_array_equal(frame[CALL_HEADER : CALL_HEADER + 3], [1, 2, 3])
    assert np.isnan(frame[CALL_HEADER + 3 :]).all()


def test_a_row_longer_than_the_frame_is_cut_but_announced() -> None:
    frame = build_frame(np.arange(10.0), sequence=1, call=CallInfo("log_metrics"), frame=4)
    assert frame[LENGTH] == 10 and frame[2] == -1  # no step: -1
    np.testing.assert_array_equal(frame[CALL_HEADER:], [0, 1, 2, 3])


@pytest.mark.parametrize(("longest", "frame", "expected"), [(3, 128, 128), (128, 128, 128), (129, 128, 256),
                                                            (1000, 128, 1024), (1025, 128, 2048)])
def test_frames_grow_to_the_next_power_of_two(longest: int, frame: int, expected: int) -> None:
    assert grown_frame(longest, frame) == expected


@pytest.mark.parametrize("step", [None, 0, 7, np.int64(12)])
def test_checked_step_keeps_ints_and_none(step) -> None:
    got = checked_step(step, ValueError)
    assert got == step and (got is None or type(got) is int)


@pytest.mark.parametrize(("step", "words"), [("1350", "str"), ("seven", "str"), (1.0, "float"), (True, "bool"),
                                             (-5, ">= 0")])
def test_checked_step_names_the_step(step, words: str) -> None:
    with pytest.raises(KeyError, match=words):
        checked_step(step, KeyError)
