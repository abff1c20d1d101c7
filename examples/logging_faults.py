#!/usr/bin/env python
"""What the logger says when logging goes wrong across ranks: three short jobs on local gloo ranks.

    python examples/logging_faults.py

1. ``rank-check``: rank 0 calls ``log_images`` under ``if rank == 0:`` while rank 1 goes on to the next training
   collective (the porting mistake ``wb.main_process`` exists for); ``collective_timeout=10``.
2. ``bad-value``: rank 1 passes a string as a metric value.
3. ``dead-peer``: rank 2 of 3 ends after the first logging call; ``on_logging_fault="raise"``.

Each prints, per rank, the warnings and errors its logger wrote and the exception it caught, if any. Runs go to a
temporary directory; nothing touches the network.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.testing.wandb_env import apply, wandb_environment

ROOT = tempfile.mkdtemp(prefix="logging-faults-")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.getMessage()}")


def _job(body: Callable[[Any, int], None], **config: Any) -> Callable[[int], list[str]]:
    def run(rank: int) -> list[str]:
        from sdxl_dist_log import SdxlDistLogError, WandbConfig, WandbLogger

        lines = _Lines()
        log = logging.getLogger(f"logging-faults.rank{rank}")
        log.addHandler(lines)
        wb = WandbLogger(WandbConfig(project="faults", mode="offline", dir=ROOT, log_system_metrics=False, **config),
                         logger=log)
        try:
            body(wb, rank)
        except SdxlDistLogError as exc:
            lines.lines.append(f"raised {type(exc).__name__}: {exc}")
        if rank < 2:  # rank 2 of the dead-peer job is gone by now
            wb.finish()
        return lines.lines

    return run


def rank_check(wb: Any, rank: int) -> None:
    import torch.distributed as dist

    if rank == 0:
        wb.log_images([np.zeros((8, 8, 3), np.uint8)], step=100)
    dist.barrier()  # the next training step's collective
    wb.log_metrics({"loss": 0.5}, step=101)


def bad_value(wb: Any, rank: int) -> None:
    wb.log_metrics({"loss": 0.5 if rank == 0 else "1.2e-3"}, step=7)


def dead_peer(wb: Any, rank: int) -> None:
    wb.log_metrics({"loss": 0.5}, step=0)
    if rank != 2:
        wb.log_metrics({"loss": 0.4}, step=1)


def main() -> None:
    apply(wandb_environment(ROOT))
    jobs = [("rank-check", _job(rank_check, collective_timeout=10.0), 2), ("bad-value", _job(bad_value), 2),
            ("dead-peer", _job(dead_peer, collective_timeout=30.0, on_logging_fault="raise"), 3)]
    for name, job, world in jobs:
        print(f"== {name}")
        for rank, lines in enumerate(values_or_raise(run_ranks(job, world, timeout=200))):
            for line in lines:
                print(f"rank {rank}: {line}")


if __name__ == "__main__":
    main()
