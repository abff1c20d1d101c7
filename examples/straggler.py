#!/usr/bin/env python
"""The straggler view on one machine: 4 ranks on 2 simulated nodes, one of them slow in its data loading.

    python examples/straggler.py --slow-rank 3 --steps 4 --dir /tmp/straggler

Each rank times its "data" and "step" sections with ``WandbLogger.section``; the slow rank sleeps longer in "data".
The times ride in the ``log_metrics`` collectives; the primary logs every rank's score, the slowest rank and the
spread, records every rank's host and GPU in the run config, and warns once the same rank has stayed slow for
``--patience`` calls. The script prints what the offline run holds, read back with ``sdxl_dist_log.offline``.
"""

from __future__ import annotations

import argparse
import functools
import time

from sdxl_dist_log.launch.local import run_ranks, values_or_raise


def train(args: argparse.Namespace, rank: int) -> None:
    import logging

    from sdxl_dist_log import WandbConfig, WandbLogger

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = WandbConfig(project="straggler-demo", mode="offline", dir=args.dir, log_system_metrics=False,
                         straggler_patience=args.patience)
    with WandbLogger(config) as wb:
        for step in range(args.steps):
            with wb.section("data"):
                time.sleep(0.2 if rank == args.slow_rank else 0.05)  # the slow rank's loader
            with wb.section("step"):
                time.sleep(0.1)  # forward, backward, optimizer
            wb.log_metrics({"loss": 1.0 / (step + 1)}, step=step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow-rank", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--dir", default="outputs/straggler")
    args = parser.parse_args()

    def two_nodes(rank: int) -> dict[str, str]:  # ranks 0-1 on node 0, ranks 2-3 on node 1
        return {"GROUP_RANK": str(rank // 2), "LOCAL_RANK": str(rank % 2), "LOCAL_WORLD_SIZE": "2"}

    values_or_raise(run_ranks(functools.partial(train, args), 4, rank_env=two_nodes, timeout=300))
    from sdxl_dist_log.offline import find_run_dirs, read_run

    run = read_run(sorted(find_run_dirs(args.dir))[-1])
    print(f"run {run.path.name}: sdxl_dist_log.ranks = {run.config['sdxl_dist_log']['ranks']}")
    for row in run.rows_with("straggler/data/slowest_rank"):
        for section in ("data", "step"):
            scores = [round(row[f"straggler/{section}/score/rank{r}"], 2) for r in range(4)]
            print(f"step {row['trainer/step']} {section:>4}: slowest_rank {row[f'straggler/{section}/slowest_rank']}"
                  f"  spread {row[f'straggler/{section}/spread']:.2f}  score/rank0..3 {scores}")


if __name__ == "__main__":
    main()
