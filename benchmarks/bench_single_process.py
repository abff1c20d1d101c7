"""One process, no process group: what ``log_metrics`` adds over a bare ``run.log``, and what importing costs.

Tables:
1. ``WandbLogger.log_metrics`` of 64 metrics into a real offline W&B run against a bare ``run.log`` of the same dict
   (prefix applied; without and with ``step=``), each in its own live run with the very same ``wandb.Settings``
   (``backends.wandb_backend._settings``; the bare runs via ``reinit="create_new"``): python floats and 0-d CPU
   tensors. The variants are interleaved call by call in rotating order, so load from other processes hits them
   alike; the figure is the median over ``--rounds`` of each round's median per call. ``ours (no W&B)`` is the same
   call without W&B: the logger's own Python cost.
2. Where ours' time goes: the pure functions of ``sdxl_dist_log.metrics`` that one call runs, per call and per key
   (for 8, 64 and 512 keys), next to a plain ``.item()`` loop.
3. Import cost: ``python -X importtime -c "import sdxl_dist_log"`` (must import no wandb and no torch) and
   ``from sdxl_dist_log import WandbLogger`` (imports torch, still no wandb), parsed; medians of several runs, with
   ``import torch`` and ``import wandb`` alone for scale.

Run:      python benchmarks/bench_single_process.py
Options:  --keys 64  --calls 300  --rounds 3  --import-runs 5
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------------ import times

def importtime(statement: str) -> dict[str, Any]:
    """Run ``python -X importtime -c statement`` in a fresh interpreter; parse the per-module table."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, check=True)
    wall = time.perf_counter() - t0
    modules: dict[str, tuple[int, int]] = {}
    top: list[tuple[str, int]] = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_us, cumulative, indent, name = int(m[1]), int(m[2]), len(m[3]), m[4]
        modules[name] = (self_us, cumulative)
        if indent == 1:  # imported directly by the statement (top level)
            top.append((name, cumulative))
    return {"modules": modules, "top": top, "wall": wall, "total_us": sum(c for _, c in top)}


def import_report(runs: int) -> None:
    cases = [
        ("import sdxl_dist_log", "import sdxl_dist_log"),
        ("from sdxl_dist_log import WandbConfig", "from sdxl_dist_log import WandbConfig"),
        ("from sdxl_dist_log import WandbLogger", "from sdxl_dist_log import WandbLogger"),
        ("import torch (for scale)", "import torch"),
        ("import wandb (for scale)", "import wandb"),
    ]
    baseline = statistics.median(importtime("pass")["wall"] for _ in range(runs))
    print(f"\n3. Import cost (python -X importtime; medians of {runs} fresh interpreters; "
          f"interpreter start alone: {baseline * 1e3:.0f} ms wall)")
    print(f"{'statement':<40} {'importtime ms':>13} {'wall ms':>8} {'modules':>7} {'wandb mods':>10} "
          f"{'torch mods':>10}  heaviest top-level imports (ms)")
    for label, statement in cases:
        results = [importtime(statement) for _ in range(runs)]
        total = statistics.median(r["total_us"] for r in results) / 1e3
        wall = statistics.median(r["wall"] for r in results) * 1e3
        last = results[-1]
        mods = last["modules"]
        wandb_mods = sorted(m for m in mods if m == "wandb" or m.startswith("wandb."))
        torch_mods = [m for m in mods if m == "torch" or m.startswith("torch.")]
        heavy = sorted(last["top"], key=lambda t: -t[1])[:4]
        heavy_s = ", ".join(f"{n} {c / 1e3:.0f}" for n, c in heavy)
        print(f"{label:<40} {total:>13.1f} {wall:>8.0f} {len(mods):>7} {len(wandb_mods):>10} {len(torch_mods):>10}"
              f"  {heavy_s}")
        if statement.startswith(("import sdxl", "from sdxl")):
            own = {m: c for m, (s, c) in mods.items() if m.startswith("sdxl_dist_log")}
            print(f"{'':<40}   sdxl_dist_log modules loaded: {', '.join(sorted(own))}"
                  + (f"; WANDB MODULES: {wandb_mods[:5]}" if wandb_mods else "; no wandb module"))


# ------------------------------------------------------------------------------------------------ log_metrics cost

