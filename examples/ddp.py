#!/usr/bin/env python
"""The smallest torch.distributed job, for trying a launcher (docs/slurm.md runs it through slurm/train.sbatch).

    TRAIN_SCRIPT=examples/ddp.py NPROC_PER_NODE=2 sbatch slurm/train.sbatch --steps 3
    torchrun --standalone --nproc-per-node 2 examples/ddp.py

Each worker joins the process group, all-reduces its rank + 1 and prints what it sees. With ``--sleep`` the first
attempt of a job (``SLURM_RESTART_COUNT`` unset or 0) waits for SIGTERM, as a preempted job would, and says so; a
requeued attempt runs through.
"""

import argparse
import os
import signal
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1, help="only echoed: shows that arguments reach the script")
    parser.add_argument("--sleep", action="store_true", help="first attempt: wait for SIGTERM")
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    total = torch.tensor([rank + 1])
    dist.all_reduce(total)
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    print(f"rank {rank}/{world} local {os.environ.get('LOCAL_RANK')} sum {total.item()} "
          f"job {os.environ.get('SLURM_JOB_ID')} restart {restart} args {sys.argv[1:]}", flush=True)
    if args.sleep and restart == 0:
        def on_sigterm(signum: int, frame: object) -> None:
            print(f"rank {rank}: SIGTERM -> checkpoint", flush=True)
            sys.exit(0)

        signal.signal(signal.SIGTERM, on_sigterm)
        time.sleep(600)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
