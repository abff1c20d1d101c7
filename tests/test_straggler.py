"""The straggler view: section times that ride in the metrics collectives, scores per rank, the slowest rank named.

Pure parts (scores, the watch, the section tail) directly; the collectives by the simulator (the same steps as gloo:
the same collectives with and without sections); then real processes with an injected clock, where one rank is slow
in its data section: it is named within two logging intervals, and a job without a slow rank raises no alarm.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.reduction import MetricReducer
from sdxl_dist_log.straggler import (
    SECTION_HEADER,
    SectionTail,
    SectionTimer,
    StragglerWatch,
    names_fingerprint,
    straggler_keys,
)
from sdxl_dist_log.testing.simulate import SimulatedJob
from sdxl_dist_log.topology import Layout


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_scores_are_each_rank_over_the_median_and_the_slowest_is_named() -> None:
    times = np.array([[1.0, 0.5], [1.0, 0.5], [3.0, 0.5], [1.0, 0.25]])
    keys = straggler_keys(("data", "step"), times)
    assert [keys[f"straggler/data/score/rank{r}"] for r in range(4)] == [1.0, 1.0, 3.0, 1.0]
    assert keys["straggler/data/slowest_rank"] == 2 and keys["straggler/data/spread"] == 3.0
    assert keys["straggler/step/slowest_rank"] == 0  # ties: the lowest rank
    assert keys["straggler/step/spread"] == 2.0
    assert keys["straggler/step/score/rank3"] == 0.5


def test_a_section_nobody_spent_time_in_scores_one() -> None:
    keys = straggler_keys(("idle",), np.zeros((3, 1)))
    assert [keys[f"straggler/idle/score/rank{r}"] for r in range(3)] == [1.0, 1.0, 1.0]
    assert np.isnan(keys["straggler/idle/spread"])


def test_the_watch_warns_once_after_patience_intervals_of_the_same_slow_rank() -> None:
    watch = StragglerWatch(threshold=1.5, patience=2, describe=lambda r: f"host node{r}, GPU {r % 8}")
    slow = straggler_keys(("data",), np.array([[1.0], [1.0], [2.0]]))
    other = straggler_keys(("data",), np.array([[2.0], [1.0], [1.0]]))
    calm = straggler_keys(("data",), np.array([[1.0], [1.1], [1.2]]))
    assert watch.observe(("data",), slow) == []
    warned = watch.observe(("data",), slow)
    assert len(warned) == 1 and "rank 2 (host node2, GPU 2)" in warned[0] and "'data'" in warned[0]
    assert watch.observe(("data",), slow) == []  # once per run of intervals
    assert watch.observe(("data",), other) == []  # another rank: the count starts again
    assert watch.observe(("data",), calm) == [] and watch.observe(("data",), slow) == []
    assert len(watch.observe(("data",), slow)) == 1


def test_the_section_tail_carries_names_in_order_and_restarts_each_interval() -> None:
    clock = FakeClock()
    timer = SectionTimer(clock)
    timer.add("step", 2.0)
    timer.add("data", 1.0)
    timer.add("data", 0.5)
    tail = timer.take()
    assert tail.tolist() == [2, names_fingerprint(("data", "step")), 1.5, 2.0]
    assert timer.take().tolist()[SECTION_HEADER:] == [0.0, 0.0]  # names stay; nothing timed since
    assert timer.names == ("data", "step")


def _reduce(job: SimulatedJob, sections: dict[int, SectionTail | None]) -> dict[int, object]:
    reducers = {r: MetricReducer(job.rank(r), metric_reduce={}, primary_rank=0, strict_keys=False,
                                 warn=lambda message, key: None) for r in sections}
    call = CallInfo("log_metrics", 1)
    return job.run({r: reducers[r].steps(reducers[r].prepare({"loss": float(r)}, None, non_blocking=False,
                                                             sections=sections[r]), call) for r in sections})


def _tail(*times: float, names=("data", "step")) -> SectionTail:
    timer = SectionTimer()
    for name, seconds in zip(names, times):
        timer.add(name, seconds)
    return SectionTail(timer.take(), timer.names)


@pytest.mark.parametrize("world,per_node", [(4, 4), (8, 2), (16, 4), (64, 8)])
def test_section_times_ride_in_the_same_collectives(world: int, per_node: int) -> None:
    job = SimulatedJob(Layout.regular(world, per_node))
    _reduce(job, {r: None for r in range(world)})  # first call: sizes settle
    job.reset()
    _reduce(job, {r: None for r in range(world)})
    without = {r: job.records[r].pattern() for r in range(world)}
    # sections widen the per-rank block once (one more round of the same collectives, like a frame growth)
    _reduce(job, {r: _tail(1.0, 2.0) for r in range(world)})
    job.reset()
    results = _reduce(job, {r: _tail(1.0 + (r == world - 1), 2.0) for r in range(world)})
    assert {r: job.records[r].pattern() for r in range(world)} == without
    times = results[0].section_times
    assert times.shape == (world, 2) and times[world - 1].tolist() == [2.0, 2.0]
    keys = straggler_keys(("data", "step"), times)
    assert keys["straggler/data/slowest_rank"] == world - 1
    if per_node < world:  # several nodes: only the deciding rank (the primary) holds every rank's times
        assert all(results[r].section_times is None for r in range(1, world))


def test_ranks_timing_different_sections_get_no_view_and_still_log() -> None:
    job = SimulatedJob(Layout.regular(4, 2))
    sections = {r: _tail(1.0, names=("data",) if r else ("eval",)) for r in range(4)}
    results = _reduce(job, sections)
    assert results[0].section_times is None
    assert all(results[r].values == {"loss": 1.5} for r in range(4))


STRAGGLER_RUN_INTERVALS = 3


def _straggler_job(tmp: str, slow_rank: int | None, world: int = 4, per_node: int = 2):
    from sdxl_dist_log.launch.local import run_ranks, values_or_raise

    def rank_env(rank: int) -> dict[str, str]:
        return {"GROUP_RANK": str(rank // per_node), "LOCAL_RANK": str(rank % per_node),
                "LOCAL_WORLD_SIZE": str(per_node)}

    def body(rank: int):
        from sdxl_dist_log import WandbConfig, WandbLogger
        from sdxl_dist_log.testing.probe import CollectiveProbe

        messages: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                messages.append(record.getMessage())

        logging.getLogger("sdxl_dist_log").addHandler(Keep())
        clock = FakeClock()
        config = WandbConfig(project="t", mode="offline", dir=tmp, log_system_metrics=False, collective_timeout=60.0,
                             straggler_patience=2)
        counts = []
        with WandbLogger(config, clock=clock) as wb:
            wb.log_metrics({"loss": 1.0}, step=0)  # no sections yet
            for step in range(1, 1 + STRAGGLER_RUN_INTERVALS):
                with wb.section("data"):
                    clock.sleep(1.0 if rank == slow_rank else 0.1)  # the slow rank "sleeps" in its data loading
                with wb.section("step"):
                    clock.sleep(0.5)
                with CollectiveProbe() as probe:
                    wb.log_metrics({"loss": float(step)}, step=step)
                counts.append(len(probe.calls))
            with CollectiveProbe() as probe:
                wb.log_metrics({"loss": 9.0}, step=99)  # sections stay known: still the same collectives
            counts.append(len(probe.calls))
        return counts, [m for m in messages if "straggler" in m]

    return values_or_raise(run_ranks(body, world, rank_env=rank_env, timeout=240))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_rank_slow_in_its_data_section_is_named_with_host_and_gpu(tmp_path: Path) -> None:
    from sdxl_dist_log.offline import find_run_dirs, read_run

    results = _straggler_job(str(tmp_path), slow_rank=3)
    run = read_run(find_run_dirs(tmp_path)[0])
    rows = run.rows_with("straggler/data/slowest_rank")
    assert [r["straggler/data/slowest_rank"] for r in rows[:2]] == [3, 3]  # named from the first interval on
    assert rows[0]["straggler/data/score/rank3"] == pytest.approx(10.0)
    assert rows[0]["straggler/data/spread"] == pytest.approx(10.0)
    assert rows[0]["straggler/step/spread"] == pytest.approx(1.0)
    ranks = run.config["sdxl_dist_log"]["ranks"]
    assert sorted(ranks) == ["0", "1", "2", "3"] and all("host" in r and "gpu" in r for r in ranks.values())
    warnings = results[0][1]
    assert len(warnings) == 1 and "rank 3 (host " in warnings[0] and "'data'" in warnings[0]
    assert all(messages == [] for _, messages in results[1:])  # only the primary warns
    for counts, _ in results:  # the same collectives in every interval (after the first, which sized the block)
        assert len(set(counts[1:])) == 1, counts


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_job_without_a_slow_rank_raises_no_alarm(tmp_path: Path) -> None:
    from sdxl_dist_log.offline import find_run_dirs, read_run

    results = _straggler_job(str(tmp_path), slow_rank=None)
    assert all(messages == [] for _, messages in results)
    rows = read_run(find_run_dirs(tmp_path)[0]).rows_with("straggler/data/slowest_rank")
    assert len(rows) == STRAGGLER_RUN_INTERVALS + 1
    assert all(row["straggler/data/spread"] == pytest.approx(1.0) for row in rows[:-1])
