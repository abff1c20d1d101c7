"""Image samples from every rank to rank 0: ``WandbLogger.log_images`` against pickling collectives, side by side.

Every rank holds K uint8 images (H x W x 3); each pattern brings all ranks' images to rank 0:

  ours (no W&B)     ``WandbLogger.log_images`` with ``backend=NullBackend()``: the gather runs (the shapes table
                    travels in one ``all_gather`` of float64 rows, the pixels as uint8 in one ``gather``); nothing
                    is written
  ours (offline)    the same with mode="offline": rank 0 also turns every image into a ``wandb.Image`` (PNG encode
                    and a file in the run) -- the full cost of logging samples
  gather_object     ``dist.gather_object(list_of_numpy_arrays, dst=0)`` (pickle; one all_gather of sizes + a gather)
  all_gather_obj    ``dist.all_gather_object(list_of_numpy_arrays)`` (every rank receives every rank's pickle)
  uint8 gather      floor: the K images stacked into one uint8 tensor and ``dist.gather`` to rank 0 (shapes assumed
                    known and equal everywhere; no captions, no cap, no checks)

Bytes are measured, not computed: every ``torch.distributed`` collective (also the ones ``gather_object`` issues
inside) is wrapped and the bytes of the tensors this rank puts in ("sent"), rank 0's receive buffers ("recv@0") and all ranks' receive
buffers ("recv all") are summed; for the pickling patterns ``len(pickle.dumps(images))`` is shown too. With ``--device cuda`` every rank's
images are one (K, 3, H, W) uint8 CUDA tensor: ours takes it as is, the peers copy it to numpy first
(``.cpu().numpy()``, as a user would before pickling); with ``--backend nccl`` the peers' collectives run on NCCL.
"others us" is the slowest other rank's median (they do not wait for rank 0's W&B write).
Ours always uses its own gloo group. Times are rank 0's medians over every timed call, patterns interleaved in
``--rounds`` rounds.

Run (CPU, this machine):   python benchmarks/bench_images.py
GPU machine:               python benchmarks/bench_images.py --device cuda --backend nccl --ranks 1   (or 2 4 8)
Options: --ranks 2 4  --sizes 64 512  --per-rank 2 4  --iters 30  --rounds 3  --cell-seconds 1.5  --no-offline
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from bench_metrics import (  # noqa: E402
    CollectiveProbe,
    Control,
    check_device_args,
    machine_line,
    median_us,
    p90_us,
    run_world,
    wandb_env,
)

PATTERNS = ("ours", "ours_offline", "gather_object", "all_gather_object", "uint8_gather")
LABELS = {
    "ours": "ours log_images (no W&B)",
    "ours_offline": "ours log_images (offline W&B)",
    "gather_object": "gather_object(list of arrays)",
    "all_gather_object": "all_gather_object(list)",
    "uint8_gather": "stacked uint8 dist.gather (floor)",
}


def make_images(k: int, size: int, rank: int, device: str) -> Any:
    """K distinct uint8 images: a list of (H, W, 3) numpy arrays on CPU, one (K, 3, H, W) tensor on CUDA.

    Smooth colour gradients with mild noise, so that the PNG encoding of the offline rows costs about what a real
    sample costs (pure noise is PNG's worst case); the bytes on the wire do not depend on the content.
    """
    rng = np.random.default_rng(1000 * rank + size + k)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    images = np.empty((k, size, size, 3), dtype=np.uint8)
    for i in range(k):
        phase = rng.uniform(0, 2 * np.pi, 3)
        for c in range(3):
            wave = 127.5 + 100 * np.sin(2 * np.pi * (x * (c + 1) + y * (i + 1)) + phase[c])
            images[i, :, :, c] = np.clip(wave + rng.normal(0, 6, (size, size)), 0, 255).astype(np.uint8)
    if device == "cuda":
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    return [images[i] for i in range(k)]


def _as_numpy_list(images: Any) -> list[np.ndarray]:
    if isinstance(images, torch.Tensor):
        return list(images.permute(0, 2, 3, 1).cpu().numpy())
    return list(images)


def _images_child(rank: int, world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.backends.base import NullBackend

    device, backend = cfg["device"], cfg["backend"]
    control = Control()
    peers = dist.new_group(backend="gloo") if backend == "gloo" else None
    cap = max(16, world * max(cfg["per_rank"]))
    base = dict(project="bench", dir=cfg["tmp"], log_system_metrics=False, collective_timeout=120.0,
                init_timeout=60.0, finish_timeout=60.0, max_images_to_log=cap)
    loggers = {"ours": WandbLogger(WandbConfig(**base, mode="offline"), backend=NullBackend())}
    if cfg["offline"]:
        loggers["ours_offline"] = WandbLogger(WandbConfig(**base, mode="offline"))
    probe = CollectiveProbe(count_syncs=device == "cuda")
    names = [p for p in PATTERNS if p in loggers or not p.startswith("ours")]

    def pattern(name: str, images: Any, k: int, size: int) -> Callable[[int], Any]:
        captions = [f"r{rank} i{i}" for i in range(k)]
        if name.startswith("ours"):
            wb = loggers[name]
            return lambda step: wb.log_images(images, captions=captions, step=max(step, 0))
        if name == "gather_object":
            def gather_object(step: int) -> Any:
                out = [None] * world if rank == 0 else None
                dist.gather_object(_as_numpy_list(images), out, dst=0, group=peers)
                return sum(len(x) for x in out) if out is not None else k
            return gather_object
        if name == "all_gather_object":
            def all_gather_object(step: int) -> Any:
                out: list[Any] = [None] * world
                dist.all_gather_object(out, _as_numpy_list(images), group=peers)
                return sum(len(x) for x in out) if rank == 0 else k
            return all_gather_object
        if name == "uint8_gather":
            on = device if backend == "nccl" else "cpu"

            def uint8_gather(step: int) -> Any:
                if isinstance(images, torch.Tensor):
                    stacked = images.permute(0, 2, 3, 1).contiguous().to(on)
                else:
                    stacked = torch.from_numpy(np.stack(images))
                gathered = [torch.empty_like(stacked) for _ in range(world)] if rank == 0 else None
                dist.gather(stacked, gathered, dst=0, group=peers)
                if gathered is None:
                    return k
                return sum(len(list(g.cpu().numpy())) for g in gathered)
            return uint8_gather
        raise ValueError(name)

    results: dict[str, Any] = {}
    for size in cfg["sizes"]:
        for k in cfg["per_rank"]:
            images = make_images(k, size, rank, device)
            cell: dict[str, Any] = {p: {"samples": []} for p in names}
            for p in names:  # correctness: rank 0 ends up with every rank's images
                got = pattern(p, images, k, size)(0)
                cell[p]["correct"] = got == (world * k if rank == 0 else k)
                cell[p]["pickle_bytes"] = len(pickle.dumps(_as_numpy_list(images))) if "object" in p else None
            for p in names:  # counting pass
                probe.reset()
                probe.install()
                try:
                    pattern(p, images, k, size)(1)
                finally:
                    probe.uninstall()
                cell[p].update(api=sum(probe.api.values()), wire=sum(probe.wire.values()), sent=probe.sent,
                               received=probe.received, api_ops=dict(probe.api),
                               syncs=probe.syncs.get("train", 0), sync_warnings=probe.sync_warnings.get("train", 0))
                control.go(False)
            iters = max(1, cfg["iters"] // cfg["rounds"])
            seconds = cfg["cell_seconds"] / cfg["rounds"]
            for _ in range(cfg["rounds"]):
                for p in names:
                    cell[p]["samples"] += control.timed(pattern(p, images, k, size), iters=iters, seconds=seconds,
                                                        minimum=2, warmup=1)
            for p in names:
                samples = cell[p].pop("samples")
                cell[p].update(median_us=median_us(samples), p90_us=p90_us(samples), calls=len(samples))
            results[f"{size}x{size}x3 K={k}"] = cell
    for wb in loggers.values():
        wb.finish()
    return results


def _kib(n: float | None) -> str:
    return "-" if n is None else f"{n / 1024:,.1f}"


def print_table(results0: dict[str, Any], results_by_rank: list[dict[str, Any]], world: int, cuda: bool) -> None:
    head = (f"{'images/rank':<17} {'pattern':<34} {'median us':>10} {'p90 us':>9} {'calls':>5} {'x ours':>7} "
            f"{'others us':>9} {'coll':>4} {'wire':>4} {'KiB sent/rank':>13} {'KiB recv@0':>10} {'recv all':>9} "
            f"{'pickle KiB':>10}")
    if cuda:
        head += f" {'syncs':>5} {'(warn)':>6}"
    print(head)
    for cell_name, cell in results0.items():
        ours = cell["ours"]["median_us"]
        payload = None
        for p, r in cell.items():
            sent = max(rr[cell_name][p]["sent"] for rr in results_by_rank)  # the largest sender (not rank 0 for gather)
            label = LABELS[p] + ("" if all(rr[cell_name][p]["correct"] for rr in results_by_rank) else "  WRONG")
            others = max((rr[cell_name][p]["median_us"] for rr in results_by_rank[1:]), default=float("nan"))
            received_all = sum(rr[cell_name][p]["received"] for rr in results_by_rank)
            line = (f"{cell_name:<17} {label:<34} {r['median_us']:>10.0f} {r['p90_us']:>9.0f} {r['calls']:>5} "
                    f"{r['median_us'] / ours:>7.2f} {others:>9.0f} {r['api']:>4} {r['wire']:>4} {_kib(sent):>13} "
                    f"{_kib(r['received']):>10} {_kib(received_all):>9} {_kib(r['pickle_bytes']):>10}")
            if cuda:
                line += f" {r['syncs']:>5} {r['sync_warnings']:>6}"
            print(line)
            if p == "uint8_gather":
                payload = r["sent"]
        if payload:
            ours_sent = max(rr[cell_name]["ours"]["sent"] for rr in results_by_rank)
            obj_sent = max(rr[cell_name]["all_gather_object"]["sent"] for rr in results_by_rank)
            print(f"{'':<17} bytes sent per rank / raw pixels ({_kib(payload)} KiB): ours x{ours_sent / payload:.3f}, "
                  f"all_gather_object x{obj_sent / payload:.3f}")
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512], help="image side in pixels")
    parser.add_argument("--per-rank", type=int, nargs="+", default=[2, 4], help="images per rank (K)")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cell-seconds", type=float, default=1.5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--start-method", choices=["fork", "spawn"], default=None,
                        help="how rank processes start (default: fork on CPU, spawn with CUDA)")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    parser.add_argument("--no-offline", action="store_true", help="skip the mode='offline' rows")
    args = parser.parse_args(argv)
    check_device_args(parser, args)
    print(f"bench_images: {machine_line()}")
    print(f"device={args.device} peers' backend={args.backend} (ours: its own gloo group); iters<={args.iters} in "
          f"{args.rounds} interleaved rounds, cap {args.cell_seconds} s per cell; times: rank 0, median per call; "
          "coll/wire: collectives per call (API / on the wire); bytes per call")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_images_") as tmp:
        env = wandb_env(tmp)
        for world in args.ranks:
            cfg = dict(device=args.device, backend=args.backend, sizes=args.sizes, per_rank=args.per_rank,
                       iters=args.iters, rounds=args.rounds, cell_seconds=args.cell_seconds,
                       tmp=os.path.join(tmp, f"w{world}"), offline=not args.no_offline)
            t0 = time.perf_counter()
            values = run_world(_images_child, world, cfg, backend=args.backend, device=args.device, env=env,
                               start_method=args.start_method)
            print(f"\n== {world} rank(s)  ({time.perf_counter() - t0:.1f} s wall)")
            print_table(values[0], values, world, args.device == "cuda")
    print(f"total {time.perf_counter() - start:.1f} s; load avg at the end "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
