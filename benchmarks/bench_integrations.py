"""The adapters against each framework's own W&B path, side by side: collectives and time per logged step.

Two real ranks (gloo on CPU), K scalar metrics logged every step, W&B offline in a temporary directory:

  lightning, ours     ``self.log(k, v)`` (sync_dist=False) + ``SdxlLightningLogger``: the logger reduces the row
  lightning, own      ``self.log(k, v, sync_dist=True)`` + Lightning's ``WandbLogger``: a barrier and an all_reduce
                      per key, rank 0 writes
  accelerate, ours    ``tracker.log_all_ranks({k: v})`` of ``SdxlTracker``: one collective per call
  accelerate, own     ``accelerator.gather(v).mean()`` per key (as diffusers' ``train_text_to_image.py`` does for its
                      loss), then ``accelerator.log`` with Accelerate's ``"wandb"`` tracker on the main process

Counts come from ``sdxl_dist_log.testing.probe.CollectiveProbe`` (collectives this rank issued per step, by op;
DDP's gradient all-reduce runs inside the C++ reducer and is not counted by either). Times: median wall time of one
training step (forward, backward, optimizer, logging; for Lightning from one batch start to the next, since it hands
rows to its loggers after ``on_train_batch_end``) on rank 0, over ``--steps`` steps after 3 warm-up steps.

Run: .venv/bin/python benchmarks/bench_integrations.py [--keys 8 64] [--steps 40]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdxl_dist_log.launch.local import run_ranks, values_or_raise  # noqa: E402
from sdxl_dist_log.testing.wandb_env import apply, wandb_environment  # noqa: E402

WARMUP = 3


def _lightning(ours: bool, keys: int, steps: int, root: str, rank: int) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    from sdxl_dist_log.testing.probe import CollectiveProbe

    apply(wandb_environment(root), cleared=())  # keep the rank variables run_ranks set
    os.chdir(root)
    probe = CollectiveProbe()
    counts: list[Counter[str]] = []
    times: list[float] = []

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(16, 1)
            self.started = 0.0

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            # a step runs from one batch start to the next: Lightning hands the row to its loggers after
            # on_train_batch_end, so the logging of step N is counted and timed with step N
            now = time.perf_counter()
            if self.started and self.global_step > WARMUP:
                times.append(now - self.started)
                counts.append(Counter(probe.api))
            probe.reset()
            self.started = now

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.layer(batch).pow(2).mean()
            for k in range(keys):
                self.log(f"m{k}", loss.detach() + k, sync_dist=not ours)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    if ours:
        from sdxl_dist_log.integrations.lightning import SdxlLightningLogger

        logger: Any = SdxlLightningLogger(project="bench", mode="offline", dir=root, log_system_metrics=False)
    else:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project="bench", offline=True, save_dir=root)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=steps + WARMUP + 1, logger=logger,
                         log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    data = torch.utils.data.DataLoader(torch.randn(4 * (steps + WARMUP + 2), 16), batch_size=4)
    with probe:
        trainer.fit(Model(), data)
    return {"times": times, "counts": counts}


def _accelerate(ours: bool, keys: int, steps: int, root: str, rank: int) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    from sdxl_dist_log.testing.probe import CollectiveProbe

    apply(wandb_environment(root), cleared=())  # keep the rank variables run_ranks set
    os.environ["WANDB_MODE"] = "offline"
    os.chdir(root)
    if ours:
        from sdxl_dist_log.integrations.accelerate import SdxlTracker

        tracker = SdxlTracker("bench", mode="offline", dir=root, log_system_metrics=False)
        accelerator = Accelerator(log_with=[tracker], cpu=True)
        tracker.wandb_logger  # every rank
    else:
        accelerator = Accelerator(log_with="wandb", cpu=True)
        accelerator.init_trackers("bench", init_kwargs={"wandb": {"dir": root}})
    model = accelerator.prepare(torch.nn.Linear(16, 1))
    counts: list[Counter[str]] = []
    times: list[float] = []
    with CollectiveProbe() as probe:
        for step in range(steps + WARMUP):
            probe.reset()
            started = time.perf_counter()
            loss = model(torch.randn(4, 16)).pow(2).mean()
            accelerator.backward(loss)
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.01 * p.grad
                    p.grad = None
            values = {f"m{k}": loss.detach() + k for k in range(keys)}
            if ours:
                tracker.log_all_ranks(values, step=step)
            else:  # diffusers: avg = accelerator.gather(v.repeat(bs)).mean() per logged value, then log on main
                logs = {k: accelerator.gather(v.repeat(4)).mean().item() for k, v in values.items()}
                accelerator.log(logs, step=step)
            if step >= WARMUP:
                times.append(time.perf_counter() - started)
                counts.append(Counter(probe.api))
    if ours:
        tracker.finish()
    accelerator.end_training()
    return {"times": times, "counts": counts}


def _cell(fn: Any, ours: bool, keys: int, steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-int-") as root:
        results = values_or_raise(run_ranks(functools.partial(fn, ours, keys, steps, root), 2, backend=None,
                                            timeout=600))
    rank0 = results[0]
    per_step = Counter()
    for c in rank0["counts"]:
        per_step.update(c)
    n = len(rank0["counts"])
    ops = ", ".join(f"{op} {count / n:g}" for op, count in sorted(per_step.items())) or "none"
    return {"median_ms": 1000 * statistics.median(rank0["times"]), "collectives": sum(per_step.values()) / n,
            "ops": ops}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, 2 ranks gloo, W&B offline; load {os.getloadavg()[0]:.1f}")
    print("| framework | keys | path | collectives/step (rank 0) | ops per step | median step ms | ratio to ours |")
    print("|---|---|---|---|---|---|---|")
    for name, fn in (("lightning", _lightning), ("accelerate", _accelerate)):
        for keys in args.keys:
            ours = _cell(fn, True, keys, args.steps)
            own = _cell(fn, False, keys, args.steps)
            for label, cell in (("ours", ours), ("own W&B path", own)):
                print(f"| {name} | {keys} | {label} | {cell['collectives']:g} | {cell['ops']} | "
                      f"{cell['median_ms']:.2f} | {cell['median_ms'] / ours['median_ms']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
