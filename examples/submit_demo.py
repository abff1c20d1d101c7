#!/usr/bin/env python
"""Submit the sdxl_dist_log demo training through submitit (SLURM, or local processes without SLURM).

    python examples/submit_demo.py                                 # auto: SLURM if sbatch is on PATH, else local
    python examples/submit_demo.py --executor local --tasks-per-node 2
    python examples/submit_demo.py --nodes 2 --tasks-per-node 8 --gpus-per-node 8 --partition gpu --steps 1000

Each task runs ``sdxl_dist_log.demo.train(steps, out_dir=..., mode=...)``.
Every task gets MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK
(see sdxl_dist_log.launch.submit); the job is requeued on preemption/timeout under the same job id.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def demo_task(steps: int, out_dir: str, mode: str, step_time: float = 0.05) -> str | None:
    """Runs in every task: the demo training (imported here, in the job, not at submit time).

    ``resume=True``: when SLURM requeues the job (preemption, timeout), the task restarts from the last checkpoint,
    and the W&B run id, derived from the job id, is the same, so the run continues.
    """
    from sdxl_dist_log.demo import train

    return train(steps, out_dir=out_dir, mode=mode, step_time=step_time, resume=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--tasks-per-node", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-task", type=int, default=1)
    p.add_argument("--partition", default=None)
    p.add_argument("--time", type=int, default=30, metavar="MIN", help="time limit in minutes")
    p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto")
    p.add_argument("--folder", default="outputs/submitit")
    p.add_argument("--steps", type=int, default=20, help="demo training steps")
    p.add_argument("--out-dir", default="outputs/demo", help="demo output (W&B offline run, checkpoints, logs)")
    p.add_argument("--mode", choices=("offline", "online", "disabled"), default="offline", help="W&B mode")
    p.add_argument("--step-time", type=float, default=0.05, help="seconds of simulated work per step")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return without waiting")
    args = p.parse_args(argv)

    from sdxl_dist_log.launch.submit import submit

    job = submit(
        demo_task,
        args.steps,
        str(Path(args.out_dir).resolve()),
        args.mode,
        args.step_time,
        nodes=args.nodes,
        tasks_per_node=args.tasks_per_node,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        timeout_min=args.time,
        executor=args.executor,
        folder=args.folder,
        job_name="sdxl-demo",
    )
    print(f"submitted job {job.job_id} ({job.num_tasks} tasks); logs: {job.task(0).paths.stdout.parent}")
    if args.no_wait:
        return 0
    t0 = time.monotonic()
    try:
        results = job.results()
    except Exception as exc:  # noqa: BLE001 - report any task failure with its trace
        print(f"job {job.job_id} failed:\n{exc}", file=sys.stderr)
        return 1
    print(f"job {job.job_id} done in {time.monotonic() - t0:.1f} s; W&B run dir (rank 0): {results[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
