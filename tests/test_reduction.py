"""Tests of sdxl_dist_log.reduction: MetricReducer turns one rank's input into a row that always reaches the
collective, and reduces the gathered rows of every rank, in one process.

``prepare`` must never raise: a rank that raised before the collective would leave the others waiting until the
timeout. The other ranks are real MetricReducers whose collectives run in the in-process simulator
(``sdxl_dist_log.testing.simulate``); the real collectives are tested in tests/test_collectives.py, the pure packing
in tests/test_metrics.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest
import torch

from sdxl_dist_log.collectives import Collectives
from sdxl_dist_log.errors import MetricKeyMismatchError, MetricValueError
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.metrics import ERROR_FLAG, Reduce, pack_row
from sdxl_dist_log.reduction import _PLAN_CACHE_SIZE, MetricReducer, PreparedMetrics
from sdxl_dist_log.testing.simulate import SimulatedJob
from sdxl_dist_log.topology import Layout

CALL = CallInfo("log_metrics", 3)


def _reducer(collectives: Any = None, warned: list[str] | None = None, **options: Any) -> MetricReducer:
    options.setdefault("metric_reduce", {})
    options.setdefault("primary_rank", 0)
    options.setdefault("strict_keys", False)
    local = Collectives.create(rank=0, world_size=1, timeout=5.0)
    sink = warned if warned is not None else []
    return MetricReducer(collectives or local, warn=lambda message, key: sink.append(message), **options)


def _job(metrics: list[Mapping[str, Any]], reduce: Any = None, warned: list[str] | None = None,
         strict_keys: bool = False) -> tuple[dict[int, Any], SimulatedJob]:
    """One call of ranks 0..n-1 (one node) passing ``metrics[r]``, each through its own MetricReducer; the ranks'
    collectives run in the in-process simulator (the same steps as over gloo)."""
    job = SimulatedJob(Layout.regular(len(metrics), len(metrics)))
    sink = warned if warned is not None else []
    reducers = [MetricReducer(job.rank(r), metric_reduce={}, primary_rank=0, strict_keys=strict_keys,
                              warn=lambda message, key, r=r: r == 0 and sink.append(message))
                for r in range(len(metrics))]
    steps = {r: reducers[r].steps(reducers[r].prepare(m, reduce, non_blocking=False), CALL)
             for r, m in enumerate(metrics)}
    return job.run(steps), job


# -- prepare: input errors become a flagged row -----------------------------------------------------------------------
def test_valid_input_is_packed_in_sorted_key_order() -> None:
    """Numbers, numpy scalars and tensors pack into float64 values in sorted key order, with no error."""
    prepared = _reducer().prepare({"b": 2, "a": np.float32(1.5), "c": torch.tensor([3.0])}, None, non_blocking=False)
    assert prepared.error is None and prepared.plan.keys == ("a", "b", "c")
    assert prepared.values is not None and prepared.values().tolist() == [1.5, 2.0, 3.0]


class _Broken(Mapping):
    """A mapping whose values cannot be read: an error that is not a MetricValueError."""

    def __getitem__(self, key: str) -> float:
        raise RuntimeError("storage went away")

    def __iter__(self) -> Iterator[str]:
        return iter(["loss"])

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize("metrics, reduce, words, keys", [
    ({"ok": 1.0, "bad": "oops"}, None, ["'bad'", "str"], ("bad", "ok")),
    ({"ok": 1.0, "vec": torch.ones(3)}, None, ["'vec'", "(3,)"], ("ok", "vec")),
    ({"ok": 1.0, "none": None}, None, ["'none'", "NoneType"], ("none", "ok")),
    ({"": 1.0}, None, ["metric key ''"], ("",)),
    ({1: 1.0}, None, ["metric key 1"], ("1",)),
    ({"a": 1.0, 2: 1.0}, None, ["metric key 2"], ("2", "a")),
    ([("loss", 1.0)], None, ["must be a mapping", "list"], ()),
    ({"loss": 1.0}, "avg", ["'avg'", "mean"], ("loss",)),
    (_Broken(), None, ["RuntimeError", "storage went away"], ("loss",)),
], ids=["string-value", "vector", "none", "empty-key", "int-key", "mixed-key-types", "not-a-mapping", "bad-op",
        "unreadable"])
def test_bad_input_is_a_flagged_row_naming_the_problem(metrics: Any, reduce: Any, words: list[str],
                                                      keys: tuple[str, ...]) -> None:
    """Every bad input comes back as a PreparedMetrics with a MetricValueError naming the key (or argument), no
    values, and a plan of the keys as strings, never as an exception."""
    prepared = _reducer().prepare(metrics, reduce, non_blocking=False)
    assert isinstance(prepared.error, MetricValueError)
    for word in words:
        assert word in str(prepared.error), (word, str(prepared.error))
    assert prepared.values is None
    assert prepared.plan.keys == keys
    assert pack_row(prepared.plan, None)[ERROR_FLAG] == 1.0  # the error flag travels in the row


def test_failed_keeps_the_plan_and_the_first_error() -> None:
    """``failed`` turns a good call into a failed one with the same plan; an earlier error is kept over a later."""
    reducer = _reducer()
    good = reducer.prepare({"loss": 1.0}, None, non_blocking=False)
    bad_step = MetricValueError("step=-1 must be >= 0")
    failed = good.failed(bad_step)
    assert (failed.plan, failed.values, failed.error) == (good.plan, None, bad_step)
    bad_value = reducer.prepare({"loss": "x"}, None, non_blocking=False)
    assert bad_value.failed(bad_step).error is bad_value.error
    assert isinstance(failed, PreparedMetrics) and good.error is None  # frozen: the original is untouched


# -- the plan: reduce ops and its cache -------------------------------------------------------------------------------
def test_ops_come_from_the_call_then_the_config_then_mean() -> None:
    """A per-call mapping adds to ``metric_reduce`` (and wins on a clash); keys neither covers are averaged; one
    op for the call applies to every key."""
    reducer = _reducer(metric_reduce={"tokens/*": "sum", "lr": "local"})
    plan = reducer.prepare({"tokens/a": 1, "lr": 1.0, "loss": 1.0}, {"lr": "max"}, non_blocking=False).plan
    assert dict(zip(plan.keys, plan.ops)) == {"loss": Reduce.MEAN, "lr": Reduce.MAX, "tokens/a": Reduce.SUM}
    plan = reducer.prepare({"tokens/a": 1, "loss": 1.0}, "min", non_blocking=False).plan
    assert plan.ops == (Reduce.MIN, Reduce.MIN)


def test_the_plan_is_cached_per_key_set_and_reduce() -> None:
    """The same keys (in any order) and reduce reuse one plan; a different reduce or key set gets its own."""
    reducer = _reducer()
    first = reducer.prepare({"a": 1.0, "b": 2.0}, {"a": "sum", "b": "max"}, non_blocking=False).plan
    again = reducer.prepare({"b": 5.0, "a": 6.0}, {"b": "max", "a": "sum"}, non_blocking=False).plan
    assert again is first
    assert reducer.prepare({"a": 1.0, "b": 2.0}, "sum", non_blocking=False).plan is not first
    assert reducer.prepare({"a": 1.0}, {"a": "sum"}, non_blocking=False).plan is not first


def test_the_plan_cache_stays_bounded() -> None:
    """A loop that logs ever new key sets does not grow the cache past its bound."""
    reducer = _reducer()
    for i in range(3 * _PLAN_CACHE_SIZE):
        reducer.prepare({f"k{i}": 1.0}, None, non_blocking=False)
    assert 0 < len(reducer._plans) <= _PLAN_CACHE_SIZE


# -- reduce -----------------------------------------------------------------------------------------------------------
def test_one_process_reduces_to_its_own_values() -> None:
    """Without a process group, every op gives this rank's value (per_rank as rank 0's)."""
    reducer = _reducer()
    prepared = reducer.prepare({"m": 2.0, "s": 3.0, "p": 4.0}, {"s": "sum", "p": "per_rank"}, non_blocking=False)
    assert reducer.reduce(prepared, CALL).values == {"m": 2.0, "s": 3.0, "p/rank0": 4.0}


def test_own_bad_input_raises_after_the_collective() -> None:
    """A flagged row raises at ``reduce`` (after the collective), naming the call, the rank and the cause."""
    reducer = _reducer()
    prepared = reducer.prepare({"loss": "oops"}, None, non_blocking=False)
    with pytest.raises(MetricValueError, match=r"log_metrics at step 3: ranks \[0\].*'loss'"):
        reducer.reduce(prepared, CALL)


def test_same_keys_on_every_rank_reduce_in_one_collective() -> None:
    """With the same keys everywhere the rows reduce positionally in one all_gather; no object gather."""
    results, job = _job([{"loss": 1.0, "tok": 3.0}, {"loss": 3.0, "tok": 5.0}, {"loss": 5.0, "tok": 7.0}],
                        {"tok": "sum"})
    assert all(r.values == {"loss": 3.0, "tok": 15.0} for r in results.values())
    assert job.records[0].pattern() == [("all_gather", "node", 3)]


def test_another_rank_s_bad_input_raises_here_naming_that_rank() -> None:
    """A peer's flagged row fails the call on this rank too, naming the peer, though this rank's input was good."""
    results, _ = _job([{"loss": 1.0}, {"loss": "oops"}])
    assert isinstance(results[0], MetricValueError)
    assert "ranks [1] passed invalid metric values; nothing was logged" in str(results[0])


def test_differing_keys_log_the_union_and_warn() -> None:
    """Ranks with different keys: each key reduced over the ranks that passed it, and one warning naming the key and
    the ranks without it; the entries travel in one more round (lengths, then the pickles)."""
    warned: list[str] = []
    results, job = _job([{"shared": 1.0}, {"shared": 3.0, "extra": 10.0}], warned=warned)
    assert results[0].values == {"extra": 10.0, "shared": 2.0} == results[1].values
    assert job.records[0].pattern() == [("all_gather", "node", 2)] * 3
    assert len(warned) == 1 and "'extra' missing on ranks [0]" in warned[0] and "log_metrics at step 3" in warned[0]


def test_differing_keys_with_strict_keys_raise_naming_what_is_missing() -> None:
    """With ``strict_keys`` the same situation raises MetricKeyMismatchError with key -> ranks missing it."""
    results, _ = _job([{"a": 1.0}, {"a": 1.0, "b": 2.0}], strict_keys=True)
    assert isinstance(results[0], MetricKeyMismatchError)
    assert results[0].missing == {"b": [0]}
