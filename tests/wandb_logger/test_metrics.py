"""WandbLogger.log_metrics: what one call logs in one process, and how every rank's values reduce into one row.

Single-process cases share one forked child (one wandb-core start); multi-rank cases run real gloo ranks with
``run_ranks``. Every case reads the run back from disk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch  # imported once here so that forked children do not each pay for it

from sdxl_dist_log import WandbConfig, WandbLogger
from sdxl_dist_log.launch.local import run_ranks, values_or_raise

pytestmark = pytest.mark.timeout(300)

RANKS_TIMEOUT_S = 240.0
"""Hard bound of a multi-rank case, only there to catch a hang."""


# -- one process -------------------------------------------------------------------------------------------------------
def _one_process() -> dict[str, Any]:
    from sdxl_dist_log.errors import MetricValueError

    out: dict[str, Any] = {"errors": {}}
    config = WandbConfig(project="metrics", mode="offline", dir="out", log_system_metrics=False,
                         metric_reduce={"tokens/*": "sum", "lr": "local"})
    with WandbLogger(config) as wb:
        out["returned"] = wb.log_metrics({
            "py_int": 3, "py_float": 0.25, "py_bool": True,
            "np_f32": np.float32(1.5), "np_i64": np.int64(7), "np_f16": np.float16(0.5), "np_0d": np.array(2.0),
            "t_0d": torch.tensor(2.5), "t_1el": torch.tensor([4.0]), "t_bf16": torch.tensor(1.0, dtype=torch.bfloat16),
            "t_int": torch.tensor(9), "tokens/a": 10, "lr": 1e-4,
        }, step=0)
        for step, bad in ((1, {"ok": 1.0, "bad_str": "oops"}), (2, {"ok": 1.0, "vec": torch.ones(3)}),
                          (3, {"ok": 1.0, "arr": np.ones(2)}), (4, {"ok": 1.0, "none": None})):
            try:
                wb.log_metrics(bad, step=step)
            except MetricValueError as exc:
                out["errors"][step] = str(exc)
        out["nonfinite"] = wb.log_metrics({"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf}, step=5)
        out["pending"] = wb.log_metrics({"part_a": 1.0}, step=6, commit=False)
        wb.log_metrics({"part_b": 2.0}, step=6)
        out["call_reduce"] = wb.log_metrics({"x": 1.0}, step=7, reduce="sum")
        out["unprefixed"] = wb.log_metrics({"plain": 1.25}, step=8, prefix="")
        out["run_dir"] = os.path.abspath(wb.run_dir)
    return out


@pytest.fixture(scope="module")
def metrics(scenario: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return scenario(_one_process, "metrics")


def test_numbers_numpy_scalars_and_tensors_are_logged(metrics: dict[str, Any], row_with: Callable) -> None:
    """Python numbers, numpy scalars and 0-d/1-element tensors of any dtype log as floats, prefixed "metrics/"."""
    expected = {"py_int": 3.0, "py_float": 0.25, "py_bool": 1.0, "np_f32": 1.5, "np_i64": 7.0, "np_f16": 0.5,
                "np_0d": 2.0, "t_0d": 2.5, "t_1el": 4.0, "t_bf16": 1.0, "t_int": 9.0, "tokens/a": 10.0, "lr": 1e-4}
    prefixed = {f"metrics/{k}": v for k, v in expected.items()}
    assert metrics["returned"] == pytest.approx(prefixed)
    assert all(type(v) is float for v in metrics["returned"].values())
    row = row_with(metrics["run"], "metrics/py_int")
    assert row["trainer/step"] == 0
    assert {k: row[k] for k in prefixed} == pytest.approx(prefixed)


@pytest.mark.parametrize("step, key", [(1, "bad_str"), (2, "vec"), (3, "arr"), (4, "none")])
def test_bad_value_raises_naming_the_key_and_logs_nothing(metrics: dict[str, Any], step: int, key: str) -> None:
    """A value that is not one number names its key in the error, and no key of that call is logged."""
    assert f"'{key}'" in metrics["errors"][step]
    assert [row for row in metrics["run"].history if row.get("trainer/step") == step] == []
    assert "metrics/ok" not in metrics["run"].keys()


def test_nan_and_inf_are_logged_as_they_are(metrics: dict[str, Any], row_with: Callable) -> None:
    """NaN and ±inf are returned and written unchanged, never dropped or replaced."""
    returned = metrics["nonfinite"]
    assert math.isnan(returned["metrics/nan"]) and returned["metrics/inf"] == math.inf
    assert returned["metrics/ninf"] == -math.inf
    row = row_with(metrics["run"], "metrics/nan")
    assert row["trainer/step"] == 5
    assert math.isnan(float(row["metrics/nan"]))
    assert float(row["metrics/inf"]) == math.inf and float(row["metrics/ninf"]) == -math.inf


def test_commit_false_merges_into_the_next_row(metrics: dict[str, Any]) -> None:
    """``commit=False`` values wait and land in the same row as the next committed call's."""
    assert metrics["pending"] == {"metrics/part_a": 1.0}
    [row] = [row for row in metrics["run"].history if row.get("trainer/step") == 6]
    assert (row["metrics/part_a"], row["metrics/part_b"]) == (1.0, 2.0)


