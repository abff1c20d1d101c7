"""A small real training loop that uses every call of the API; ``sdxl-dist-log demo`` runs it on N ranks.

Run it under any launcher (``torchrun -m sdxl_dist_log.cli demo``, SLURM, submitit) or let ``demo`` spawn the ranks
itself on this machine (gloo on CPU, NCCL when every rank has a GPU).
"""

from __future__ import annotations

import functools
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sdxl_dist_log.config import LogConfig, WandbConfig
from sdxl_dist_log.ranks import Launch

_DEMO_TIMEOUT_S = 30 * 60  # a demo of thousands of steps still ends; a wedged rank does not hang the terminal
RUN_ID_FILE = "run_id"
"""The file under the demo's out dir that holds the W&B run id it logs into; ``resume`` continues that run."""


def train(
    steps: int = 20,
    *,
    out_dir: str = "outputs/demo",
    mode: str = "offline",
    project: str = "sdxl-dist-log-demo",
    image_every: int = 5,
    checkpoint_every: int = 10,
    system_metrics_interval: float = 0.5,
    async_metrics: bool = False,
    step_time: float = 0.05,
    resume: bool = False,
    fake_nvml: str | None = None,
) -> str | None:
    """Train a tiny model on random data, logging metrics, images, checkpoints and config from every rank.

    Initializes torch.distributed from the environment when WORLD_SIZE > 1 and it is not initialized yet. The run id
    is written to ``out_dir/run_id``. With ``resume``, a restarted job (a SLURM requeue, or the same command run
    again) continues from the last checkpoint under ``out_dir`` and logs into the run of that file.

    ``fake_nvml`` (e.g. ``"gpus=2,offset=5"``) samples a simulated NVML instead of the real one, to see GPU figures
    on a machine without GPUs (see ``sdxl_dist_log.testing.fake_nvml.parse_fake_nvml_spec``).

    Returns:
        The W&B run directory (on the primary rank; None elsewhere or when disabled).
    """
    import torch
    import torch.distributed as dist

    from sdxl_dist_log.unified import UnifiedLogger
    from sdxl_dist_log.wandb_logger import WandbLogger

    owns_group = False
    placement = Launch.from_env(os.environ).rank  # a training script reads its launcher's variables once, here
    if placement.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(placement.local_rank)
        dist.init_process_group(backend, timeout=timedelta(seconds=120))
        owns_group = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    torch.manual_seed(1234)  # the same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).to(device)
    torch.manual_seed(1234 + rank)  # each rank its own random batches
    world = dist.get_world_size() if dist.is_initialized() else 1
    lr = 0.05
    hyper = {"model": {"layers": [16, 32, 1]}, "optim": {"name": "sgd", "lr": lr}, "steps": steps}
    checkpoints = Path(out_dir) / "checkpoints"
    start = 0
    pointer = checkpoints / "last"
    run_id_file = Path(out_dir) / RUN_ID_FILE
    run_id = None
    if resume and pointer.exists():
        state = torch.load(checkpoints / pointer.read_text().strip(), map_location=device)
        model.load_state_dict(state["model"])
        start = int(state["step"])
    if resume and run_id_file.exists():  # the run this out dir logged into: continue it (SLURM or not)
        run_id = run_id_file.read_text().strip() or None
    run_dir: str | None = None
    wandb_config = WandbConfig(
        project=project, mode=mode, dir=out_dir, config=hyper, tags=["demo"], run_id=run_id,
        max_images_to_log=8, system_metrics_interval=system_metrics_interval, async_metrics=async_metrics,
        metric_reduce={"samples": "sum", "loss_max": "max", "loss_min": "min"},
    )
    nvml = None
    if fake_nvml:
        from sdxl_dist_log.testing.fake_nvml import FakeNvml, parse_fake_nvml_spec

        nvml = FakeNvml(**parse_fake_nvml_spec(fake_nvml))
    try:
        with UnifiedLogger(LogConfig(name="demo", log_dir=os.path.join(out_dir, "logs"))) as log, \
                WandbLogger(wandb_config, logger=log, nvml=nvml) as wb:
            if wb.is_primary:
                run_id_file.parent.mkdir(parents=True, exist_ok=True)
                run_id_file.write_text(wb.identity.run_id + "\n")
            wb.log_config({"data": {"kind": "random", "batch": 32}})
            log.info("training steps %d..%d on %s%s", start, steps - 1, device,
                     f" (resumed from {pointer.read_text().strip()})" if start else "")
            log.start_progress(total=steps, desc="demo")
            log.update_progress(start)
            for step in range(start, steps):
                x = torch.randn(32, 16, device=device)
                y = x.sum(dim=1, keepdim=True) * 0.1
                loss = torch.nn.functional.mse_loss(model(x), y)
                model.zero_grad()
                loss.backward()
                # Data parallel, written out: the gradients averaged over the ranks, then a plain SGD step. (What
                # DDP and torch.optim do; but building either imports torch._dynamo, ~2 s of CPU a rank, and this
                # demo should start in seconds.)
                with torch.no_grad():
                    for parameter in model.parameters():
                        if world > 1:
                            dist.all_reduce(parameter.grad)
                            parameter.grad /= world
                        parameter -= lr * parameter.grad
                detached = loss.detach()
                wb.log_metrics({"loss": detached, "loss_max": detached, "loss_min": detached, "samples": 32,
                                "lr": lr}, step=step)
                log.log_metrics({"loss": detached, "samples": 32}, step=step)
                log.set_postfix(step_loss=detached, lr=lr)
                if image_every and step % image_every == 0:
                    samples = torch.rand(2, 3, 32, 32, device=device) * 2 - 1  # like a diffusion output in [-1, 1]
                    wb.log_images(samples, captions=[f"step {step} sample {i}" for i in range(2)], step=step,
                                  value_range=(-1.0, 1.0))
                if checkpoint_every and (step + 1) % checkpoint_every == 0:
                    path = checkpoints / f"step_{step + 1}.pt"
                    if rank == 0:
                        checkpoints.mkdir(parents=True, exist_ok=True)
                        state = {"model": model.state_dict(), "step": step + 1}
                        torch.save(state, f"{path}.tmp")
                        os.replace(f"{path}.tmp", path)  # a kill mid-save never leaves a torn checkpoint
                        pointer.with_suffix(".tmp").write_text(path.name)
                        os.replace(pointer.with_suffix(".tmp"), pointer)
                    wb.log_model(path, metadata={"step": step + 1, "loss": float(detached)},
                                 aliases=["latest"] + (["final"] if step + 1 == steps else []))
                log.update_progress(1)
                time.sleep(step_time)  # stands in for a real model's step, so system samples land during training
            run_dir = wb.run_dir if wb.is_primary else None
    finally:
        if owns_group:
            dist.destroy_process_group()
    return run_dir


