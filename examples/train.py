#!/usr/bin/env python
"""The demo training as a plain script: what ``slurm/train.sbatch`` runs in every torchrun worker by default.

    torchrun --standalone --nproc-per-node 2 examples/train.py --steps 20
    sbatch slurm/train.sbatch --steps 20                  # one torchrun per node; arguments go to this script
    python examples/train.py --nproc 2                    # no launcher: spawns 2 ranks itself

It takes the options of ``sdxl-dist-log demo`` (``--help`` lists them). Under a launcher it trains on the launcher's
ranks; a copy of it is where a real training script would start.
"""

import sys

from sdxl_dist_log.cli import demo_command, run_command

if __name__ == "__main__":
    sys.exit(run_command(demo_command, sys.argv[1:], f"python {sys.argv[0]}"))