def test_metric_reduce_config_and_call_reduce_accepted(metrics: dict[str, Any]) -> None:
    """``metric_reduce`` globs and a per-call ``reduce`` are accepted; in one process they keep the value."""
    assert metrics["returned"]["metrics/tokens/a"] == 10.0 and metrics["returned"]["metrics/lr"] == 1e-4
    assert metrics["call_reduce"] == {"metrics/x": 1.0}
    assert metrics["run"].exit_code == 0


def test_empty_prefix_gives_unprefixed_keys(metrics: dict[str, Any], row_with: Callable) -> None:
    """``prefix=""`` turns the metric prefix off for that call only."""
    assert metrics["unprefixed"] == {"plain": 1.25}
    assert row_with(metrics["run"], "plain")["trainer/step"] == 8
    assert "metrics/plain" not in metrics["run"].keys()


# -- across ranks ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_one_run_with_exact_reductions(tmp_path: Path, world: int, make_logger: Callable, only_run: Callable) -> None:
    """Every reduce op gives the exact value over all ranks, in the primary's one run; only the primary owns it."""
    ops = {"m": "mean", "s": "sum", "lo": "min", "hi": "max", "pr": "per_rank", "own": "local"}

    def body(rank: int) -> bool:
        with make_logger(str(tmp_path), metric_reduce=ops) as wb:
            for step in range(3):
                v = float((rank + 1) * (step + 1))
                wb.log_metrics({"m": torch.tensor(v), "s": v, "lo": np.float32(v), "hi": v, "pr": v, "own": v},
                               step=step)
            return wb.is_primary

    assert values_or_raise(run_ranks(body, world, timeout=RANKS_TIMEOUT_S)) == [True] + [False] * (world - 1)
    run = only_run(tmp_path)
    assert run.exit_code == 0
    assert run.config["sdxl_dist_log"]["world_size"] == world
    rows = run.rows_with("metrics/m")
    assert len(rows) == 3
    for step, row in enumerate(rows):
        per_rank = [(r + 1) * (step + 1) for r in range(world)]
        assert row["trainer/step"] == step
        assert row["metrics/m"] == pytest.approx(sum(per_rank) / world)
        assert row["metrics/s"] == sum(per_rank)
        assert row["metrics/lo"] == min(per_rank)
        assert row["metrics/hi"] == max(per_rank)
        assert row["metrics/own"] == per_rank[0]
        assert [row[f"metrics/pr/rank{r}"] for r in range(world)] == per_rank


