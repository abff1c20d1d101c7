"""The demo's wall and CPU time as a first-time user sees it: ``sdxl-dist-log demo`` timed as a whole process.

Runs the command ``--runs`` times after one warm-up run, each in a fresh temporary directory that is removed, and
prints min / median / max of wall seconds and of CPU seconds (user + system of the finished processes, from the OS).
``--vs PYTHON`` alternates with the same command of another checkout's interpreter (the baseline) and prints the
ratios run by run, so drift of a shared machine hits both alike. The load average is printed before each pair.

Run: .venv/bin/python benchmarks/bench_demo.py [--runs 5] [--vs /path/to/other/.venv/bin/python] [-- demo args]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _once(python: str, args: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as work:
        env = {**os.environ, "WANDB_SILENT": "true", "WANDB_ERROR_REPORTING": "false", "TMPDIR": work}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([python, "-m", "sdxl_dist_log.cli", "demo", "--out-dir", os.path.join(work, "out"), *args],
                       cwd=work, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=600)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _row(name: str, values: list[float]) -> str:
    return f"{name:<12} {min(values):8.2f} {statistics.median(values):8.2f} {max(values):8.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--vs", default=None, metavar="PYTHON", help="baseline interpreter (another checkout's venv)")
    parser.add_argument("demo_args", nargs="*", default=["--nproc", "2", "--steps", "20"])
    args = parser.parse_args()
    pythons = {"this": sys.executable, **({"baseline": args.vs} if args.vs else {})}
    for python in pythons.values():
        _once(python, args.demo_args)  # warm-up: the page cache, compiled bytecode
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in pythons}
    for _ in range(args.runs):
        print(f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
        for name, python in pythons.items():
            results[name].append(_once(python, args.demo_args))
    print(f"sdxl-dist-log demo {' '.join(args.demo_args)}: {args.runs} runs, {os.cpu_count()} cores")
    print(f"{'':<12} {'min':>8} {'median':>8} {'max':>8}")
    for name, runs in results.items():
        print(_row(f"{name} wall s", [w for w, _ in runs]))
        print(_row(f"{name} cpu s", [c for _, c in runs]))
    if args.vs:
        print(_row("ratio wall", [a[0] / b[0] for a, b in zip(results["this"], results["baseline"])]))
        print(_row("ratio cpu", [a[1] / b[1] for a, b in zip(results["this"], results["baseline"])]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
