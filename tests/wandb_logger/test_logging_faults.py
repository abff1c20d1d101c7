"""Logging faults across real gloo ranks: a rank that is late is named long before the timeout, a logging call under
a rank check costs one logged error (not the job) by default, and a dead peer is the documented
``CollectiveTimeoutError`` on every surviving rank.

No test sleeps: a late rank is released by the warning about it; a timeout is the logger's own, a few seconds.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdxl_dist_log.launch.local import run_ranks, values_or_raise

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
dist = pytest.importorskip("torch.distributed")

RANKS_TIMEOUT_S = 240.0


class _Records(logging.Handler):
    """Keeps (level, message) of every record; calls ``on_warning`` on the first warning about waiting."""

    def __init__(self, on_warning: Callable[[], None] = lambda: None) -> None:
        super().__init__(logging.WARNING)
        self.records: list[tuple[str, str]] = []
        self._on_warning = on_warning

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname, record.getMessage()))
        if record.levelno == logging.WARNING and "waiting" in record.getMessage():
            self._on_warning()


def _logger(name: str, handler: logging.Handler) -> logging.Logger:
    log = logging.getLogger(name)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return log


def test_a_late_rank_is_named_with_the_likely_cause_while_the_call_still_waits(tmp_path: Path,
                                                                                make_logger: Callable,
                                                                                only_run: Callable) -> None:
    """Rank 0 enters ``log_images``; rank 1 enters only once rank 0 has warned about it. So the warning came while
    the call was waiting (there is no timeout here at all), named rank 1 and the rank-check habit, and the call then
    completed with both ranks' images. The threshold is the injected ``collective_warn_after=0.2``."""
    warned = mp.get_context("fork").Event()

    def body(rank: int) -> list[tuple[str, str]]:
        from sdxl_dist_log import WandbConfig, WandbLogger

        records = _Records(on_warning=warned.set)
        config = WandbConfig(project="late", mode="offline", dir=str(tmp_path), log_system_metrics=False,
                             collective_timeout=120.0, collective_warn_after=0.2)
        with WandbLogger(config, logger=_logger(f"late.rank{rank}", records)) as wb:
            dist.barrier()
            if rank == 1:
                assert warned.wait(100), "rank 0 never warned about rank 1"
            sent = wb.log_images([np.full((4, 4, 3), 60 * (rank + 1), np.uint8)], step=0)
            assert sent == (2 if rank == 0 else 1)
        return records.records

    records = values_or_raise(run_ranks(body, 2, timeout=RANKS_TIMEOUT_S))
    waits = [m for level, m in records[0] if level == "WARNING" and "waiting" in m]
    assert len(waits) == 1, records[0]
    assert waits[0].startswith("log_images at step 0 on rank 0: waiting 0 s for ranks [1] to reach this logging call")
    assert "is_main_process" in waits[0] and "wb.main_process" in waits[0]
    assert not any("waiting" in m for _, m in records[1])  # rank 1 never waited for anyone
    assert only_run(tmp_path).rows_with("sample/images")[0]["sample/images"]["count"] == 2


def test_log_images_under_a_rank_check_costs_one_error_and_training_goes_on(tmp_path: Path,
                                                                             only_run: Callable) -> None:
    """The porting mistake: ``if rank == 0: wb.log_images(...)`` while rank 1 goes on to the next step's collective
    on the training group. With the default ``on_logging_fault="continue"`` rank 0 warns early, gives up at its
    ``collective_timeout``, logs one error naming rank 1 and the fix, and returns; both ranks meet in the training
    collective, and later calls log rank 0's own values. Nothing raises; the run finishes."""

    def body(rank: int) -> dict[str, Any]:
        from sdxl_dist_log import WandbConfig, WandbLogger

        records = _Records()
        config = WandbConfig(project="rank-check", mode="offline", dir=str(tmp_path), log_system_metrics=False,
                             collective_timeout=3.0, collective_warn_after=0.5)
        with WandbLogger(config, logger=_logger(f"rank-check.rank{rank}", records)) as wb:
            sent = None
            if rank == 0:  # the validation block of a diffusers script, ported with the collective call
                sent = wb.log_images([np.zeros((4, 4, 3), np.uint8)], captions=["val"], step=0)
            dist.barrier()  # the next training step: DDP's all-reduce on the training group
            wb.log_metrics({"loss": float(rank + 1)}, step=1)
        return {"sent": sent, "records": records.records}

    results = values_or_raise(run_ranks(body, 2, timeout=RANKS_TIMEOUT_S))
    assert results[0]["sent"] == 0
    records = results[0]["records"]
    levels = [level for level, _ in records]
    waiting = next(m for level, m in records if level == "WARNING" and "waiting" in m)
    error = next(m for level, m in records if level == "ERROR")
    assert levels.index("ERROR") > levels.index("WARNING")  # warned first, while waiting
    assert "ranks [1]" in waiting
    assert error.startswith("CollectiveTimeoutError: log_images at step 0 on rank 0: logging collective timed out "
                            "after 3 s; ranks [1] did not reach it")
    assert "Fix: " in error and "wb.main_process" in error
    assert levels.count("ERROR") == 1
    run = only_run(tmp_path)
    assert run.exit_code == 0 and run.rows_with("sample/images") == []
    assert [(r["trainer/step"], r["metrics/loss"]) for r in run.rows_with("metrics/loss")] == [(1, 1.0)]


def test_a_dead_peer_is_a_collective_timeout_error_on_every_surviving_rank(tmp_path: Path,
                                                                          make_logger: Callable) -> None:
    """Rank 2 ends (its process exits, its sockets close) after the loggers are built; ranks 0 and 1 then call
    ``log_metrics``: each raises ``CollectiveTimeoutError`` naming rank 2 (``on_logging_fault="raise"``), whether
    its wait saw the closed connection or ran out."""

    def body(rank: int) -> dict[str, Any] | None:
        from sdxl_dist_log import CollectiveTimeoutError

        wb = make_logger(str(tmp_path), collective_timeout=10.0, on_logging_fault="raise")
        wb.log_metrics({"loss": 1.0}, step=0)
        if rank == 2:
            return None  # the process exits now, without finishing: a peer that died
        try:
            wb.log_metrics({"loss": 2.0}, step=1)
        except CollectiveTimeoutError as exc:
            error: dict[str, Any] | None = {"type": type(exc).__name__, "ranks": exc.ranks, "message": str(exc)}
        else:
            error = None
        wb.finish()
        return error

    results = values_or_raise(run_ranks(body, 3, timeout=RANKS_TIMEOUT_S))
    for rank in (0, 1):
        assert results[rank] is not None, f"rank {rank} did not raise"
        assert results[rank]["type"] == "CollectiveTimeoutError" and results[rank]["ranks"] == [2], results[rank]
        assert f"log_metrics at step 1 on rank {rank}" in results[rank]["message"]
