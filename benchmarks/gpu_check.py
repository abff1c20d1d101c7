"""One-shot GPU check (run on a machine with an NVIDIA GPU): real NVML values into an offline run, host syncs per
``log_metrics`` call with CUDA tensor metrics (blocking and async) against the ``.item()``-per-metric pattern, and
NCCL vs our gloo side group timings. Prints a report; writes nothing outside ``--out``.

    python benchmarks/gpu_check.py --out /tmp/gpu_check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path


def count_syncs(fn, iters: int) -> tuple[float, float, dict[str, int]]:
    """Run fn ``iters`` times under torch's sync debug mode; return (syncs per call on this thread, median us, by thread)."""
    import torch

    by_thread: dict[str, int] = {}
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            name = threading.current_thread().name
            by_thread[name] = by_thread.get(name, 0) + 1

    times = []
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(iters):
                    start = time.perf_counter()
                    fn()
                    times.append((time.perf_counter() - start) * 1e6)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = original
    main = by_thread.get(threading.main_thread().name, 0)
    return main / iters, statistics.median(times), by_thread


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/gpu_check")
    parser.add_argument("--keys", type=int, default=64)
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for var, sub in (("WANDB_DIR", "w"), ("WANDB_DATA_DIR", "d"), ("WANDB_CACHE_DIR", "c"), ("WANDB_CONFIG_DIR", "cf")):
        os.environ.setdefault(var, str(out / sub))
        Path(os.environ[var]).mkdir(parents=True, exist_ok=True)
    os.environ.update(WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")

    import torch
    import torch.distributed as dist
    import wandb

    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.offline import read_run

    print(f"torch {torch.__version__}  cuda {torch.version.cuda}  wandb {wandb.__version__}  "
          f"gpu {torch.cuda.get_device_name(0)}  python {sys.version.split()[0]}")
    report: dict[str, object] = {}
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)

    # -- 1. single process: real NVML + CUDA metrics into an offline run -------------------------------------------
    keys = [f"k{i:02d}" for i in range(args.keys)]
    ballast = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)  # 256 MiB so memory_allocated is visible
    config = WandbConfig(project="gpu-check", mode="offline", dir=str(out / "runs_single"),
                         system_metrics_interval=0.5, log_system_metrics=True)
    with WandbLogger(config) as wb:
        for step in range(6):
            wb.log_metrics({k: torch.tensor(float(i + step), device=device) for i, k in enumerate(keys)}, step=step)
            time.sleep(0.3)
        run_dir = wb.run_dir
    run = read_run(run_dir)
    system_keys = sorted({k for row in run.history for k in row if k.startswith("system/gpu")})
    last = {k: v for row in run.history for k, v in row.items() if k.startswith("system/gpu")}
    print(f"\n[1] NVML into the run: {len(run.rows_with('system/gpu0/utilization'))} system rows; GPU keys:")
    for key in system_keys:
        print(f"    {key} = {last.get(key)}")
    alloc = last.get("system/gpu0/memory_allocated")
    report["nvml_keys"] = system_keys
    report["gpu0_memory_allocated"] = alloc
    print(f"    torch.cuda.memory_allocated now = {torch.cuda.memory_allocated(device)} "
          f"(ballast {ballast.numel()} bytes) -> mapped to gpu0: {alloc is not None and alloc >= ballast.numel()}")
    del ballast

    # -- 2. host syncs per call with CUDA tensor metrics -------------------------------------------------------------
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl", rank=0, world_size=1, timeout=timedelta(seconds=60), device_id=device)
    metrics = {k: torch.tensor(float(i), device=device) for i, k in enumerate(keys)}
    print(f"\n[2] host syncs per call, {args.keys} CUDA 0-d tensor metrics, NCCL default group, world size 1")
    results = {}
    for label, async_metrics in (("ours, blocking", False), ("ours, async_metrics", True)):
        cfg = WandbConfig(project="gpu-check", mode="offline", dir=str(out / f"runs_{async_metrics}"),
                          log_system_metrics=False, async_metrics=async_metrics)
        with WandbLogger(cfg) as wb:
            for _ in range(5):
                wb.log_metrics(metrics, step=0)
            step = iter(range(1, 10**6))
            syncs, median_us, threads = count_syncs(lambda: wb.log_metrics(metrics, step=next(step)), args.iters)
        results[label] = (syncs, median_us, threads)
        print(f"    {label:<28} {syncs:5.2f} syncs/call on the training thread  {median_us:8.1f} us/call  "
              f"(syncs by thread over {args.iters} calls: {threads})")

    def item_per_metric():
        return {k: v.item() for k, v in metrics.items()}

    syncs, median_us, threads = count_syncs(item_per_metric, args.iters)
    results[".item() per metric"] = (syncs, median_us, threads)
    print(f"    {'.item() per metric':<28} {syncs:5.2f} syncs/call on the training thread  {median_us:8.1f} us/call")

    def lightning_per_key_nccl():
        for v in metrics.values():
            dist.barrier()
            t = v.clone()
            dist.all_reduce(t)
            t.item()

    syncs, median_us, threads = count_syncs(lightning_per_key_nccl, max(5, args.iters // 5))
    results["barrier+all_reduce+item per key (NCCL)"] = (syncs, median_us, threads)
    print(f"    {'barrier+all_reduce+item/key':<28} {syncs:5.2f} syncs/call on the training thread  "
          f"{median_us:8.1f} us/call")
    report["syncs"] = {k: {"syncs_per_call": v[0], "median_us": v[1]} for k, v in results.items()}

    # -- 3. NCCL vs gloo side group: one all_reduce of the packed row vs per-key --------------------------------------
    print("\n[3] collective timings, world size 1 (launch + completion cost per call)")
    row = torch.zeros(len(keys) + 7, dtype=torch.float64, device=device)

    def timed(fn, iters=200):
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            samples.append((time.perf_counter() - start) * 1e6)
        return statistics.median(samples)

    nccl_one = timed(lambda: dist.all_reduce(row))
    nccl_per_key = timed(lambda: [dist.all_reduce(v.clone()) for v in metrics.values()], iters=50)
    print(f"    NCCL one all_reduce of the packed row: {nccl_one:8.1f} us;  NCCL one all_reduce per key "
          f"({args.keys}): {nccl_per_key:8.1f} us  (ratio {nccl_per_key / nccl_one:.1f}x)")
    report["nccl_us"] = {"one_packed": nccl_one, "per_key": nccl_per_key}
    dist.destroy_process_group()
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nreport: {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