@pytest.mark.slow
def test_one_collective_per_call_whatever_the_number_of_keys(tmp_path: Path, make_logger: Callable,
                                                              only_run: Callable) -> None:
    """In the steady state a call is one ``all_gather_single`` on the logger's 2-rank group, for 8 or 512 keys."""
    from sdxl_dist_log.testing.probe import CollectiveProbe

    def body(rank: int) -> dict[int, Any]:
        with make_logger(str(tmp_path)) as wb, CollectiveProbe() as probe:
            per_call = {}
            for n_keys in (8, 64, 512):
                metrics = {f"k{i:03d}": float(i + rank) for i in range(n_keys)}
                wb.log_metrics(metrics, step=n_keys)  # may grow the row capacity once (one extra gather)
                probe.reset()
                for step in range(5):
                    wb.log_metrics(metrics, step=n_keys + 1 + step)
                per_call[n_keys] = {"api": {op: n / 5 for op, n in probe.api.items()},
                                    "groups": sorted({c.group_size for c in probe.calls})}
            return per_call

    for per_call in values_or_raise(run_ranks(body, 2, timeout=RANKS_TIMEOUT_S)):
        for n_keys, seen in per_call.items():
            assert seen["api"] == {"all_gather_single": 1.0}, f"{n_keys} keys: {seen}"
            assert seen["groups"] == [2], f"{n_keys} keys: {seen}"
    last = only_run(tmp_path).rows_with("metrics/k511")[-1]
    assert last["metrics/k511"] == pytest.approx(511.5)


@pytest.mark.slow
def test_differing_keys_log_the_union_reduced_over_the_ranks_that_passed_each(tmp_path: Path, make_logger: Callable,
                                                                              only_run: Callable) -> None:
    """Ranks with different keys get the same union on every rank; a key is averaged over its ranks only."""
    def body(rank: int) -> dict[str, float]:
        with make_logger(str(tmp_path)) as wb:
            metrics = {"shared": float(rank + 1), f"only{rank}": 10.0 * (rank + 1)}
            if rank == 2:
                metrics = {"shared": 3.0}
            logged = wb.log_metrics(metrics, step=0)
            wb.log_metrics({"after": 1.0}, step=1)  # the group still works afterwards
            return logged

    values = values_or_raise(run_ranks(body, 3, timeout=RANKS_TIMEOUT_S))
    assert values[0] == values[1] == values[2]
    run = only_run(tmp_path)
    row = run.rows_with("metrics/shared")[0]
    assert row["metrics/shared"] == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert row["metrics/only0"] == 10.0  # rank 0 alone: its own value, not divided by 3
    assert row["metrics/only1"] == 20.0
    assert run.rows_with("metrics/after")[0]["trainer/step"] == 1


@pytest.mark.slow
def test_differing_keys_with_strict_raise_on_every_rank_naming_ranks_and_keys(tmp_path: Path,
                                                                              make_logger: Callable) -> None:
    """With ``strict_keys`` every rank raises MetricKeyMismatchError naming the key, the ranks and the call."""
    def body(rank: int) -> str | None:
        from sdxl_dist_log import MetricKeyMismatchError

        with make_logger(str(tmp_path), strict_keys=True) as wb:
            try:
                wb.log_metrics({"a": 1.0} if rank == 0 else {"a": 1.0, "b": 2.0}, step=0)
            except MetricKeyMismatchError as exc:
                return str(exc)
            return None

    for message in values_or_raise(run_ranks(body, 2, timeout=RANKS_TIMEOUT_S)):
        assert message is not None and "'b' missing on ranks [0]" in message and "log_metrics at step 0" in message


