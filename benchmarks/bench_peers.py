"""Small worlds, real peers: ``WandbLogger.log_metrics`` against the libraries our users come from, side by side.

Every pattern turns the same per-rank dict of N 0-d float32 CPU tensors into N means over the ranks (python floats)
on every rank, in real processes joined by a gloo process group. The peers are the installed libraries (the
``bench`` extra: ``pip install -e '.[bench]'``), called the way their users call them:

  ours            ``WandbLogger.log_metrics``, blocking, ``backend=NullBackend()`` (no W&B write), every check kept
  ours offline    the same with mode="offline": rank 0 journals the row on the caller's thread and its writer thread
                  writes it into a real offline W&B run
  acc gather      the best pattern an Accelerate user writes: ``accelerate.utils.gather(torch.stack(values))``, then
                  ``.view(W, N).mean(0).tolist()`` (one all_gather; no key check, no call check, means only)
  acc reduce/key  ``accelerate.utils.reduce(value, "mean").item()`` per key (one all_reduce each)
  lightning       Lightning's ``sync_dist=True`` path per key: ``lightning.fabric.utilities.distributed.
                  _sync_ddp_if_available(value, reduce_op="mean")`` (a barrier + an all_reduce each) + ``.item()``
  torchmetrics    one ``torchmetrics.aggregation.MeanMetric`` per key: ``update``, ``compute`` (its sync), ``reset``

Times are rank 0's medians per call over every timed call, the patterns interleaved in rounds, each call started on
every rank together by an uncounted control group (``bench_metrics.Control``); "x acc" is the ratio to the Accelerate
gather pattern of the same cell (the goal: ours <= 1.2). Counts come from ``CollectiveProbe`` in a separate pass.

Run:      python benchmarks/bench_peers.py                       (--ranks 2 4 8 --keys 8 64 256)
          python benchmarks/bench_peers.py --paired --patterns ours ours_offline acc_gather --iters 300
Options:  --iters 60 --rounds 4 --cell-seconds 2 --no-offline --patterns ours acc_gather ... --paired
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_metrics import Control, expected_means, machine_line, make_metrics, median_us, p90_us, run_world  # noqa: E402

from sdxl_dist_log.testing.probe import CollectiveProbe  # noqa: E402
from sdxl_dist_log.testing.wandb_env import wandb_environment  # noqa: E402

PATTERNS = ("ours", "ours_offline", "acc_gather", "acc_reduce", "lightning", "torchmetrics")
LABELS = {"ours": "ours log_metrics (no W&B)", "ours_offline": "ours log_metrics (offline W&B)",
          "acc_gather": "Accelerate gather(stack) + mean", "acc_reduce": "Accelerate reduce /key",
          "lightning": "Lightning sync_dist /key", "torchmetrics": "torchmetrics MeanMetric /key"}


def _child(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    from accelerate import PartialState
    from accelerate.utils import gather, reduce
    from lightning.fabric.utilities.distributed import _sync_ddp_if_available
    from torchmetrics.aggregation import MeanMetric

    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.backends.base import NullBackend

    PartialState(cpu=True)  # joins the process group the runner made
    control = Control()
    base = dict(project="bench", dir=cfg["tmp"], log_system_metrics=False, collective_timeout=120.0,
                init_timeout=60.0, finish_timeout=30.0)
    loggers = {"ours": WandbLogger(WandbConfig(**base, mode="offline"), backend=NullBackend())}
    if "ours_offline" in cfg["patterns"]:
        loggers["ours_offline"] = WandbLogger(WandbConfig(**base, mode="offline"))
    probe = CollectiveProbe()

    def pattern(name: str, metrics: dict[str, torch.Tensor]) -> Callable[[int], dict[str, float]]:
        keys = list(metrics)
        if name.startswith("ours"):
            wb = loggers[name]
            return lambda step: wb.log_metrics(metrics, step=max(step, 0), prefix="")
        if name == "acc_gather":
            def acc_gather(step: int) -> dict[str, float]:
                gathered = gather(torch.stack(list(metrics.values())))
                return dict(zip(keys, gathered.view(world, -1).mean(0).tolist()))
            return acc_gather
        if name == "acc_reduce":
            return lambda step: {k: reduce(v, "mean").item() for k, v in metrics.items()}
        if name == "lightning":
            return lambda step: {k: _sync_ddp_if_available(v.clone(), reduce_op="mean").item()
                                 for k, v in metrics.items()}
        if name == "torchmetrics":
            means = {k: MeanMetric() for k in keys}

            def torchmetrics(step: int) -> dict[str, float]:
                out = {}
                for k, v in metrics.items():
                    means[k].update(v)
                    out[k] = means[k].compute().item()
                    means[k].reset()
                return out
            return torchmetrics
        raise ValueError(name)

    names = [p for p in cfg["patterns"] if p in PATTERNS and (not p.startswith("ours") or p in loggers)]
    results: dict[str, Any] = {}
    for n in cfg["keys"]:
        metrics = make_metrics(n, rank, "cpu")
        want = expected_means(n, world)
        cell: dict[str, Any] = {}
        fns = {p: pattern(p, metrics) for p in names}
        for p in names:
            got = fns[p](0)
            cell[p] = {"samples": [], "correct": bool(np.allclose([got[k] for k in metrics], want))}
            probe.reset()
            probe.install()
            try:
                fns[p](1)
            finally:
                probe.uninstall()
            cell[p].update(coll=sum(probe.api.values()), wire=sum(probe.wire.values()), sent=probe.sent)
            control.go(False)
        if cfg["paired"]:  # call by call, each pattern in turn: slow swings of a shared machine's load hit all alike
            order = random.Random(n)  # the same shuffles on every rank: no pattern always runs first
            for i in range(cfg["iters"]):
                for p in order.sample(names, len(names)):
                    control.go(False)
                    t0 = time.perf_counter()
                    fns[p](i + 2)
                    cell[p]["samples"].append(time.perf_counter() - t0)
            base = cell.get("acc_gather", {}).get("samples")
            for p in names:
                if base:
                    cell[p]["pair_ratio"] = float(np.median(np.array(cell[p]["samples"]) / np.array(base)))
        iters = max(1, cfg["iters"] // cfg["rounds"])
        for _ in range(0 if cfg["paired"] else cfg["rounds"]):
            for p in names:
                cell[p]["samples"] += control.timed(fns[p], iters=iters, seconds=cfg["cell_seconds"] / cfg["rounds"],
                                                    minimum=2, warmup=1)
        for p in names:
            samples = cell[p].pop("samples")
            cell[p].update(median_us=median_us(samples), p90_us=p90_us(samples), calls=len(samples))
        results[str(n)] = cell
    for wb in loggers.values():
        wb.finish()
    return results


def print_table(world: int, results: dict[str, Any]) -> None:
    paired = any("pair_ratio" in r for cell in results.values() for r in cell.values())
    print(f"{'keys':>5}  {'pattern':<33} {'median us':>10} {'p90 us':>9} {'calls':>5} {'x acc':>6} "
          + (f"{'pairs x':>7} " if paired else "") + f"{'coll/call':>9} {'wire':>5} {'B sent/rank':>11}")
    for n, cell in results.items():
        floor = cell.get("acc_gather", {}).get("median_us", float("nan"))
        for p, r in cell.items():
            label = LABELS[p] + ("" if r["correct"] else "  WRONG VALUES")
            pair = f"{r.get('pair_ratio', float('nan')):>7.2f} " if paired else ""
            print(f"{n:>5}  {label:<33} {r['median_us']:>10.1f} {r['p90_us']:>9.1f} {r['calls']:>5} "
                  f"{r['median_us'] / floor:>6.2f} {pair}{r['coll']:>9g} {r['wire']:>5g} {r['sent']:>11,}")
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--keys", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--iters", type=int, default=60, help="timed calls per pattern and cell (at most)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds the calls are split into")
    parser.add_argument("--cell-seconds", type=float, default=2.0, help="time cap per pattern and cell")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    parser.add_argument("--no-offline", action="store_true")
    parser.add_argument("--paired", action="store_true",
                        help="time the patterns call by call, in a shuffled order each time (--iters calls each), and "
                             "print the median of the per-call ratios to the Accelerate gather ('pairs x'); for a "
                             "loaded machine")
    args = parser.parse_args(argv)
    patterns = [p for p in args.patterns if not (args.no_offline and p == "ours_offline")]
    import accelerate
    import lightning
    import torchmetrics

    print(f"bench_peers: {machine_line()}")
    print(f"peers: accelerate {accelerate.__version__}, lightning {lightning.__version__}, torchmetrics "
          f"{torchmetrics.__version__}; gloo, CPU; "
          + (f"paired: {args.iters} calls per pattern, one of each in a shuffled order at a time" if args.paired else
             f"iters<={args.iters} in {args.rounds} interleaved rounds, cap {args.cell_seconds} s per pattern and cell")
          + "; times: rank 0, median per call")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_peers_") as tmp:
        env = wandb_environment(tmp)
        for world in args.ranks:
            cfg = dict(keys=args.keys, iters=args.iters, rounds=args.rounds, cell_seconds=args.cell_seconds,
                       patterns=patterns, tmp=os.path.join(tmp, f"w{world}"), paired=args.paired)
            t0 = time.perf_counter()
            values = run_world(_child, world, cfg, env=env, timeout=3600)
            print(f"\n== {world} rank(s)  ({time.perf_counter() - t0:.1f} s wall, load avg "
                  f"{os.getloadavg()[0]:.2f})")
            print_table(world, values[0])
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
