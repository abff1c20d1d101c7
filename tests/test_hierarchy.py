"""The two-level pattern: layouts, the steps' rare paths in the simulator, and real gloo processes on simulated nodes
where every failure of a call (a skipped call, differing keys with strict_keys, a bad value, a dead rank) raises the
same documented error on every rank, in the same call."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sdxl_dist_log.errors import CollectiveError
from sdxl_dist_log.framing import CALL_HEADER, LENGTH, STEP, CallInfo, build_frame
from sdxl_dist_log.hierarchy import (
    OK,
    CallState,
    Outcome,
    call_rounds,
    decide,
    decide_alike,
    node_aggregate,
)
from sdxl_dist_log.metric_stage import MetricStage
from sdxl_dist_log.metrics import ERROR_FLAG, FINGERPRINT, HEADER_SIZE, MetricPlan, Reduce, pack_row, resolve_reduce
from sdxl_dist_log.straggler import SECTION_FINGERPRINT
from sdxl_dist_log.testing.simulate import SimulatedJob
from sdxl_dist_log.topology import Layout


# -- layouts --------------------------------------------------------------------------------------------------------
def test_layouts_round_trip_through_their_compact_text() -> None:
    regular = Layout.regular(4096, 8)
    assert len(regular.encode()) < 20 * 512  # ranges: a few bytes per node, not per rank
    assert Layout.decode(regular.encode(), 0) == regular
    cyclic = Layout.from_node_ids([r % 3 for r in range(10)], primary=4)
    assert cyclic.nodes == ((0, 3, 6, 9), (1, 4, 7), (2, 5, 8))
    assert Layout.decode(cyclic.encode(), 4) == cyclic
    assert cyclic.leaders == (0, 4, 2)  # the primary leads its own node


def test_a_rank_s_topology_orders_nodes_by_their_leaders() -> None:
    layout = Layout.from_node_ids([0, 1, 0, 1], primary=3)
    topology = layout.for_rank(2)
    assert topology.leaders == (0, 3) and topology.nodes == ((0, 2), (1, 3))
    assert topology.leader == 0 and topology.node == (0, 2) and not topology.is_leader
    assert layout.for_rank(3).is_primary and layout.for_rank(3).is_leader


# -- rare paths, simulated -------------------------------------------------------------------------------------------
def _call(job: SimulatedJob, rows: list[np.ndarray], stage_of, states=None) -> dict[int, object]:
    states = states or {r: CallState() for r in range(len(rows))}
    return job.run({r: call_rounds(job.topology(r), rows[r], CallInfo("log_metrics", 1), stage_of(r), states[r])
                    for r in range(len(rows))})


@pytest.mark.parametrize("per_node", [1, 3, 4])
def test_a_row_that_outgrows_the_frame_grows_it_on_every_rank_and_the_call_completes(per_node: int) -> None:
    job = SimulatedJob(Layout.regular(12, per_node))
    keys = tuple(f"k{i:03d}" for i in range(300))
    plan = MetricPlan(keys, resolve_reduce(keys, {"k00*": "per_rank"}))  # 10 per_rank keys: the block grows too
    states = {r: CallState() for r in range(12)}
    outcomes = _call(job, [pack_row(plan, np.full(300, float(r))) for r in range(12)],
                     lambda r: MetricStage(plan, 12), states)
    assert {(s.frame, s.width, s.sequence) for s in states.values()} == {(512, 16, 2)}  # one more round, all alike
    result = MetricStage(plan, 12).values(outcomes[0].stage, outcomes[0].block[:, :10])
    assert result["k299"] == pytest.approx(5.5) and result["k005/rank11"] == 11.0


class Broken(MetricStage):
    def combine(self, payloads, ranks):
        raise ZeroDivisionError("a defect")


def test_a_stage_that_fails_on_one_leader_raises_on_every_rank() -> None:
    job = SimulatedJob(Layout.regular(8, 2))
    keys = ("a",)
    plan = MetricPlan(keys, resolve_reduce(keys, None))
    results = _call(job, [pack_row(plan, np.ones(1)) for _ in range(8)],
                    lambda r: Broken(plan, 8) if r == 4 else MetricStage(plan, 8))
    assert all(type(v) is CollectiveError and "combine step failed" in str(v) for v in results.values())


# -- one node's steady state, decided in one pass -------------------------------------------------------------------
OPS = tuple(op.value for op in Reduce)
SPECIALS = (np.nan, np.inf, -np.inf, -0.0, 0.0, 5e-324, 1e300, -1e-300)


def _one_node_frames(rng: np.random.Generator, world: int, ops: dict[str, str], sections: int,
                     frame: int = 128) -> tuple[MetricPlan, np.ndarray]:
    keys = tuple(sorted(ops))
    plan = MetricPlan(keys, resolve_reduce(keys, ops))
    values = rng.normal(size=(world, len(keys))) * 10.0 ** rng.integers(-20, 20, size=(world, len(keys)))
    specials = rng.random(values.shape) < 0.15
    values[specials] = rng.choice(SPECIALS, size=int(specials.sum()))
    tail = np.hstack([np.tile([sections, 12345.0], (world, 1)), rng.random((world, sections))])  # same names
    rows = [pack_row(plan, values[r], tail[r]) for r in range(world)]
    return plan, np.stack([build_frame(row, sequence=9, call=CallInfo("log_metrics", 3), frame=frame)
                           for row in rows])


def _general(frames: np.ndarray, stage: MetricStage, frame: int, width: int) -> Outcome:
    node = tuple(range(len(frames)))
    aggregate = node_aggregate(frames, node, stage, width, len(frames))
    return decide(aggregate[None], (node,), frames[0, CALL_HEADER:], stage, frame, width)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal value for value, NaN where the other has NaN, and the same sign of zero."""
    return a.shape == b.shape and bool(np.all(((a == b) & (np.signbit(a) == np.signbit(b)))
                                              | (np.isnan(a) & np.isnan(b))))


