"""``mode="disabled"``: what a logging call costs when logging is off, next to a no-op; and that it sends nothing.

1. One process: median ns per call of ``log_metrics`` (8 python floats), ``log_images`` (4 uint8 64x64 images) and
   ``main_process.log_metrics`` on a disabled logger, beside a Python no-op function taking the same arguments, and
   beside the same calls on an offline logger (the call with logging on, for scale). Patterns interleaved in rounds;
   the figure is the median over rounds of each round's median.
2. Two ranks (gloo, ``run_ranks``): torch.distributed calls and bytes per rank for logger construction, 20
   ``log_metrics`` and 5 ``log_images`` calls and ``finish()``, counted by ``CollectiveProbe`` (exact), disabled vs
   offline.

Run:      python benchmarks/bench_disabled.py
Options:  --calls 2000  --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

METRICS = {f"loss/{i}": 0.1 * i for i in range(8)}
IMAGES = [np.zeros((64, 64, 3), np.uint8)] * 4


def noop(*args: Any, **kwargs: Any) -> None:
    return None


def time_calls(fn: Callable[[], Any], calls: int) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples)


def per_call(calls: int, rounds: int) -> None:
    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.testing.wandb_env import apply, wandb_environment

    apply(wandb_environment(tempfile.mkdtemp()))
    common = dict(project="bench", log_system_metrics=False, dir=tempfile.mkdtemp())
    off = WandbLogger(WandbConfig(mode="disabled", **common))
    on = WandbLogger(WandbConfig(mode="offline", **common))
    step = iter(range(10**9))
    patterns: dict[str, Callable[[], Any]] = {
        "no-op(metrics, step=)": lambda: noop(METRICS, step=0),
        "disabled log_metrics": lambda: off.log_metrics(METRICS, step=0),
        "disabled main_process.log_metrics": lambda: off.main_process.log_metrics(METRICS, step=0),
        "no-op(images, step=)": lambda: noop(IMAGES, step=0),
        "disabled log_images": lambda: off.log_images(IMAGES, step=0),
        "offline log_metrics": lambda: on.log_metrics(METRICS, step=next(step)),
        "offline log_images": lambda: on.log_images(IMAGES, step=next(step)),
    }
    slow = {"offline log_images": max(20, calls // 50), "offline log_metrics": max(50, calls // 10)}
    results: dict[str, list[float]] = {name: [] for name in patterns}
    for _ in range(rounds):
        for name, fn in patterns.items():
            results[name].append(time_calls(fn, slow.get(name, calls)))
    on.finish()
    off.finish()
    medians = {name: statistics.median(values) for name, values in results.items()}
    print(f"\n1. per call, one process ({calls} calls x {rounds} rounds; offline patterns fewer calls)")
    print(f"{'pattern':<36} {'median ns':>10} {'vs no-op':>9}")
    for name, value in medians.items():
        base = medians["no-op(images, step=)" if "images" in name else "no-op(metrics, step=)"]
        print(f"{name:<36} {value:>10.0f} {value / base:>8.1f}x")


def _count(mode: str) -> Callable[[int], dict[str, Any]]:
    def body(rank: int) -> dict[str, Any]:
        from sdxl_dist_log import WandbConfig, WandbLogger
        from sdxl_dist_log.testing.probe import CollectiveProbe
        from sdxl_dist_log.testing.wandb_env import apply, wandb_environment

        apply(wandb_environment(tempfile.mkdtemp()))
        with CollectiveProbe() as probe:
            with WandbLogger(WandbConfig(project="bench", mode=mode, dir=tempfile.mkdtemp(),
                                         log_system_metrics=False)) as wb:
                for step in range(20):
                    wb.log_metrics(METRICS, step=step)
                for step in range(5):
                    wb.log_images(IMAGES, step=step)
        return {"calls": sum(probe.api.values()), "bytes": probe.sent + probe.received}

    return body


def counts() -> None:
    from sdxl_dist_log.launch.local import run_ranks, values_or_raise

    print("\n2. torch.distributed calls and bytes per rank: construction + 20 log_metrics + 5 log_images + finish")
    print(f"{'mode':<10} {'rank':>4} {'calls':>6} {'bytes':>9}")
    for mode in ("disabled", "offline"):
        for rank, result in enumerate(values_or_raise(run_ranks(_count(mode), 2, timeout=300))):
            print(f"{mode:<10} {rank:>4} {result['calls']:>6} {result['bytes']:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    opts = parser.parse_args()
    per_call(opts.calls, opts.rounds)
    counts()


if __name__ == "__main__":
    main()
