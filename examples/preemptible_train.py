#!/usr/bin/env python
"""A training loop that survives preemption: it checkpoints, resumes, and lets the logger close the run on the signal.

    srun python examples/preemptible_train.py OUT --steps 200 --step-time 0.1           # one task
    TRAIN_SCRIPT=examples/preemptible_train.py NPROC_PER_NODE=2 sbatch slurm/train.sbatch OUT --steps 200
    sdxl-dist-log submit examples/preemptible_train.py --tasks-per-node 2 -- OUT --steps 200

Requeue the job (``scontrol requeue``, a preemption, submitit's timeout signal) and the next attempt resumes from the
last checkpoint into the same W&B run (the run id derives from the SLURM job). What it takes to get there is the
three lines marked "preemption" below; docs/slurm.md shows a preempted and resumed run.

Besides the run, it writes ``OUT/progress.txt`` on rank 0: one line per step, ``<attempt> <step> <unix time the
log_metrics call returned>``, which the preemption tests and ``benchmarks/bench_preemption.py`` compare with the run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from sdxl_dist_log import WandbConfig, WandbLogger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the checkpoint, the W&B runs and progress.txt")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-time", type=float, default=0.1, help="seconds one step stands for")
    parser.add_argument("--checkpoint-every", type=int, default=1, help="steps between checkpoints")
    args = parser.parse_args()

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun and submitit export the env:// variables
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank() if dist.is_initialized() else 0
    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / "checkpoint.json"
    start = json.loads(checkpoint.read_text())["step"] if checkpoint.exists() else 0  # preemption: resume
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    config = WandbConfig(project="preemptible", mode="offline", dir=str(args.out / "wandb"),
                         log_system_metrics=False, config={"steps": args.steps})
    with WandbLogger(config) as wb, open(args.out / "progress.txt", "a") as progress:
        wb.handle_preemption()  # preemption: mark the run, close it, then let the launcher's handler run
        for step in range(start, args.steps):
            x = torch.randn(16, 8)
            loss = model(x).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            wb.log_metrics({"loss": loss.detach(), "attempt": attempt}, step=step)
            if rank == 0:
                progress.write(f"{attempt} {step} {time.time():.6f}\n")
                progress.flush()
                if (step + 1) % args.checkpoint_every == 0:  # preemption: what the next attempt starts from
                    checkpoint.with_suffix(".tmp").write_text(json.dumps({"step": step + 1}))
                    os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
            time.sleep(args.step_time)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