@pytest.mark.slow
def test_a_bad_value_on_one_rank_raises_on_every_rank_and_logs_nothing(tmp_path: Path, make_logger: Callable,
                                                                        only_run: Callable) -> None:
    """One rank's bad value fails that call on every rank: that rank raises its own error naming the key, the other,
    with ``on_logging_fault="raise"``, one naming the rank; the next call logs as usual. (The default policy, where
    the other rank logs instead of raising, is in test_bad_inputs.py.)"""
    def body(rank: int) -> str | None:
        from sdxl_dist_log.errors import MetricValueError

        with make_logger(str(tmp_path), on_logging_fault="raise") as wb:
            wb.log_metrics({"loss": 1.0}, step=0)
            try:
                wb.log_metrics({"loss": "oops" if rank == 1 else 2.0}, step=1)
            except MetricValueError as exc:
                error = str(exc)
            else:
                error = None
            wb.log_metrics({"loss": 3.0}, step=2)
            return error

    errors = values_or_raise(run_ranks(body, 2, timeout=RANKS_TIMEOUT_S))
    assert errors[0] is not None and "log_metrics at step 1: ranks [1] passed invalid metric values" in errors[0]
    assert errors[1] is not None and errors[1].startswith("log_metrics at step 1 on rank 1: metric 'loss'")
    assert [row["trainer/step"] for row in only_run(tmp_path).rows_with("metrics/loss")] == [0, 2]


# -- async_metrics -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_async_metrics_keep_order_and_values(tmp_path: Path, make_logger: Callable, only_run: Callable) -> None:
    """With ``async_metrics`` calls return None at once, and every row lands in order with the reduced value."""
    def body(rank: int) -> bool:
        with make_logger(str(tmp_path), async_metrics=True) as wb:
            for step in range(20):
                assert wb.log_metrics({"x": float(step * (rank + 1))}, step=step) is None
            wb.log_images([np.full((4, 4, 3), 255, np.uint8)], captions=[f"r{rank}"], step=19)
        return True

    values_or_raise(run_ranks(body, 2, timeout=RANKS_TIMEOUT_S))
    run = only_run(tmp_path)
    rows = run.rows_with("metrics/x")
    assert [r["trainer/step"] for r in rows] == list(range(20))
    assert [r["metrics/x"] for r in rows] == [step * 1.5 for step in range(20)]
    assert run.rows_with("sample/images")[0]["sample/images"]["count"] == 2


@pytest.mark.slow
def test_async_errors_never_make_one_rank_skip_a_call(tmp_path: Path, make_logger: Callable,
                                                      only_run: Callable) -> None:
    """An error surfaces once per rank, at different calls on different ranks, and no rank skips a call.

    Rank 1's own bad value raises at its call, once the flagged row is queued; it then waits until its worker has
    run step 0 with rank 0. Rank 0 (``on_logging_fault="raise"``) does not wait, so its error surfaces later, at a
    later call or at ``finish``. Steps 1..3 must still be reduced over both ranks: a rank that raised before
    queueing its call would leave the other waiting, or pair steps wrongly.
    """
    def body(rank: int) -> int:
        from sdxl_dist_log.errors import MetricValueError

        errors = 0
        with make_logger(str(tmp_path), async_metrics=True, on_logging_fault="raise") as wb:
            for step in range(4):
                try:
                    wb.log_metrics({"loss": "bad" if (rank == 1 and step == 0) else float(10 * step + rank)},
                                   step=step)
                except MetricValueError:
                    errors += 1
                if rank == 1 and step == 0:  # its worker runs step 0 (with rank 0) and keeps the error
                    assert wb._dispatcher.drain(timeout=RANKS_TIMEOUT_S / 2), "rank 1's worker did not run step 0"
            try:
                wb.finish()
            except MetricValueError:
                errors += 1
        return errors

    assert values_or_raise(run_ranks(body, 2, timeout=RANKS_TIMEOUT_S)) == [1, 1]
    rows = only_run(tmp_path).rows_with("metrics/loss")
    assert [(r["trainer/step"], r["metrics/loss"]) for r in rows] == [(1, 10.5), (2, 20.5), (3, 30.5)]
