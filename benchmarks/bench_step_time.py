"""Training step time with and without system metrics: what the background sampler costs the training loop.

One process trains a small MLP on the CPU and logs 8 metrics per step into an offline run; the same loop runs with
``log_system_metrics`` off, on at the default 60 s interval, and on at 1 s and 0.1 s (with the fake NVML of 8 GPUs
so the NVML path runs too). Configurations alternate in rounds; medians over all rounds are compared.

    .venv/bin/python benchmarks/bench_step_time.py [--steps 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def run(config_name: str, interval: float | None, steps: int, root: str) -> list[float]:
    import torch

    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.testing.fake_nvml import FakeNvml

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    config = WandbConfig(project="bench", mode="offline", dir=os.path.join(root, config_name),
                         log_system_metrics=interval is not None, system_metrics_interval=interval or 60.0)
    times = []
    with WandbLogger(config, nvml=FakeNvml(gpus=8)) as wb:
        for step in range(steps):
            start = time.perf_counter()
            x = torch.randn(64, 256)
            loss = torch.nn.functional.mse_loss(model(x), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            wb.log_metrics({f"m{i}": loss.detach() for i in range(8)}, step=step)
            times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="bench-step-")
    for var, sub in (("WANDB_DIR", "w"), ("WANDB_DATA_DIR", "d"), ("WANDB_CACHE_DIR", "c"), ("WANDB_CONFIG_DIR", "cf")):
        os.environ[var] = os.path.join(root, sub)
        os.makedirs(os.environ[var], exist_ok=True)
    os.environ.update(WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    import torch

    torch.set_num_threads(1)
    configs = [("off", None), ("on, 60 s (default)", 60.0), ("on, 1 s", 1.0), ("on, 0.1 s", 0.1)]
    samples: dict[str, list[float]] = {name: [] for name, _ in configs}
    for round_index in range(args.rounds):
        for name, interval in configs:
            samples[name] += run(f"{name}-{round_index}".replace(" ", "_").replace(",", ""), interval, args.steps,
                                 root)[10:]  # the first steps warm up
    base = statistics.median(samples["off"])
    print(f"step time, {args.steps} steps x {args.rounds} rounds per configuration; torch {torch.__version__}, "
          f"1 intra-op thread; load avg {os.getloadavg()[0]:.2f}")
    print(f"{'system metrics':<22}{'median ms':>10}{'p90 ms':>10}{'ratio':>8}")
    for name, _ in configs:
        values = sorted(samples[name])
        p90 = values[int(0.9 * (len(values) - 1))]
        print(f"{name:<22}{statistics.median(values):>10.3f}{p90:>10.3f}{statistics.median(values) / base:>8.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