@pytest.mark.parametrize("seed", range(30))
def test_one_node_in_step_is_decided_in_one_pass_exactly_as_the_general_path(seed: int) -> None:
    rng = np.random.default_rng(seed)
    world = int(rng.integers(1, 9))
    keys = [f"m{i:02d}" for i in range(int(rng.integers(1, 30)))]
    mixed = rng.random() < 0.5
    ops = {k: str(rng.choice(OPS)) if mixed else OPS[seed % 4] for k in keys}
    sections = int(rng.integers(0, 4))
    plan, frames = _one_node_frames(rng, world, ops, sections)
    stage, width = MetricStage(plan, world, sections), int(rng.choice([4, 8]))
    general = _general(frames, stage, 128, width)
    fast = decide_alike(frames, frames[0, CALL_HEADER:], stage, 128, width)
    # the one pass declines only where the general path must grow the per-rank block first
    assert (fast is None) == (general.verdict != OK), (seed, general.verdict)
    if fast is None:
        return
    assert _same_bits(fast.result, general.result), seed
    assert _same_bits(fast.block, general.block[:, : fast.block.shape[1]]), seed
    assert fast.block.shape[1] == stage.per_rank_count + sections


@pytest.mark.parametrize("change", ["flagged", "other keys", "other sections", "other step", "longer than the frame",
                                    "stage fails"])
def test_one_node_rows_that_differ_go_to_the_general_path(change: str) -> None:
    rng = np.random.default_rng(7)
    plan, frames = _one_node_frames(rng, 4, {"loss": "mean", "lr": "local", "tok": "per_rank"}, 1)
    stage = MetricStage(plan, 4, 1)
    assert decide_alike(frames, frames[0, CALL_HEADER:], stage, 128, 8) is not None  # unchanged, it decides
    frame = 128
    if change == "flagged":
        frames[2, CALL_HEADER + ERROR_FLAG] = 1.0
    elif change == "other keys":
        frames[3, CALL_HEADER + FINGERPRINT] += 1.0
    elif change == "other sections":
        frames[1, CALL_HEADER + HEADER_SIZE + 3 + SECTION_FINGERPRINT] += 1.0
    elif change == "other step":
        frames[1, STEP] += 1.0
    elif change == "longer than the frame":
        frame = int(frames[0, LENGTH]) - 1
    else:
        class Failing(MetricStage):
            def decide_alike(self, payloads, primary_payload, width, out):
                raise ZeroDivisionError("a defect")
        stage = Failing(plan, 4, 1)
    assert decide_alike(frames, frames[0, CALL_HEADER:], stage, frame, 8) is None
    if change == "stage fails":  # the general path decides it as before
        assert _general(frames, stage, frame, 8).verdict == OK


# -- real processes on simulated nodes --------------------------------------------------------------------------------
WORLD, PER_NODE = 6, 2  # three nodes: rank 0 leads node 0 (the primary), 2 and 4 lead theirs


