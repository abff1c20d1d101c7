"""The HTML report of a big run: file size, time to write it, time until a real browser has drawn every chart.

A synthetic run as a long multi-node job writes it, made by the installed wandb (offline, in a subprocess): ROWS
history rows, of which every fifth is a system row of NODES x GPUS GPUs (15 per-GPU figures, node figures,
cluster aggregates) and the others training rows (loss with a min/max band, lr, grad norm, throughput, straggler
scores of every rank in three sections), images from 8 ranks every 500 steps, a checkpoint artifact every 2,000
steps. Node 3's GPU 5 runs hot and throttles for a while; rank 13 is slow in its data section for a while.

Two pages are written from it, side by side:

  downsampled    the default: lines keep each bucket's lowest and highest point (<= 1,000 points), heatmap rows
                 <= 1,000 buckets keeping each bucket's worst value
  every point    the same report with no downsampling (what plotting the history as logged gives)

Seconds to read the run (``read_run``, and as the report reads it: without the summary), then for each page:
seconds to build and write it, the file size, and in headless Chromium (Debian's, driven by Playwright:
``sdxl_dist_log.testing.browser``) the ms from navigation until the charts of the first screen (1400 x 900) are
drawn (``data-first-screen``: the page is usable), then, scrolling a screen at a time as soon as the charts in view
have drawn (the page draws a chart as it comes within a screen of the viewport), the longest wait of a screen for
its charts, and the ms until every chart is drawn (``data-rendered``); the ms of the drawing alone (summed over
charts), the wall time of the whole scroll-through, and the CPU seconds of the browser's processes meanwhile
(which, unlike the times, other work on the machine barely changes). Browser figures are the median of --loads
page loads; the load average is in the header line (on a shared machine the browser's times follow it).

Run:      python benchmarks/bench_report.py                       # --rows 10000 --nodes 4 --gpus 8 --loads 3
Smaller:  python benchmarks/bench_report.py --rows 2000 --nodes 1 --gpus 2
Keep the run to rerun the pages only: --run-dir DIR (made there when missing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_metrics import machine_line  # noqa: E402

from sdxl_dist_log.offline import find_run_dirs, read_run  # noqa: E402
from sdxl_dist_log.report import ReportOptions, load_runs, merge_attempts, report_html  # noqa: E402
from sdxl_dist_log.testing.browser import open_report  # noqa: E402
from sdxl_dist_log.testing.wandb_env import wandb_environment  # noqa: E402

MAKE_RUN = r"""
import sys
from pathlib import Path
import numpy as np
import wandb

out, rows, nodes, gpus = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
world = nodes * gpus
rng = np.random.default_rng(0)
ranks = {str(r): {"host": f"node-{r // gpus:03d}", "gpu": r % gpus} for r in range(world)}
config = {"lr": 1e-4, "model": {"name": "sdxl", "params": 2.6e9},
          "sdxl_dist_log": {"step_metric": "trainer/step", "world_size": world, "num_nodes": nodes,
                            "hostnames": {f"node{n}": f"node-{n:03d}" for n in range(nodes)}, "ranks": ranks}}
settings = wandb.Settings(x_transaction_log_flush_interval=0.5, x_disable_stats=True)
run = wandb.init(project="bench-report", name="big", dir=str(out), config=config, settings=settings)
sections = ("data", "forward_backward", "optimizer")
figures = ("utilization", "memory_used", "memory_total", "memory_percent", "temperature", "power_watts",
           "power_limit_watts", "power_percent", "sm_clock_mhz", "clock_event_reasons", "clock_throttled",
           "ecc_corrected", "memory_allocated", "memory_reserved", "max_memory_allocated")
step = 0
sample = 0
t0 = 1.8e9
for i in range(rows):
    t = t0 + i * 3.0
    if i % 5 == 4:  # a system row
        row = {"trainer/step": step, "_timestamp": t}
        per_fig = {f: [] for f in figures}
        for n in range(nodes):
            for g in range(gpus):
                hot = (n, g) == (min(3, nodes - 1), min(5, gpus - 1)) and 1200 <= sample < 1300
                util = 0.0 if rng.random() < 0.002 else 97.0 + rng.normal()
                temp = 88.0 + rng.normal() if hot else 65.0 + rng.normal()
                vals = dict(utilization=util, memory_used=6.0e10 + rng.normal() * 1e8, memory_total=8.5e10,
                            memory_percent=70.0 + rng.normal() * 0.1, temperature=temp,
                            power_watts=(520.0 if hot else 650.0) + rng.normal() * 5, power_limit_watts=700.0,
                            power_percent=92.0, sm_clock_mhz=1400.0 if hot else 1980.0, clock_event_reasons=4.0 if hot else 0.0,
                            clock_throttled=1.0 if hot else 0.0, ecc_corrected=0.0, memory_allocated=5.0e10,
                            memory_reserved=5.5e10, max_memory_allocated=5.8e10)
                for f, v in vals.items():
                    row[f"system/node{n}/gpu{g}/{f}"] = float(v)
                    per_fig[f].append(float(v))
            for f, v in (("cpu/percent", 40.0), ("memory/percent", 60.0), ("disk/percent", 30.0),
                         ("network/sent_bytes_per_s", 2e9), ("network/recv_bytes_per_s", 2e9), ("load/avg_1m", 12.0)):
                row[f"system/node{n}/{f}"] = v + rng.normal()
        for f, values in per_fig.items():
            row[f"system/all/gpu/{f}/min"] = min(values)
            row[f"system/all/gpu/{f}/mean"] = sum(values) / len(values)
            row[f"system/all/gpu/{f}/max"] = max(values)
        row["system/all/gpu/count"] = float(world)
        sample += 1
    else:
        loss = 2.0 * np.exp(-step / 3000) + 0.05 * rng.normal() + (3.0 if step == 4321 else 0.0)
        spread = abs(rng.normal()) * 0.3
        row = {"trainer/step": step, "_timestamp": t, "metrics/loss": loss, "metrics/loss_min": loss - spread,
               "metrics/loss_max": loss + spread, "metrics/lr": 1e-4 * (0.5 + 0.5 * np.cos(step / 8000 * np.pi)),
               "metrics/grad_norm": abs(rng.normal()) + 1.0, "metrics/samples_per_s": 1024 + 10 * rng.normal()}
        for s in sections:
            times = 1.0 + 0.05 * rng.random(world)
            if s == "data" and 5000 <= step < 6000:
                times[min(13, world - 1)] *= 2.5
            median = float(np.median(times))
            for r in range(world):
                row[f"straggler/{s}/score/rank{r}"] = float(times[r] / median)
            row[f"straggler/{s}/slowest_rank"] = float(np.argmax(times))
            row[f"straggler/{s}/spread"] = float(times.max() / times.min())
        if step % 500 == 0:
            images = [wandb.Image(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), caption=f"[rank {r}] step {step}")
                      for r in range(min(8, world))]
            row["sample/images"] = images
        step += 1
    run.log(row, commit=True)
    if i and i % 2500 == 0:
        (out / "ckpt.bin").write_bytes(rng.bytes(1024))
        art = wandb.Artifact("ckpt", type="model", metadata={"step": step})
        art.add_file(str(out / "ckpt.bin"))
        run.log_artifact(art, aliases=["latest"])