def _per_call(fn: Callable[[int], Any], calls: int, warmup: int = 10) -> float:
    """Median seconds per call of fn(i)."""
    for i in range(warmup):
        fn(i)
    samples = []
    for i in range(calls):
        t0 = time.perf_counter()
        fn(warmup + i)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def log_metrics_report(keys: int, calls: int, rounds: int, tmp: str) -> None:
    import torch
    import wandb

    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.backends.base import NullBackend
    from sdxl_dist_log.backends.wandb_backend import _settings
    from sdxl_dist_log.metrics import apply_prefix

    floats = {f"loss/k{j:03d}": 0.5 * j + 0.25 for j in range(keys)}
    tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in floats.items()}
    inputs = {"python floats": floats, "0-d CPU tensors": tensors}
    config = WandbConfig(project="bench", mode="offline", dir=os.path.join(tmp, "runs"), log_system_metrics=False)
    prefix = config.metric_prefix
    t0 = time.perf_counter()
    ours = WandbLogger(config)
    ours_setup = time.perf_counter() - t0
    disabled = WandbLogger(WandbConfig(project="bench", mode="offline", dir=config.dir, log_system_metrics=False),
                           backend=NullBackend())  # the logger's own work, no W&B
    # two more runs in the same process (wandb >= 0.19: reinit="create_new"), with our backend's exact Settings
    t0 = time.perf_counter()
    bare_runs = {name: wandb.init(project="bench", dir=config.dir, settings=_settings(config, "offline"),
                                  reinit="create_new") for name in ("bare", "bare_step")}
    bare_setup = (time.perf_counter() - t0) / 2
    step = [0]

    def variants(d: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        def bare_step() -> None:
            bare_runs["bare_step"].log(apply_prefix(d, prefix), step=step[0])

        return {"bare": lambda: bare_runs["bare"].log(apply_prefix(d, prefix)),
                "bare_step": bare_step,
                "ours": lambda: ours.log_metrics(d, step=step[0]),
                "disabled": lambda: disabled.log_metrics(d, step=step[0])}

    calls_by = {(kind, side): fn for kind, d in inputs.items() for side, fn in variants(d).items()}
    order = list(calls_by)
    for _ in range(10):  # warm-up
        step[0] += 1
        for fn in calls_by.values():
            fn()
    medians: dict[tuple[str, str], list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        samples: dict[tuple[str, str], list[float]] = {name: [] for name in order}
        for i in range(calls):
            step[0] += 1
            rotated = order[i % len(order):] + order[: i % len(order)]  # every variant in every position
            for name in rotated:
                fn = calls_by[name]
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
        for name in order:
            medians[name].append(statistics.median(samples[name]))
    ours.finish()
    disabled.finish()
    for run in bare_runs.values():
        run.finish()
    print(f"\n1. log_metrics vs a bare run.log, {keys} metrics, one process, mode='offline' ({rounds} rounds x "
          f"{calls} calls, the variants interleaved call by call in rotating order, each into its own live run; "
          "median of the round medians; same wandb.Settings)")
    print(f"{'values':<17} {'side':<40} {'us/call':>9} {'us/key':>7} {'x bare':>7}  round medians us")
    labels = {"bare": "bare run.log(prefixed dict)", "bare_step": "bare run.log(prefixed dict, step=)",
              "ours": "ours log_metrics (offline)", "disabled": "ours log_metrics (no W&B)"}
    for kind in inputs:
        bare_us = statistics.median(medians[(kind, "bare")]) * 1e6
        for side in labels:
            values = medians[(kind, side)]
            us = statistics.median(values) * 1e6
            spread = " ".join(f"{v * 1e6:.0f}" for v in values)
            print(f"{kind:<17} {labels[side]:<40} {us:>9.1f} {us / keys:>7.2f} {us / bare_us:>7.2f}  {spread}")
    print(f"(start-up: WandbLogger(offline) {ours_setup * 1e3:.0f} ms, wandb.init {bare_setup * 1e3:.0f} ms, "
          "with the wandb-core service already up after the first)")


# ------------------------------------------------------------------------------------------------ components

def _logger_caches_plans() -> bool:
    from sdxl_dist_log.wandb_logger import WandbLogger

    return hasattr(WandbLogger, "_plan")


def components_report(key_counts: list[int], calls: int) -> None:
    import numpy as np
    import torch

    from sdxl_dist_log import metrics as M

    print("\n2. Where ours' time goes: sdxl_dist_log.metrics functions one log_metrics call runs (no W&B, no "
          f"collective), median us per call over {calls} calls [us per key]. resolve_reduce and the fingerprint run "
          "on the first call with a key set only if the logger caches its plans (WandbLogger._plan: "
          f"{'present' if _logger_caches_plans() else 'absent'} in this checkout)")
    cols = ["resolve_reduce", "MetricPlan().fingerprint", "pack_values(floats)", "pack_values(CPU tensors)",
            "reduce_rows(2 ranks)", "apply_prefix", "[.item() loop, tensors]"]
    print(f"{'keys':>5}  " + "  ".join(f"{c:>24}" for c in cols))
    for n in key_counts:
        floats = {f"loss/k{j:04d}": 0.5 * j for j in range(n)}
        tensors = {k: torch.tensor(v, dtype=torch.float32) for k, v in floats.items()}
        keys = tuple(sorted(floats))
        ops = M.resolve_reduce(keys, {})
        plan = M.MetricPlan(keys, ops)
        row = M.pack_row(plan, M.pack_values(floats, keys))
        rows = np.stack([row, row])
        fns = [lambda i: M.resolve_reduce(keys, {}),
               lambda i: M.MetricPlan(keys, ops).fingerprint,
               lambda i: M.pack_values(floats, keys),
               lambda i: M.pack_values(tensors, keys),
               lambda i: M.reduce_rows(plan, rows),
               lambda i: M.apply_prefix(floats, "metrics/"),
               lambda i: [v.item() for v in tensors.values()]]
        cells = []
        for fn in fns:
            us = _per_call(fn, calls, warmup=5) * 1e6
            cells.append(f"{us:>10.1f} [{us / n:>6.2f}]")
        print(f"{n:>5}  " + "  ".join(f"{c:>24}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=64)
    parser.add_argument("--calls", type=int, default=300, help="timed calls per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--component-keys", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--import-runs", type=int, default=5)
    args = parser.parse_args(argv)
    from bench_metrics import machine_line, wandb_env

    print(f"bench_single_process: {machine_line()}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_single_") as tmp:
        os.environ.update(wandb_env(tmp))
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "WANDB_MODE", "WANDB_API_KEY"):
            os.environ.pop(var, None)
        import_report(args.import_runs)  # before this process imports anything heavy (subprocesses anyway)
        log_metrics_report(args.keys, args.calls, args.rounds, tmp)
        components_report(args.component_keys, max(20, args.calls // 3))
        import wandb

        wandb.teardown()
    print(f"\ntotal {time.perf_counter() - start:.1f} s; load avg at the end "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
