"""Metric reduction across ranks: ``WandbLogger.log_metrics`` against the peers' patterns, side by side.

Every pattern turns the same per-rank dict of N scalar metrics into N reduced (mean over ranks) python floats on
every rank, in real processes (one per rank) joined by a process group:

  ours            ``WandbLogger.log_metrics`` (``backend=NullBackend()``: the collective path only, no W&B write)
  ours async      the same with ``async_metrics=True``: the time is the TRAINING thread's; the reduction runs on the
                  logger's worker thread ("drained" adds the worker's time: a burst of calls plus the drain, per call)
  ours offline    (one configuration) mode="offline": the full cost, rank 0 writes the row into a real W&B run
  lightning       per key ``dist.barrier()`` + ``dist.all_reduce`` of a scalar tensor + ``.item()``: what
                  ``self.log(key, value, sync_dist=True)`` does for each key
  all_reduce/key  one ``all_reduce`` per key (+ ``.item()``)
  gather_object   ``dist.all_gather_object`` of the ``{key: float}`` dict, reduced locally
  item+1 reduce   hand-rolled minimum: ``.item()`` per key, then ONE ``all_reduce`` of a float64 vector (no key
                  check, no reduce ops, no timeout: the floor that ours' safety is paid against)

Counts are taken in a separate pass with wrapped functions (so the wrappers never perturb the times):
``torch.distributed`` functions are wrapped at both ``torch.distributed`` and ``distributed_c10d`` (so the collectives
that ``all_gather_object`` issues inside count as "wire" collectives), with the bytes of the tensors each rank puts in;
the counts come from ``sdxl_dist_log.testing.probe``, the same probe the tests assert with. With ``--device cuda``
host syncs are counted twice:
by wrapping ``Tensor.item/.cpu/.tolist/.to/__float__/__int__/__bool__``, ``torch.cuda.synchronize``,
``torch.cuda.Event.synchronize`` and ``torch.cuda.Stream.synchronize`` (calls on CUDA tensors only), and by
``torch.cuda.set_sync_debug_mode("warn")`` with every warning recorded; both are split by thread (training thread vs
the logger's worker).

Ours always reduces on its own gloo group. The peers run on a separate gloo group of their own (``--backend gloo``),
or on the default NCCL group with CUDA tensors (``--backend nccl --device cuda``). Patterns are interleaved in
``--rounds`` rounds; times are medians over every timed call (each call starts after an uncounted control barrier on
a third gloo group, so every rank enters it together). Times are rank 0's.

Run (CPU, this machine):   python benchmarks/bench_metrics.py
GPU machine, N GPUs:       python benchmarks/bench_metrics.py --device cuda --backend nccl --ranks 1   (or 2 4 8)
Options: --ranks 2 4  --keys 8 64 512  --iters 60  --rounds 3  --cell-seconds 1.5  --offline-ranks R --offline-keys 64
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from sdxl_dist_log.launch.local import run_ranks, values_or_raise  # noqa: E402
from sdxl_dist_log.testing.probe import CollectiveProbe  # noqa: E402
from sdxl_dist_log.testing.wandb_env import wandb_environment as wandb_env  # noqa: E402

# ------------------------------------------------------------------------------------------------------------------
# Shared helpers (bench_images.py imports these)
# ------------------------------------------------------------------------------------------------------------------


def machine_line() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import importlib.metadata as md

        wandb_version = md.version("wandb")
    except Exception:
        wandb_version = "?"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        import subprocess

        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "sdxl_dist_log"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        changed = [line[3:] for line in dirty if line.strip()]
        code = f"code {head}" + (f" + uncommitted {', '.join(changed)}" if changed else "")
    except Exception:
        code = "code: no git"
    return (f"{cpu}, {os.cpu_count()} cores (load avg {load}); python {platform.python_version()}, torch {torch.__version__}, "
            f"wandb {wandb_version}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {code}")


def check_device_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse --backend nccl without --device cuda, and --device cuda without (enough) GPUs."""
    if args.backend == "nccl" and args.device != "cuda":
        parser.error("--backend nccl needs --device cuda")
    if args.device == "cuda":
        # the parent must not initialise CUDA before the children start; ask in a throwaway process
        import subprocess

        count = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                                   capture_output=True, text=True, check=True).stdout.strip() or 0)
        if count == 0:
            parser.error("--device cuda but no CUDA device is visible")
        if args.backend == "nccl" and max(args.ranks) > count:
            parser.error(f"--backend nccl needs a GPU per rank: {count} visible, --ranks {args.ranks}")