run.finish()
"""


def make_run(folder: Path, rows: int, nodes: int, gpus: int) -> float:
    """Write the synthetic run under ``folder`` with wandb in a subprocess; return the seconds it took."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "make_run.py"
    script.write_text(textwrap.dedent(MAKE_RUN))
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(wandb_environment(folder), WANDB_MODE="offline", WANDB_DIR=str(folder))
    start = time.perf_counter()
    subprocess.run([sys.executable, str(script), str(folder), str(rows), str(nodes), str(gpus)], env=env, check=True,
                   timeout=3600)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node")
    parser.add_argument("--loads", type=int, default=3, help="page loads per page in the browser")
    parser.add_argument("--run-dir", type=Path, default=None, help="keep the run here (reused when present)")
    parser.add_argument("--no-full", action="store_true", help="skip the every-point page")
    args = parser.parse_args()

    print(machine_line())
    tmp = tempfile.TemporaryDirectory(prefix="bench-report-")
    folder = args.run_dir or Path(tmp.name) / "run"
    if not (folder / "wandb").is_dir():
        made = make_run(folder, args.rows, args.nodes, args.gpus)
        print(f"run written by wandb in {made:.1f} s: {args.rows} rows, {args.nodes} nodes x {args.gpus} GPUs")

    (run_dir,) = find_run_dirs(folder)
    start = time.perf_counter()
    whole = read_run(run_dir)
    read_s = time.perf_counter() - start
    del whole
    start = time.perf_counter()
    runs = load_runs([folder])
    load_s = time.perf_counter() - start
    merged = merge_attempts(runs)
    keys = {k for row in merged.rows for k in row}
    print(f"read_run: {read_s:.2f} s for {len(merged.rows)} rows, {len(keys)} keys, "
          f"{sum(len(r) for r in merged.rows):,} values; the report's read (no summary): {load_s:.2f} s")

    pages = [("downsampled", ReportOptions())]
    if not args.no_full:
        pages.append(("every point", ReportOptions(max_points=10**9, max_columns=10**9)))
    print()
    print(f"{'page':<12} {'build+write s':>13} {'size MiB':>9} {'1st screen ms':>13} {'max wait ms':>11} "
          f"{'all drawn ms':>12} {'draw ms':>8} {'wall s':>7} {'browser CPU s':>13} {'charts':>6} {'errors':>6}")
    results = {}
    for label, options in pages:
        out = Path(tmp.name) / f"{label.replace(' ', '_')}.html"
        start = time.perf_counter()
        out.write_text(report_html(merged, options), encoding="utf-8")
        build_s = time.perf_counter() - start
        loads = [open_report(out, timeout_s=300) for _ in range(args.loads)]
        rendered = [float(p.rendered) if p.rendered.isdigit() else float("nan") for p in loads]
        size_mib = out.stat().st_size / 2**20
        row = (statistics.median(rendered), statistics.median(p.plot_ms for p in loads),
               statistics.median(p.wall_s for p in loads), statistics.median(p.first_screen_ms for p in loads),
               statistics.median(p.cpu_s for p in loads),
               statistics.median(max(p.screen_waits[1:], default=0.0) * 1000 for p in loads))
        results[label] = (build_s, size_mib, *row)
        errors = sum(len(p.errors) for p in loads)
        drew = f"{min(sum(c.drew for c in p.charts) for p in loads)}/{len(loads[0].charts)}"
        print(f"{label:<12} {build_s:>13.2f} {size_mib:>9.2f} {row[3]:>13.0f} {row[5]:>11.0f} {row[0]:>12.0f} "
              f"{row[1]:>8.0f} {row[2]:>7.2f} {row[4]:>13.2f} {drew:>6} {errors:>6}")
    if len(results) == 2:
        down, full = results["downsampled"], results["every point"]
        print(f"\nevery point / downsampled: size x{full[1] / down[1]:.1f}, render x{full[2] / down[2]:.1f}, "
              f"build x{full[0] / down[0]:.1f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
