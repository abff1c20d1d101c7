"""The two-level pattern: layouts, the steps' rare paths in the simulator, and real gloo processes on simulated nodes
where every failure of a call (a skipped call, differing keys with strict_keys, a bad value, a dead rank) raises the
same documented error on every rank, in the same call."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sdxl_dist_log.errors import CollectiveError
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.hierarchy import CallState, bytes_to_primary, call_rounds, decided_at_primary
from sdxl_dist_log.metric_stage import MetricStage
from sdxl_dist_log.metrics import MetricPlan, pack_row, resolve_reduce
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


@pytest.mark.parametrize("per_node", [1, 2, 8])
def test_objects_and_bytes_reach_the_primary_only(per_node: int) -> None:
    job = SimulatedJob(Layout.regular(8, per_node))
    total = lambda everyone: sum(o["rank"] for o in everyone)  # noqa: E731
    out = job.run({r: decided_at_primary(job.topology(r), {"rank": r}, total) for r in range(8)})
    assert set(out.values()) == {28}
    sizes = {1: 3, 6: 5}
    payloads = {r: np.full(sizes.get(r, 0), r, np.uint8) for r in range(8)}
    job.reset()
    got = job.run({r: bytes_to_primary(job.topology(r), sizes, payloads[r]) for r in range(8)})
    assert {r: v.tolist() for r, v in got[0].items()} == {1: [1, 1, 1], 6: [6] * 5}
    if per_node < 8:  # point to point: only the two senders (and their leaders, forwarding) send anything
        senders = {r for r, record in job.records.items() if record.messages_sent}
        assert senders <= {1, 6} | set(job.topology(0).leaders)
        assert all(v is None for r, v in got.items() if r != 0)


@pytest.mark.parametrize("per_node", [2, 8])
def test_a_decision_that_fails_reaches_every_rank_as_an_error(per_node: int) -> None:
    def broken(everyone: list[int]) -> int:
        raise KeyError("a defect")

    job = SimulatedJob(Layout.regular(8, per_node))
    out = job.run({r: decided_at_primary(job.topology(r), r, broken) for r in range(8)})
    assert all(type(v) is CollectiveError and "KeyError" in str(v) for v in out.values())


# -- real processes on simulated nodes --------------------------------------------------------------------------------
WORLD, PER_NODE = 6, 2  # three nodes: rank 0 leads node 0 (the primary), 2 and 4 lead theirs


def _run(body, tmp: Path, timeout: float = 180, primary: int = 0):
    from sdxl_dist_log.launch.local import run_ranks

    def rank_env(rank: int) -> dict[str, str]:
        return {"GROUP_RANK": str(rank // PER_NODE), "LOCAL_RANK": str(rank % PER_NODE),
                "LOCAL_WORLD_SIZE": str(PER_NODE)}

    return run_ranks(body, WORLD, rank_env=rank_env, timeout=timeout)


def _logger(tmp: Path, **overrides):
    from sdxl_dist_log import WandbConfig, WandbLogger

    settings = dict(project="t", mode="offline", dir=str(tmp), log_system_metrics=False, collective_timeout=30.0)
    settings.update(overrides)
    return WandbLogger(WandbConfig(**settings))


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
            except MetricValueError as exc:
                seen.append(("value", str(exc).split(": ranks")[1][:4]))
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
        assert seen == [("value", " [5]"), ("keys", [0, 1, 3, 4, 5]), ("step", [4])], rank
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

        wb = _logger(tmp_path, collective_timeout=4.0, mode="disabled")
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
