"""Same answers: random metric dicts reduced by the two-level path (run by the simulator through the production
``MetricReducer``) against the full-matrix reduction every rank ran before it (kept below, verbatim, as the reference).

Exact for min, max, local, per_rank, NaN/inf outcomes and sums of integers; float sums and means are folded in another
grouping (each node in rank order, then the nodes), so they may differ in the last bits: never by more than the error
bound of recursive summation (Higham, Accuracy and Stability of Numerical Algorithms, 2002, eq. 4.4), and on one node
not at all (the same order). docs/distributed.md says why.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdxl_dist_log.errors import MetricKeyMismatchError, MetricValueError, RanksOutOfStepError
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.metrics import HEADER_SIZE, MetricPlan, Reduce, reduce_rows, reduce_union, resolve_reduce
from sdxl_dist_log.reduction import MetricReducer
from sdxl_dist_log.testing.simulate import SimulatedJob
from sdxl_dist_log.topology import Layout

OPS = tuple(op.value for op in Reduce)
U = 2.0**-53


# -- the reference: the full-matrix reduction of every rank's row (metrics.reduce_rows, pinned by test_metrics.py
# with spelled-out values), what one all_gather gave every rank before the two-level path ---------------------------
def reference_reduce_rows(plan: MetricPlan, values: np.ndarray, *, primary_rank: int = 0) -> dict[str, float]:
    rows = np.hstack([np.zeros((len(values), HEADER_SIZE)), values])  # reduce_rows skips the call header
    return reduce_rows(plan, rows, primary_rank=primary_rank)


# -- random inputs --------------------------------------------------------------------------------------------------
def random_column(rng: np.random.Generator, world: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    if kind == 0:  # integers: sums are exact in any order
        return rng.integers(-1000, 1000, size=world).astype(np.float64)
    if kind == 1:  # one sign, magnitudes from tiny to huge
        return rng.random(world) * 10.0 ** rng.integers(-300, 300)
    if kind == 2:  # both signs, cancelling
        return rng.normal(size=world) * 10.0 ** rng.integers(-30, 30, size=world)
    if kind == 3:  # specials sprinkled in
        column = rng.normal(size=world) * 1e10
        for _ in range(rng.integers(1, 3)):
            column[rng.integers(0, world)] = rng.choice([np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1e300])
        return column
    return np.full(world, rng.choice([-0.0, 0.0, 1.5, -2.25]))  # ties: which of equal values min/max keep


def random_layout(rng: np.random.Generator) -> Layout:
    world = int(rng.integers(2, 17))
    per_node = int(rng.choice([1, 2, 3, 4, 8]))
    if rng.random() < 0.3:  # nodes of unequal sizes, ranks not node-major
        return Layout.from_node_ids([int(x) for x in rng.integers(0, 3, size=world)], primary=0)
    return Layout.regular(world, per_node)


def run_call(job: SimulatedJob, metrics: list[dict[str, float]], reduce=None, strict_keys: bool = False,
             reduce_of=None) -> dict[int, object]:
    """One log_metrics call of every simulated rank; ``reduce_of(rank)`` overrides ``reduce`` per rank."""
    reducers = {r: MetricReducer(job.rank(r), metric_reduce={}, primary_rank=0, strict_keys=strict_keys,
                                 warn=lambda message, key: None) for r in range(len(metrics))}
    call = CallInfo("log_metrics", 7)
    steps = {r: reducers[r].steps(reducers[r].prepare(metrics[r], reduce_of(r) if reduce_of else reduce,
                                                      non_blocking=False), call) for r in reducers}
    return {r: getattr(v, "values", v) for r, v in job.run(steps).items()}


def assert_same(op: str, got: float, want: float, column: np.ndarray, where: str) -> None:
    if op in ("min", "max", "per_rank", "local") or np.all(column == np.round(column)) and np.all(
            np.abs(column) < 2**40):
        assert (got == want and np.signbit(got) == np.signbit(want)) or (np.isnan(got) and np.isnan(want)), where
        return
    if not np.isfinite(want) or not np.isfinite(got):
        assert (np.isnan(got) and np.isnan(want)) or got == want, where
        return
    divisor = len(column) if op == "mean" else 1
    bound = 2 * (len(column) - 1) * U / (1 - len(column) * U) * np.sum(np.abs(column)) / divisor
    assert abs(got - want) <= bound + 4 * 5e-324 * len(column), (where, got, want, bound)


@pytest.mark.parametrize("seed", range(40))
def test_random_metric_dicts_reduce_to_the_full_matrix_answers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layout = random_layout(rng)
    world = layout.world_size
    keys = [f"m{i:02d}" for i in range(int(rng.integers(1, 40)))]
    ops = {k: str(rng.choice(OPS)) for k in keys}
    values = np.stack([random_column(rng, world) for _ in keys], axis=1)
    metrics = [dict(zip(keys, values[r].tolist())) for r in range(world)]
    results = run_call(SimulatedJob(layout), metrics, reduce=ops)
    plan = MetricPlan(tuple(sorted(keys)), resolve_reduce(tuple(sorted(keys)), ops))
    want = reference_reduce_rows(plan, values[:, [keys.index(k) for k in plan.keys]])
    for rank, got in results.items():
        assert got == results[0] or all(
            (a == b) or (math.isnan(a) and math.isnan(b)) for a, b in zip(got.values(), results[0].values()))
        assert list(got) == list(want), rank  # same keys, same order
    for key, value in results[0].items():
        base = key.split("/rank")[0]
        column = values[:, keys.index(base)]
        where = f"seed {seed}, W={world}, nodes {[len(n) for n in layout.nodes]}, {key} ({ops[base]})"
        if len(layout.nodes) == 1:  # one node: the very same arithmetic, bit for bit
            assert (value == want[key] and np.signbit(value) == np.signbit(want[key])) or (
                np.isnan(value) and np.isnan(want[key])), where
        else:
            assert_same(ops[base], value, want[key], column, where)


@pytest.mark.parametrize("per_node", [1, 2, 4])
def test_differing_keys_give_today_s_union_on_every_rank(per_node: int) -> None:
    layout = Layout.regular(8, per_node)
    metrics = [{"shared": float(r), f"only{r % 3}": 10.0 * r, "pr": float(r)} for r in range(8)]
    results = run_call(SimulatedJob(layout), metrics, reduce={"pr": "per_rank"})
    entries = [[(k, "per_rank" if k == "pr" else "mean", v) for k, v in sorted(m.items())] for m in metrics]
    want, _missing = reduce_union(entries, primary_rank=0)
    assert all(results[r] == want for r in range(8))


def _errors(results: dict[int, object]) -> set[tuple[str, str]]:
    return {(type(v).__name__, str(v)) for v in results.values()}


@pytest.mark.parametrize("per_node", [1, 2, 4, 8])
def test_every_failure_raises_the_same_error_on_every_rank_in_the_same_call(per_node: int) -> None:
    job = SimulatedJob(Layout.regular(8, per_node))
    # an invalid value on one rank
    bad = run_call(job, [{"loss": "oops" if r == 5 else 1.0} for r in range(8)])
    assert {type(v) for v in bad.values()} == {MetricValueError}
    assert all("ranks [5] passed invalid metric values" in str(v) for v in bad.values())
    # differing keys with strict_keys
    strict = run_call(job, [{"a": 1.0} if r else {"a": 1.0, "b": 2.0} for r in range(8)], strict_keys=True)
    assert len(_errors(strict)) == 1 and isinstance(strict[0], MetricKeyMismatchError)
    assert "'b' missing on ranks [1, 2, 3, 4, 5, 6, 7]" in str(strict[0])
    # different ops for one key
    conflict = run_call(job, [{"a": 1.0} for _ in range(8)], reduce_of=lambda r: "sum" if r == 3 else "mean")
    assert len(_errors(conflict)) == 1 and isinstance(conflict[0], MetricKeyMismatchError)
    assert "'a' has different reduce ops across ranks: mean on ranks [0, 1, 2, 4, 5, 6, 7]; sum on ranks [3]" in str(
        conflict[0])


@pytest.mark.parametrize("per_node", [1, 2, 4])
def test_a_skipped_call_is_named_on_every_rank_as_with_one_collective(per_node: int) -> None:
    job = SimulatedJob(Layout.regular(8, per_node))
    reducers = {r: MetricReducer(job.rank(r), metric_reduce={}, primary_rank=0, strict_keys=False,
                                 warn=lambda message, key: None) for r in range(8)}
    # rank 6 skipped the call at step 1: its step-2 call pairs with the others' step-1 call
    steps = {r: reducers[r].steps(reducers[r].prepare({"loss": 1.0}, None, non_blocking=False),
                                  CallInfo("log_metrics", 2 if r == 6 else 1)) for r in range(8)}
    results = job.run(steps)
    assert {type(v) for v in results.values()} == {RanksOutOfStepError}
    assert all(v.ranks == [6] for v in results.values())
    assert all("rank 6: log_metrics at step 2" in str(v) for v in results.values())
