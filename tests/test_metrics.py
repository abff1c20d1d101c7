"""Tests of sdxl_dist_log.metrics: pure packing, reduce plans, fingerprints and the reductions, no collectives.

The rows are built the way ``WandbLogger`` builds them (``pack_row`` per rank, stacked as ``all_gather`` would), so
every reduce op is checked on exact rank-dependent values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdxl_dist_log.metrics import (
    ERROR_FLAG,
    FINGERPRINT,
    HEADER_SIZE,
    KEY_COUNT,
    MetricKeyMismatchError,
    MetricPlan,
    MetricValueError,
    Reduce,
    apply_prefix,
    describe_missing,
    pack_row,
    pack_values,
    reduce_rows,
    reduce_union,
    resolve_reduce,
)

torch = pytest.importorskip("torch")

KEYS = ["loss", "lr", "tokens/text", "tokens/image", "grad_norm"]


# -- resolve_reduce ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reduce", "default", "expected"),
    [
        (None, Reduce.MEAN, ["mean"] * 5),
        (None, "max", ["max"] * 5),
        ("sum", Reduce.MEAN, ["sum"] * 5),
        (Reduce.PER_RANK, Reduce.MEAN, ["per_rank"] * 5),
        ({}, Reduce.MEAN, ["mean"] * 5),
        ({"lr": "local"}, Reduce.MEAN, ["mean", "local", "mean", "mean", "mean"]),
        ({"tokens/*": "sum"}, Reduce.MEAN, ["mean", "mean", "sum", "sum", "mean"]),
        # an exact key wins over a pattern listed before it
        ({"tokens/*": "sum", "tokens/image": "max"}, Reduce.MEAN, ["mean", "mean", "sum", "max", "mean"]),
        # among patterns, the first that matches wins
        ({"tokens/i*": "min", "tokens/*": "sum"}, Reduce.MEAN, ["mean", "mean", "sum", "min", "mean"]),
        ({"*": "max", "loss": "mean"}, Reduce.MIN, ["mean", "max", "max", "max", "max"]),
        ({"g?ad_norm": Reduce.MAX}, "per_rank", ["per_rank", "per_rank", "per_rank", "per_rank", "max"]),
        ({"LOSS": "sum"}, Reduce.MEAN, ["mean"] * 5),  # case-sensitive
    ],
)
def test_resolve_reduce(reduce, default, expected) -> None:
    ops = resolve_reduce(KEYS, reduce, default)
    assert [op.value for op in ops] == expected
    assert all(isinstance(op, Reduce) for op in ops)


def test_resolve_reduce_no_keys() -> None:
    assert resolve_reduce([], {"x": "sum"}) == ()


@pytest.mark.parametrize(
    ("reduce", "default", "where"),
    [
        ("avg", Reduce.MEAN, "all keys"),
        ({"loss": "median"}, Reduce.MEAN, "'loss'"),
        ({"tokens/*": "total"}, Reduce.MEAN, "'tokens/*'"),
        ({}, "average", "the default"),
        ({"unused_key": "bogus"}, Reduce.MEAN, "'unused_key'"),  # a bad op is caught even if no key uses it
    ],
)
def test_resolve_reduce_bad_op_lists_allowed(reduce, default, where) -> None:
    with pytest.raises(MetricValueError) as info:
        resolve_reduce(KEYS, reduce, default)
    message = str(info.value)
    assert where in message
    for op in Reduce:
        assert op.value in message


# -- pack_values ------------------------------------------------------------------------------------------------
NUMERIC_VALUES = [
    pytest.param(3, 3.0, id="int"),
    pytest.param(-2.5, -2.5, id="float"),
    pytest.param(True, 1.0, id="bool-true"),
    pytest.param(False, 0.0, id="bool-false"),
    pytest.param(2**40, float(2**40), id="big-int"),
    pytest.param(np.float32(0.5), 0.5, id="np-float32"),
    pytest.param(np.float16(1.5), 1.5, id="np-float16"),
    pytest.param(np.float64(-1e-8), -1e-8, id="np-float64"),
    pytest.param(np.int8(-7), -7.0, id="np-int8"),
    pytest.param(np.uint64(12), 12.0, id="np-uint64"),
    pytest.param(np.bool_(True), 1.0, id="np-bool"),
    pytest.param(np.array(4.25), 4.25, id="np-0d"),
    pytest.param(np.array([7], dtype=np.int32), 7.0, id="np-1elem-int32"),
    pytest.param(np.array([[0.25]], dtype=np.float32), 0.25, id="np-1x1-float32"),
    pytest.param(np.array(True), 1.0, id="np-0d-bool"),
    pytest.param(torch.tensor(1.25), 1.25, id="torch-0d-float32"),
    pytest.param(torch.tensor([2.5], dtype=torch.float64), 2.5, id="torch-1elem-float64"),
    pytest.param(torch.tensor([[0.5]], dtype=torch.float16), 0.5, id="torch-1x1-float16"),
    pytest.param(torch.tensor(0.75, dtype=torch.bfloat16), 0.75, id="torch-bfloat16"),
    pytest.param(torch.tensor(9, dtype=torch.int64), 9.0, id="torch-int64"),
    pytest.param(torch.tensor(200, dtype=torch.uint8), 200.0, id="torch-uint8"),
    pytest.param(torch.tensor(True), 1.0, id="torch-bool"),
    pytest.param(torch.tensor(3.0, requires_grad=True) * 2, 6.0, id="torch-requires-grad"),
]


@pytest.mark.parametrize(("value", "expected"), NUMERIC_VALUES)
def test_pack_values_numeric(value, expected: float) -> None:
    out = pack_values({"x": value}, ["x"])
    assert out.dtype == np.float64
    assert out.shape == (1,)
    assert out[0] == expected


def test_pack_values_uses_the_given_key_order() -> None:
    metrics = {"b": 2, "a": torch.tensor(1.0), "c": np.float32(3)}
    assert pack_values(metrics, ["a", "b", "c"]).tolist() == [1.0, 2.0, 3.0]
    assert pack_values(metrics, ["c", "a"]).tolist() == [3.0, 1.0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(float("nan"), "nan"), (float("inf"), "inf"), (np.float32("-inf"), "-inf"), (torch.tensor(float("nan")), "nan")],
)
def test_pack_values_non_finite_kept(value, expected: str) -> None:
    out = pack_values({"x": value}, ["x"])
    assert repr(float(out[0])) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("0.5", "str", id="string"),
        pytest.param(None, "NoneType", id="none"),
        pytest.param([1.0], "list", id="list"),
        pytest.param({"a": 1}, "dict", id="dict"),
        pytest.param(1 + 2j, "complex", id="complex"),
        pytest.param(np.complex64(1 + 1j), "complex", id="np-complex"),
        pytest.param(np.array([1 + 1j]), "complex", id="np-complex-array"),
        pytest.param(np.array(["a"]), "str", id="np-string-array"),
        pytest.param(np.array([1.0, 2.0]), "shape (2,)", id="np-multi"),
        pytest.param(np.zeros((0,)), "shape (0,)", id="np-empty"),
        pytest.param(torch.ones(3), "shape (3,)", id="torch-multi"),
        pytest.param(torch.ones(2, 2), "shape (2, 2)", id="torch-2x2"),
        pytest.param(torch.zeros(0), "shape (0,)", id="torch-empty"),
        pytest.param(torch.tensor(1 + 1j), "complex", id="torch-complex"),
    ],
)
def test_pack_values_errors_name_the_key(value, fragment: str) -> None:
    with pytest.raises(MetricValueError) as info:
        pack_values({"ok": 1.0, "bad/key": value}, ["ok", "bad/key"])
    assert "'bad/key'" in str(info.value)
    assert fragment in str(info.value)


def test_pack_values_missing_key_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        pack_values({}, ["absent"])


# -- pack_row / reduce_rows -------------------------------------------------------------------------------------
WORLD = 4


def _rank_value(rank: int, j: int) -> float:
    """Distinct, exactly representable values per rank and key; not monotonic in rank for key 1."""
    return [10.0 * (rank + 1), (-1.0) ** rank * (rank + 0.5), 2.0 ** rank, 0.25 * rank][j]


def _gather(plan: MetricPlan, world: int = WORLD) -> np.ndarray:
    rows = [pack_row(plan, np.array([_rank_value(r, j) for j in range(len(plan.keys))])) for r in range(world)]
    return np.stack(rows)


def _plan(op: Reduce) -> MetricPlan:
    keys = ("a", "b", "c", "d")
    return MetricPlan(keys, (op,) * len(keys))


def test_pack_row_layout() -> None:
    plan = MetricPlan(("a", "b"), (Reduce.MEAN, Reduce.SUM))
    row = pack_row(plan, np.array([1.5, -2.0]))
    assert row.shape == (HEADER_SIZE + 2,)
    assert row[FINGERPRINT] == plan.fingerprint
    assert row[KEY_COUNT] == 2
    assert row[ERROR_FLAG] == 0
    assert row[HEADER_SIZE:].tolist() == [1.5, -2.0]


def test_pack_row_error_flag() -> None:
    plan = MetricPlan(("a",), (Reduce.MEAN,))
    row = pack_row(plan, None)
    assert row[ERROR_FLAG] == 1.0
    assert row[KEY_COUNT] == 1
    assert np.isnan(row[HEADER_SIZE:]).all()


@pytest.mark.parametrize(
    ("op", "reducer"),
    [
        (Reduce.MEAN, lambda xs: sum(xs) / len(xs)),
        (Reduce.SUM, sum),
        (Reduce.MIN, min),
        (Reduce.MAX, max),
    ],
)
def test_reduce_rows_exact(op: Reduce, reducer) -> None:
    plan = _plan(op)
    out = reduce_rows(plan, _gather(plan))
    assert set(out) == set(plan.keys)
    for j, key in enumerate(plan.keys):
        assert out[key] == reducer([_rank_value(r, j) for r in range(WORLD)])
        assert isinstance(out[key], float)


def test_reduce_rows_exact_values_spelled_out() -> None:
    plan = MetricPlan(("loss", "tokens", "lo", "hi"), (Reduce.MEAN, Reduce.SUM, Reduce.MIN, Reduce.MAX))
    rows = np.stack([pack_row(plan, np.array([1.0, 100.0, 5.0, 5.0]) * (r + 1)) for r in range(3)])
    assert reduce_rows(plan, rows) == {"loss": 2.0, "tokens": 600.0, "lo": 5.0, "hi": 15.0}


def test_reduce_rows_per_rank() -> None:
    plan = _plan(Reduce.PER_RANK)
    out = reduce_rows(plan, _gather(plan))
    assert set(out) == {f"{k}/rank{r}" for k in plan.keys for r in range(WORLD)}
    for j, key in enumerate(plan.keys):
        for r in range(WORLD):
            assert out[f"{key}/rank{r}"] == _rank_value(r, j)
    assert "a" not in out


@pytest.mark.parametrize("primary_rank", [0, 1, 3])
def test_reduce_rows_local_is_primary_value(primary_rank: int) -> None:
    plan = _plan(Reduce.LOCAL)
    out = reduce_rows(plan, _gather(plan), primary_rank=primary_rank)
    assert out == {k: _rank_value(primary_rank, j) for j, k in enumerate(plan.keys)}


def test_reduce_rows_mixed_ops() -> None:
    plan = MetricPlan(("a", "b", "c", "d"), (Reduce.MEAN, Reduce.PER_RANK, Reduce.LOCAL, Reduce.MAX))
    out = reduce_rows(plan, _gather(plan, world=2), primary_rank=1)
    assert out == {
        "a": 15.0,
        "b/rank0": 0.5,
        "b/rank1": -1.5,
        "c": 2.0,
        "d": 0.25,
    }


def test_reduce_rows_single_rank_is_identity() -> None:
    plan = MetricPlan(("a", "b"), (Reduce.MEAN, Reduce.SUM))
    rows = pack_row(plan, np.array([1.5, 2.5]))[None, :]
    assert reduce_rows(plan, rows) == {"a": 1.5, "b": 2.5}


@pytest.mark.parametrize("op", [Reduce.MEAN, Reduce.SUM, Reduce.MIN, Reduce.MAX])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_reduce_rows_non_finite_propagates(op: Reduce, bad: float) -> None:
    plan = MetricPlan(("x",), (op,))
    rows = np.stack([pack_row(plan, np.array([v])) for v in (1.0, bad, 3.0)])
    out = reduce_rows(plan, rows)["x"]
    if math.isnan(bad):
        assert math.isnan(out)
    elif op in (Reduce.MEAN, Reduce.SUM) or (op is Reduce.MAX and bad > 0) or (op is Reduce.MIN and bad < 0):
        assert out == bad
    else:
        assert out in (1.0, 3.0)


def test_reduce_rows_per_rank_keeps_nan() -> None:
    plan = MetricPlan(("x",), (Reduce.PER_RANK,))
    rows = np.stack([pack_row(plan, np.array([v])) for v in (float("nan"), 2.0)])
    out = reduce_rows(plan, rows)
    assert math.isnan(out["x/rank0"]) and out["x/rank1"] == 2.0


# -- reduce_union -----------------------------------------------------------------------------------------------
def test_reduce_union_mean_over_ranks_that_passed_the_key() -> None:
    entries = [
        [("loss", "mean", 1.0), ("only0", "mean", 5.0)],
        [("loss", "mean", 2.0)],
        [("loss", "mean", 6.0), ("late", "sum", 4.0)],
        [("late", "sum", 2.0)],
    ]
    values, missing = reduce_union(entries)
    assert values == {"loss": 3.0, "only0": 5.0, "late": 6.0}
    assert missing == {"loss": [3], "only0": [1, 2, 3], "late": [0, 1]}


def test_reduce_union_all_ops() -> None:
    entries = [
        [("m", "min", 3.0), ("M", "max", 3.0), ("p", "per_rank", 1.0), ("l", "local", 10.0)],
        [("m", "min", -1.0), ("M", "max", 7.0), ("l", "local", 11.0)],
        [("p", "per_rank", 3.0), ("l", "local", 12.0)],
    ]
    values, missing = reduce_union(entries, primary_rank=1)
    assert values == {"m": -1.0, "M": 7.0, "p/rank0": 1.0, "p/rank2": 3.0, "l": 11.0}
    assert "p/rank1" not in values
    assert missing == {"m": [2], "M": [2], "p": [1]}


@pytest.mark.parametrize(
    ("primary_rank", "expected"),
    # ranks 1 and 2 passed the key; a primary that lacks it (0, or 5 outside the world) takes the lowest rank's
    [(1, 20.0), (2, 30.0), (0, 20.0), (5, 20.0)],
)
def test_reduce_union_local_fallback(primary_rank: int, expected: float) -> None:
    entries = [[], [("l", "local", 20.0)], [("l", "local", 30.0)]]
    values, _ = reduce_union(entries, primary_rank=primary_rank)
    assert values["l"] == expected


def test_reduce_union_same_keys_has_no_missing() -> None:
    entries = [[("a", "mean", float(r))] for r in range(3)]
    assert reduce_union(entries) == ({"a": 1.0}, {})


def test_reduce_union_nan_propagates() -> None:
    values, _ = reduce_union([[("a", "mean", float("nan"))], [("a", "mean", 1.0)]])
    assert math.isnan(values["a"])


def test_reduce_union_op_conflict_names_key_and_ranks() -> None:
    entries = [[("loss", "mean", 1.0)], [("loss", "sum", 1.0)], [("loss", "mean", 1.0)], [("ok", "max", 1.0)]]
    with pytest.raises(MetricKeyMismatchError) as info:
        reduce_union(entries)
    message = str(info.value)
    assert "'loss'" in message
    assert "mean on ranks [0, 2]" in message
    assert "sum on ranks [1]" in message
    assert "'ok'" not in message


def test_describe_missing() -> None:
    assert describe_missing({"a": [1], "b": [0, 2]}) == "'a' missing on ranks [1]; 'b' missing on ranks [0, 2]"
    long = describe_missing({f"k{i}": [1] for i in range(10)}, limit=3)
    assert long.endswith("... and 7 more keys")
    assert long.count("missing on ranks") == 3


def test_metric_key_mismatch_error_missing_attribute() -> None:
    error = MetricKeyMismatchError("m", {"a": (1, 2)})
    assert error.missing == {"a": (1, 2)}
    assert MetricKeyMismatchError("m").missing == {}


# -- MetricPlan.fingerprint -------------------------------------------------------------------------------------
PLANS = [
    MetricPlan(("a",), (Reduce.MEAN,)),
    MetricPlan(("a",), (Reduce.SUM,)),
    MetricPlan(("b",), (Reduce.MEAN,)),
    MetricPlan(("a", "b"), (Reduce.MEAN, Reduce.MEAN)),
    MetricPlan(("a", "b"), (Reduce.MEAN, Reduce.MAX)),
    MetricPlan(("ab",), (Reduce.MEAN,)),
    MetricPlan(("a", "c"), (Reduce.MEAN, Reduce.MEAN)),
    MetricPlan((), ()),
]


def test_fingerprint_differs_for_different_plans() -> None:
    prints = [p.fingerprint for p in PLANS]
    assert len(set(prints)) == len(prints)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: repr(p.keys))
def test_fingerprint_is_float64_exact(plan: MetricPlan) -> None:
    fp = plan.fingerprint
    assert isinstance(fp, int)
    assert 0 <= fp < 2**53
    assert int(np.float64(fp)) == fp
    assert int(pack_row(plan, np.zeros(len(plan.keys)))[FINGERPRINT]) == fp


def test_fingerprint_is_deterministic() -> None:
    keys = tuple(f"k{i}" for i in range(50))
    a = MetricPlan(keys, (Reduce.MEAN,) * 50)
    b = MetricPlan(tuple(keys), tuple(Reduce("mean") for _ in keys))
    assert a.fingerprint == b.fingerprint


def test_fingerprint_many_plans_no_collision() -> None:
    prints = {MetricPlan((f"metric/{i}",), (Reduce.MEAN,)).fingerprint for i in range(5000)}
    assert len(prints) == 5000


# -- apply_prefix -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", {"x": 1.0, "a/b": 2.0}),
        ("metrics/", {"metrics/x": 1.0, "metrics/a/b": 2.0}),
        ("metrics", {"metrics/x": 1.0, "metrics/a/b": 2.0}),
        ("train/metrics", {"train/metrics/x": 1.0, "train/metrics/a/b": 2.0}),
    ],
)
def test_apply_prefix(prefix: str, expected: dict[str, float]) -> None:
    values = {"x": 1.0, "a/b": 2.0}
    out = apply_prefix(values, prefix)
    assert out == expected
    assert out is not values
    assert values == {"x": 1.0, "a/b": 2.0}
