"""The collectives every rank makes per call, counted exactly: real gloo processes at W = 2..16 with simulated nodes
of 1, 2, 4 and 8 ranks, and the in-process simulator (the same steps) up to W = 4,096.

Node identity is the launch's (GROUP_RANK / LOCAL_RANK / LOCAL_WORLD_SIZE, as torchrun sets them). Counts and bytes,
never times: they are exact on any machine, loaded or not.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdxl_dist_log.framing import INITIAL_FRAME, CallInfo, build_frame
from sdxl_dist_log.hierarchy import AGG_HEADER, INITIAL_WIDTH, R_VERDICT, RESULT_HEADER, STAGE_HEADER, call_steps
from sdxl_dist_log.metric_stage import MetricStage
from sdxl_dist_log.metrics import MetricPlan, pack_row, resolve_reduce
from sdxl_dist_log.testing.simulate import SimulatedJob, binomial_children
from sdxl_dist_log.topology import Layout


def frame_bytes(frame: int = INITIAL_FRAME) -> int:
    return 8 * (4 + frame)


def aggregate_bytes(per_node: int, frame: int = INITIAL_FRAME, width: int = INITIAL_WIDTH) -> int:
    return 8 * (AGG_HEADER + STAGE_HEADER + frame + per_node * width)


def result_bytes(frame: int = INITIAL_FRAME) -> int:
    return 8 * (RESULT_HEADER + STAGE_HEADER + frame)


def designed_pattern(rank: int, world: int, per_node: int) -> list[tuple[str, int, int, int]]:
    """(op, group size, bytes sent, bytes received) of one steady-state ``log_metrics`` call, as designed.

    One node: one all_gather of the frame. Several nodes: node gather to the leader, leaders' gather of the fixed-size
    aggregate to the primary (rank 0), the result broadcast from the primary to the leaders and from each leader to
    its node; collectives on a group of one are skipped.
    """
    nodes = math.ceil(world / per_node)
    f, a, r = frame_bytes(), aggregate_bytes(per_node), result_bytes()
    if nodes == 1:
        return [("all_gather_single", world, f, world * f)]
    leader = rank % per_node == 0
    pattern = []
    if per_node > 1:
        pattern.append(("gather", per_node, f, per_node * f if leader else 0))
    if leader:
        pattern.append(("gather", nodes, a, nodes * a if rank == 0 else 0))
        pattern.append(("broadcast", nodes, r, 0))
    if per_node > 1:
        pattern.append(("broadcast", per_node, r, 0))
    return pattern


LAYOUTS = [(2, 1), (2, 2), (4, 1), (4, 2), (4, 4), (8, 1), (8, 2), (8, 4), (8, 8), (16, 1), (16, 2), (16, 4),
           (16, 8)]


def _node_env(per_node: int):
    def rank_env(rank: int) -> dict[str, str]:
        return {"GROUP_RANK": str(rank // per_node), "LOCAL_RANK": str(rank % per_node),
                "LOCAL_WORLD_SIZE": str(per_node)}
    return rank_env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_processes_make_exactly_the_designed_collectives() -> None:
    from sdxl_dist_log.launch.local import run_ranks, values_or_raise

    def body(rank: int):
        import psutil

        from sdxl_dist_log import WandbConfig, WandbLogger
        from sdxl_dist_log.testing.probe import CollectiveProbe

        def connections() -> int:
            return sum(1 for c in psutil.Process().net_connections(kind="tcp") if c.status == "ESTABLISHED")

        before = connections()
        wb = WandbLogger(WandbConfig(project="t", mode="disabled", log_system_metrics=False,
                                     collective_timeout=120.0))
        metrics = {f"k{i:02d}": float(i * rank) for i in range(64)}
        wb.log_metrics(metrics, step=0)
        with CollectiveProbe() as probe:
            for step in (1, 2):
                logged = wb.log_metrics(metrics, step=step)
        opened = connections() - before
        wb.finish()
        calls = [(c.op, c.group_size, c.sent, c.received) for c in probe.calls]
        return calls, logged["metrics/k63"], opened, wb.rank_info.node_rank

    for world, per_node in LAYOUTS:
        results = values_or_raise(run_ranks(body, world, rank_env=_node_env(per_node), timeout=600,
                                            pg_timeout=300.0))
        nodes = math.ceil(world / per_node)
        for rank, (calls, k63, opened, node) in enumerate(results):
            where = f"W={world}, {per_node} per node, rank {rank}"
            assert node == rank // per_node, where
            assert calls == designed_pattern(rank, world, per_node) * 2, where
            assert k63 == pytest.approx(63 * (world - 1) / 2), where
            # connections the logger opened: never a full mesh; at most its node's peers, and the other leaders
            leader = rank % per_node == 0
            assert opened <= (per_node - 1) + (nodes - 1 if leader and nodes > 1 else 0), (where, opened)


def _metric_rows(world: int, n: int, plan: MetricPlan) -> list[np.ndarray]:
    return [pack_row(plan, np.arange(n, dtype=np.float64) * rank) for rank in range(world)]


@pytest.mark.parametrize("world,per_node", [(2, 1), (16, 4), (64, 8), (256, 8), (1024, 8), (4096, 8), (4096, 1),
                                            (1000, 8), (96, 12)])
def test_simulated_messages_and_bytes_per_rank_up_to_4096(world: int, per_node: int) -> None:
    layout = Layout.regular(world, per_node)
    job = SimulatedJob(layout)
    keys = tuple(f"k{i:02d}" for i in range(64))
    plan = MetricPlan(keys, resolve_reduce(keys, "mean"))
    stage = MetricStage(plan, world)
    rows = _metric_rows(world, 64, plan)
    call = CallInfo("log_metrics", 1)
    outcomes = job.run({r: call_steps(job.topology(r), build_frame(rows[r], sequence=1, call=call,
                                                                   frame=INITIAL_FRAME), stage, INITIAL_WIDTH)
                        for r in range(world)})
    assert {o.verdict for o in outcomes.values()} == {0.0}
    assert len({o.result.tobytes() for o in outcomes.values()}) == 1  # every rank holds the same result
    nodes = len(layout.nodes)
    largest = layout.largest_node
    for rank in (0, 1, per_node, world - 1):
        record = job.records[rank]
        made = [(c.op.replace("all_gather", "all_gather_single"), c.group_size, c.sent, c.received)
                for c in record.collectives]
        assert made == designed_pattern(rank, world, largest), rank
        # on the wire, a rank that is no leader sends its frame once, receives the result once, and forwards it to
        # its children in the node's binomial broadcast tree
        if nodes > 1 and rank not in layout.leaders:
            children = binomial_children(rank % per_node, per_node)
            assert (record.messages_sent, record.messages_received) == (1 + len(children), 1)
            assert record.bytes_received == result_bytes()
    primary = job.records[0]
    if nodes > 1:
        # the busiest rank: its node's frames and every leader's aggregate, one each; no rank receives W frames
        assert primary.messages_received == (per_node - 1) + (nodes - 1)
        assert primary.bytes_received == (per_node - 1) * frame_bytes() + (nodes - 1) * aggregate_bytes(largest)
        rounds = sum(c.rounds for c in primary.collectives)
        assert rounds == (1 if per_node > 1 else 0) + 1 + math.ceil(math.log2(nodes)) + (
            math.ceil(math.log2(per_node)) if per_node > 1 else 0)
    assert max(r.bytes_received for r in job.records.values()) == primary.bytes_received
    assert outcomes[0].result[R_VERDICT] == 0.0