def run_world(fn: Callable[..., Any], world: int, payload: Any, *, backend: str = "gloo", device: str = "cpu",
              env: dict[str, str] | None = None, timeout: float = 600.0, start_method: str | None = None) -> list[Any]:
    """Run ``fn(rank, world, payload)`` on ``world`` real processes joined by a process group; values by rank.

    Forked on CPU (cheap), spawned with CUDA (a forked CUDA context is unusable); ``fn`` must then be a module-level
    function.
    """
    results = run_ranks(functools.partial(_call_with_world, fn, world, payload), world, timeout=timeout,
                        backend=backend, env=env, pg_timeout=120.0,
                        start_method=start_method or ("spawn" if device == "cuda" else "fork"))
    return values_or_raise(results)


def _call_with_world(fn: Callable[..., Any], world: int, payload: Any, rank: int) -> Any:
    return fn(rank, world, payload)




def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6 if samples else float("nan")


def p90_us(samples: list[float]) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[int(0.9 * (len(ordered) - 1))] * 1e6


class Control:
    """An uncounted gloo group that starts every timed call on all ranks together and agrees when to stop."""

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo")

    def go(self, stop: bool) -> bool:
        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag[0] > 0)

    def timed(self, call: Callable[[int], Any], *, iters: int, seconds: float, minimum: int = 3,
              warmup: int = 0) -> list[float]:
        """Per-call seconds of ``call(i)``; at most ``iters`` calls, fewer once ``seconds`` passed (all ranks agree)."""
        for i in range(warmup):
            self.go(False)
            call(-1 - i)
        samples: list[float] = []
        start = time.perf_counter()
        while not self.go(len(samples) >= iters or (len(samples) >= minimum
                                                      and time.perf_counter() - start > seconds)):
            t0 = time.perf_counter()
            call(len(samples))
            samples.append(time.perf_counter() - t0)
        return samples


# ------------------------------------------------------------------------------------------------------------------
# Metric patterns
# ------------------------------------------------------------------------------------------------------------------

PATTERNS = ("ours", "ours_async", "ours_offline", "lightning", "all_reduce_per_key", "gather_object", "item_one_reduce")
LABELS = {
    "ours": "ours log_metrics (no W&B)",
    "ours_async": "ours async_metrics (train thread)",
    "ours_offline": "ours log_metrics (offline W&B)",
    "lightning": "Lightning barrier+all_reduce /key",
    "all_reduce_per_key": "all_reduce /key",
    "gather_object": "all_gather_object(dict)",
    "item_one_reduce": ".item()/key + 1 all_reduce",
}


def make_metrics(n: int, rank: int, device: str) -> dict[str, torch.Tensor]:
    """N 0-d float32 tensors on the device; key j on rank r holds (j + 1) / 2 + r."""
    return {f"loss/k{j:04d}": torch.tensor((j + 1) / 2 + rank, dtype=torch.float32, device=device)
            for j in range(n)}


def expected_means(n: int, world: int) -> np.ndarray:
    return np.array([(j + 1) / 2 + (world - 1) / 2 for j in range(n)])