def check_fake_nvml_spec(spec: str) -> None:
    """Raise ValueError, naming the problem, when ``spec`` is not a simulated-GPU spec such as ``"gpus=2,offset=5"``."""
    from sdxl_dist_log.testing.fake_nvml import parse_fake_nvml_spec

    parse_fake_nvml_spec(spec)


def _train_rank(options: dict[str, Any], rank: int) -> str | None:
    return train(**options)


def run_local(nproc: int, **kwargs: Any) -> str | None:
    """Run ``train`` on ``nproc`` local processes and return the run directory (the primary's).

    Forked when no GPU is visible (torch is imported once, in this process), spawned with CUDA, where a forked CUDA
    context would be unusable.
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if nproc == 1:
        return train(**kwargs)
    import torch

    from sdxl_dist_log.launch.local import run_ranks, values_or_raise

    start_method = "spawn" if torch.cuda.is_available() else "fork"
    results = run_ranks(functools.partial(_train_rank, kwargs), nproc, backend=None, start_method=start_method,
                        timeout=_DEMO_TIMEOUT_S)
    return next((run_dir for run_dir in values_or_raise(results) if run_dir is not None), None)


def run(nproc: int = 2, **train_options: Any) -> int:
    """Train under the launcher when there is one, else on ``nproc`` spawned ranks; print a summary of the run.

    What ``sdxl-dist-log demo`` runs (its options are declared in :mod:`sdxl_dist_log.cli`).

    Args:
        nproc: ranks to spawn when RANK and WORLD_SIZE are not set; ignored under a launcher.
        **train_options: keyword arguments of :func:`train`.

    Returns:
        0.

    Raises:
        ValueError: ``nproc`` < 1 without a launcher.
    """
    under_launcher = "RANK" in os.environ and "WORLD_SIZE" in os.environ  # torchrun's (or submitit's) workers
    run_dir = train(**train_options) if under_launcher else run_local(nproc, **train_options)
    if run_dir is None:
        return 0
    from sdxl_dist_log.offline import format_run, read_run

    print(f"\nW&B offline run: {run_dir}")
    print(f"sync it later with: wandb sync {run_dir}\n")
    run = read_run(run_dir)
    print(format_run(run))
    print(f"\n{_write_report(Path(run_dir), run.run_id)}")
    return 0


def _write_report(run_dir: Path, run_id: str) -> str:
    """Write the run's HTML report beside its directory, every attempt of the run id included; the line to print."""
    try:
        import plotly  # noqa: F401  (only to say how to get the report when it is missing)
    except ModuleNotFoundError:
        return "report: skipped; pip install 'sdxl-dist-log[report]' to get an HTML report of the run"
    from sdxl_dist_log.offline import find_run_dirs
    from sdxl_dist_log.report import write_report

    attempts = [d for d in find_run_dirs(run_dir.parent) if d.name.endswith(f"-{run_id}")]  # a --resume adds one
    path = write_report(attempts or [run_dir], run_dir.parent / f"report-{run_id}.html")
    return f"report: {path} (open it in a browser; it needs no network)"