def _run(body, tmp: Path, timeout: float = 180, primary: int = 0):
    from sdxl_dist_log.launch.local import run_ranks

    def rank_env(rank: int) -> dict[str, str]:
        return {"GROUP_RANK": str(rank // PER_NODE), "LOCAL_RANK": str(rank % PER_NODE),
                "LOCAL_WORLD_SIZE": str(PER_NODE)}

    return run_ranks(body, WORLD, rank_env=rank_env, timeout=timeout)


def _logger(tmp: Path, backend=None, **overrides):
    """A logger whose faults raise (these tests check what every rank raises)."""
    from sdxl_dist_log import WandbConfig, WandbLogger

    settings = dict(project="t", mode="offline", dir=str(tmp), log_system_metrics=False, collective_timeout=30.0,
                    on_logging_fault="raise")
    settings.update(overrides)
    return WandbLogger(WandbConfig(**settings), backend=backend)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_on_three_nodes_every_failure_raises_the_same_error_on_every_rank(tmp_path: Path) -> None:
    from sdxl_dist_log.launch.local import values_or_raise

    def body(rank: int):
        from sdxl_dist_log.errors import MetricKeyMismatchError, MetricValueError, RanksOutOfStepError

        seen = []
        with _logger(tmp_path, strict_keys=True, primary_rank=3) as wb:
            logged = wb.log_metrics({"loss": float(rank), "r": float(rank)}, step=0, reduce={"r": "per_rank"})
            try:  # a bad value on rank 5 only
                wb.log_metrics({"loss": "nan?" if rank == 5 else 1.0}, step=1)
            except MetricValueError as exc:  # rank 5 raises its own error, naming the key; the others name rank 5
                seen.append(("value", "'loss'" if rank == 5 and "metric 'loss'" in str(exc)
                             else str(exc).split(": ranks")[1][:4]))
            try:  # rank 2 passes one more key
                wb.log_metrics({"loss": 1.0, **({"extra": 2.0} if rank == 2 else {})}, step=2)
            except MetricKeyMismatchError as exc:
                seen.append(("keys", sorted(exc.missing["extra"])))
            images = wb.log_images([np.full((4, 4, 3), rank * 40, np.uint8)], captions=[f"r{rank}"], step=3)
            try:  # rank 4 skipped the step-4 call: its step-5 call pairs with the others' step-4 call
                for step in (4, 5) if rank != 4 else (5,):
                    wb.log_metrics({"loss": 1.0}, step=step)
            except RanksOutOfStepError as exc:
                seen.append(("step", exc.ranks))
        return logged, seen, images

    values = values_or_raise(_run(body, tmp_path))
    for rank, (logged, seen, images) in enumerate(values):
        assert logged["metrics/loss"] == pytest.approx(2.5)
        assert [logged[f"metrics/r/rank{r}"] for r in range(WORLD)] == list(range(WORLD))
        assert seen == [("value", "'loss'" if rank == 5 else " [5]"), ("keys", [0, 1, 3, 4, 5]), ("step", [4])], rank
        assert images == (WORLD if rank == 3 else 1)
    from sdxl_dist_log.offline import find_run_dirs, read_run

    run = read_run(find_run_dirs(tmp_path)[0])
    assert [r["trainer/step"] for r in run.rows_with("metrics/loss")] == [0]
    entry = run.rows_with("sample/images")[0]["sample/images"]
    assert entry["count"] == WORLD and entry["captions"] == [f"[rank {r}] r{r}" for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("dead", [3, 2])  # a rank that leads nothing, and a node's leader
def test_a_dead_rank_is_named_on_every_rank_in_the_same_call(tmp_path: Path, dead: int) -> None:
    def body(rank: int):
        from sdxl_dist_log import CollectiveError
        from sdxl_dist_log.backends.base import NullBackend

        wb = _logger(tmp_path, NullBackend(), collective_timeout=4.0)  # the collectives, without W&B
        wb.log_metrics({"loss": 1.0}, step=0)
        if rank == dead:
            return "gone"  # the process exits: its sockets close
        start = time.monotonic()
        outcome = None
        try:
            wb.log_metrics({"loss": 2.0}, step=1)
        except CollectiveError as exc:
            waited = time.monotonic() - start
            wb.log_metrics({"loss": 3.0}, step=2)  # degraded: this rank's own value, no hang
            outcome = type(exc).__name__, exc.ranks, exc.call, waited
        # training goes on: no rank leaves (rank 0's process holds the store) before every rank has seen its error
        (tmp_path / f"done{rank}").touch()
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("done*"))) < WORLD - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        return outcome

    results = _run(body, tmp_path, timeout=120)
    for result in results:
        assert result.ok, result.traceback
        if result.rank == dead:
            continue
        name, ranks, call, waited = result.value
        assert (name, ranks, call) == ("CollectiveTimeoutError", [dead], "log_metrics at step 1"), result.rank
        assert waited < 4.0 + 2 * 0.4 + 6.0