def _metrics_child(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.backends.base import NullBackend

    device, backend = cfg["device"], cfg["backend"]
    control = Control()
    peers = dist.new_group(backend="gloo") if backend == "gloo" else None  # None: the default (NCCL) group
    base = dict(project="bench", dir=cfg["tmp"], log_system_metrics=False, collective_timeout=120.0,
                init_timeout=60.0, finish_timeout=30.0)
    loggers = {"ours": WandbLogger(WandbConfig(**base, mode="offline"), backend=NullBackend()),
               "ours_async": WandbLogger(WandbConfig(**base, mode="offline", async_metrics=True),
                                         backend=NullBackend())}
    offline = cfg["offline"] and world == cfg["offline_ranks"]
    if offline:
        loggers["ours_offline"] = WandbLogger(WandbConfig(**base, mode="offline"))
    probe = CollectiveProbe(count_syncs=device == "cuda")

    def sync_device() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def pattern(name: str, metrics: dict[str, torch.Tensor]) -> Callable[[int], Any]:
        keys = list(metrics)
        if name.startswith("ours"):
            wb = loggers[name]
            return lambda step: wb.log_metrics(metrics, step=max(step, 0))

        if name == "lightning":
            def lightning(step: int) -> dict[str, float]:
                out = {}
                for k in keys:
                    value = metrics[k].detach().clone()
                    dist.barrier(group=peers)
                    dist.all_reduce(value, group=peers)
                    out[k] = (value / world).item()
                return out
            return lightning
        if name == "all_reduce_per_key":
            def per_key(step: int) -> dict[str, float]:
                out = {}
                for k in keys:
                    value = metrics[k].detach().clone()
                    dist.all_reduce(value, group=peers)
                    out[k] = (value / world).item()
                return out
            return per_key
        if name == "gather_object":
            def gather_object(step: int) -> dict[str, float]:
                gathered: list[Any] = [None] * world
                dist.all_gather_object(gathered, {k: v.item() for k, v in metrics.items()}, group=peers)
                return {k: sum(g[k] for g in gathered) / world for k in keys}
            return gather_object
        if name == "item_one_reduce":
            vec_device = device if backend == "nccl" else "cpu"

            def item_one_reduce(step: int) -> dict[str, float]:
                vector = torch.tensor([metrics[k].item() for k in keys], dtype=torch.float64, device=vec_device)
                dist.all_reduce(vector, group=peers)
                return dict(zip(keys, (vector / world).tolist()))
            return item_one_reduce
        raise ValueError(name)

    names = [p for p in PATTERNS if p in loggers or not p.startswith("ours")]
    results: dict[str, Any] = {}
    for n in cfg["keys"]:
        metrics = make_metrics(n, rank, device)
        sync_device()
        cell_names = [p for p in names if p != "ours_offline" or n == cfg["offline_keys"]]
        cell: dict[str, Any] = {p: {"samples": []} for p in cell_names}
        # correctness: every pattern gives the means (ours returns prefixed keys; async returns None)
        want = expected_means(n, world)
        for p in cell_names:
            got = pattern(p, metrics)(0)
            if p != "ours_async":
                values = np.array([got[k] for k in sorted(got)])
                cell[p]["correct"] = bool(np.allclose(values, want))
        loggers["ours_async"]._dispatcher.drain(120)
        # counting pass: probe installed, a few calls each
        for p in cell_names:
            reps = 2
            probe.reset()
            probe.install()
            try:
                fn = pattern(p, metrics)
                for i in range(reps):
                    fn(i)
                if p == "ours_async":
                    loggers[p]._dispatcher.drain(120)
            finally:
                probe.uninstall()
            sync_device()
            cell[p].update(api=sum(probe.api.values()) / reps, wire=sum(probe.wire.values()) / reps,
                           api_ops={k: v / reps for k, v in probe.api.items()},
                           sent=probe.sent / reps, received=probe.received / reps,
                           syncs={k: v / reps for k, v in probe.syncs.items()},
                           sync_warnings={k: v / reps for k, v in probe.sync_warnings.items()})
            control.go(False)
        # timed rounds, patterns interleaved
        iters = max(1, cfg["iters"] // cfg["rounds"])
        seconds = cfg["cell_seconds"] / cfg["rounds"]
        for _ in range(cfg["rounds"]):
            for p in cell_names:
                fn = pattern(p, metrics)
                cell[p]["samples"] += control.timed(fn, iters=iters, seconds=seconds, minimum=2, warmup=1)
                if p == "ours_async":  # the worker's backlog must not leak into the next pattern's time
                    loggers[p]._dispatcher.drain(120)
        # async, drained: a burst of back-to-back calls plus the drain, per call
        burst = max(4, min(20, cfg["iters"]))
        control.go(False)
        fn = pattern("ours_async", metrics)
        t0 = time.perf_counter()
        for i in range(burst):
            fn(i)
        loggers["ours_async"]._dispatcher.drain(120)
        cell["ours_async"]["drained_us"] = (time.perf_counter() - t0) / burst * 1e6
        control.go(False)
        for p in cell_names:
            samples = cell[p].pop("samples")
            cell[p].update(median_us=median_us(samples), p90_us=p90_us(samples), calls=len(samples))
        results[str(n)] = cell
    for wb in loggers.values():
        wb.finish()
    return results


# ------------------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    return f"{n:,.0f}" if n < 10_000 else f"{n / 1024:,.1f}K"


def print_table(world: int, results: dict[str, Any], cuda: bool) -> None:
    head = (f"{'keys':>5}  {'pattern':<35} {'median us':>10} {'p90 us':>9} {'calls':>5} {'x ours':>7} "
            f"{'coll/call':>9} {'wire':>6} {'B sent/rank':>11}")
    if cuda:
        head += f" {'syncs train':>11} {'(warn)':>6} {'syncs worker':>12}"
    print(head)
    for n, cell in results.items():
        ours = cell["ours"]["median_us"]
        for p, r in cell.items():
            label = LABELS[p] + ("" if r.get("correct", True) else "  WRONG VALUES")
            line = (f"{n:>5}  {label:<35} {r['median_us']:>10.1f} {r['p90_us']:>9.1f} {r['calls']:>5} "
                    f"{r['median_us'] / ours:>7.2f} {r['api']:>9.2f} {r['wire']:>6.2f} {_fmt_bytes(r['sent']):>11}")
            if cuda:
                line += (f" {r['syncs'].get('train', 0):>11.1f} {r['sync_warnings'].get('train', 0):>6.1f}"
                         f" {r['syncs'].get('worker', 0):>12.1f}")
            print(line)
            if p == "ours_async":
                print(f"{'':>5}  {'  (incl. worker, drained burst)':<35} {r['drained_us']:>10.1f}")
        ops = ", ".join(f"{k}={v:g}" for k, v in sorted(cell["ours"]["api_ops"].items()) if v)
        print(f"{'':>5}  ours per call: {ops or 'none'}; "
              f"peers' API ops: lightning {dict(cell['lightning']['api_ops'])}, "
              f"gather_object wire {cell['gather_object']['wire']:g}")
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--keys", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--iters", type=int, default=60, help="timed calls per pattern and cell (at most)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the calls are split into")
    parser.add_argument("--cell-seconds", type=float, default=1.5,
                        help="time cap per pattern and cell (fewer calls then, at least 2 per round)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--start-method", choices=["fork", "spawn"], default=None,
                        help="how rank processes start (default: fork on CPU, spawn with CUDA)")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo",
                        help="the peers' process group (ours always uses its own gloo group)")
    parser.add_argument("--offline-ranks", type=int, default=None,
                        help="world size of the mode='offline' row (default: the first of --ranks)")
    parser.add_argument("--offline-keys", type=int, default=64, help="key count of the mode='offline' row")
    parser.add_argument("--no-offline", action="store_true")
    args = parser.parse_args(argv)
    check_device_args(parser, args)
    if args.offline_ranks is None:
        args.offline_ranks = args.ranks[0]
    print(f"bench_metrics: {machine_line()}")
    print(f"device={args.device} peers' backend={args.backend} (ours: its own gloo group); "
          f"iters<={args.iters} in {args.rounds} interleaved rounds, cap {args.cell_seconds} s per cell; "
          "times: rank 0, median per call; counts: per call, this rank")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_metrics_") as tmp:
        env = wandb_env(tmp)
        for world in args.ranks:
            cfg = dict(device=args.device, backend=args.backend, keys=args.keys, iters=args.iters,
                       rounds=args.rounds, cell_seconds=args.cell_seconds, tmp=os.path.join(tmp, f"w{world}"),
                       offline=not args.no_offline, offline_ranks=args.offline_ranks, offline_keys=args.offline_keys)
            t0 = time.perf_counter()
            values = run_world(_metrics_child, world, cfg, backend=args.backend, device=args.device, env=env,
                               start_method=args.start_method)
            print(f"\n== {world} rank(s)  ({time.perf_counter() - t0:.1f} s wall)")
            print_table(world, values[0], args.device == "cuda")
    print(f"total {time.perf_counter() - start:.1f} s; load avg at the end "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
