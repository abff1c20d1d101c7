#!/usr/bin/env python
"""The peers' pattern, for ``bench_preemption.py``: plain wandb with a SIGTERM handler that marks and finishes the run.

The same loop, checkpoint and ``OUT/progress.txt`` as ``examples/preemptible_train.py`` (one task), but logging with
``wandb.init(id="slurm-<job>", resume="allow")`` and ``run.log`` (each row committed), and on SIGTERM:
``run.mark_preempting(); run.finish(exit_code=1)``, then the default action: what a training script does by hand.

    srun python benchmarks/preempt_plain_wandb.py OUT --steps 200 --step-time 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import wandb


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-time", type=float, default=0.1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    checkpoint = args.out / "checkpoint.json"
    start = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0
    (args.out / "wandb").mkdir(exist_ok=True)
    run = wandb.init(project="preemptible", id=f"slurm-{os.environ.get('SLURM_JOB_ID', 'local')}", resume="allow",
                     dir=str(args.out / "wandb"), mode="offline",
                     settings=wandb.Settings(x_transaction_log_flush_interval=0.5, x_disable_stats=True,
                                             console="off", silent=True))

    def on_sigterm(signum: int, frame: object) -> None:
        try:
            run.mark_preempting()
            run.finish(exit_code=1)
        finally:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    with open(args.out / "progress.txt", "a") as progress:
        for step in range(start, args.steps):
            run.log({"metrics/loss": 1.0 / (step + 1), "trainer/step": step})
            progress.write(f"{attempt} {step} {time.time():.6f}\n")
            progress.flush()
            checkpoint.with_suffix(".tmp").write_text(json.dumps({"step": step + 1}))
            os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
            time.sleep(args.step_time)
    run.finish()


if __name__ == "__main__":
    main()
