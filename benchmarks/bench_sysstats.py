"""Cost of the system-metrics sampler: per sample, per GPU, CPU share of its thread, bytes per interval.

Run here (no GPU: the fake NVML):      python benchmarks/bench_py
Run on a GPU machine (real pynvml):    python benchmarks/bench_py --real
Options: --gpus N (fake GPUs for the per-sample cost, default 8), --repeat N, --cpu-seconds S.

Prints tables:
1. cost of one sample per sampler (NVML per GPU, psutil per node, torch.cuda per rank when CUDA is present);
2. CPU share of the sampler thread at 60 s (the default), 1 s and 0.1 s, from the measured CPU time of one publish,
   cross-checked by the thread's own CPU time from /proc over S seconds at 1 s and 0.1 s;
3. bytes written to the store per node per interval for 1, 8 and 64 GPUs (one rank per GPU).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sdxl_dist_log.ranks import RankInfo  # noqa: E402
from sdxl_dist_log.system import (  # noqa: E402
    CudaSampler,
    GpuIdentity,
    HostSampler,
    NvmlLoader,
    NvmlSampler,
    SystemMetrics,
    TorchCuda,
    match_gpu,
)
from sdxl_dist_log.system.wire import encode_node_meta, encode_node_sample, encode_rank_sample  # noqa: E402
from sdxl_dist_log.testing.fake_nvml import FakeNvml  # noqa: E402

LOG = logging.getLogger("bench")


def _time(fn, repeat: int) -> tuple[float, float]:
    """(median, p90) seconds of fn() over repeat calls after 3 warm-ups."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]


def _thread_cpu_seconds(thread: threading.Thread) -> float:
    """CPU seconds (user + system) of one thread of this process, from /proc (Linux)."""
    path = f"/proc/self/task/{thread.native_id}/stat"
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def _nvml(real: bool, gpus: int):
    if real:
        nvml = NvmlLoader(LOG).load()
        if nvml is None:
            sys.exit("--real: NVML is not available on this machine")
        return nvml, "pynvml (real)"
    return FakeNvml(gpus=gpus), f"FakeNvml({gpus} GPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true", help="use the real pynvml (needs a GPU)")
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs (ignored with --real)")
    parser.add_argument("--repeat", type=int, default=2000)
    parser.add_argument("--cpu-seconds", type=float, default=5.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch
    import torch.distributed as dist

    nvml, label = _nvml(args.real, args.gpus)
    cuda_device = 0 if torch.cuda.is_available() else None
    run_dir = tempfile.gettempdir()

    # 1. cost per sample -------------------------------------------------------------------------------------------------
    gpu_sampler = NvmlSampler(nvml, LOG)
    n_gpus = len(gpu_sampler.handles)
    host_sampler = HostSampler(run_dir, LOG)
    rows = []
    med, p90 = _time(gpu_sampler.sample, args.repeat)
    rows.append((f"NVML, all {n_gpus} GPUs ({label})", med, p90, med / max(n_gpus, 1)))
    med, p90 = _time(host_sampler.sample, min(args.repeat, 500))
    rows.append(("psutil, node figures", med, p90, None))
    if cuda_device is not None:
        torch.empty(1 << 20, device="cuda")
        cuda_sampler = CudaSampler(cuda_device, LOG)
        med, p90 = _time(cuda_sampler.sample, args.repeat)
        rows.append(("torch.cuda, one rank", med, p90, None))
    sample = gpu_sampler.sample()
    med, p90 = _time(lambda: encode_node_sample(1, time.time(), host_sampler.sample(), sample),
                     min(args.repeat, 500))
    rows.append((f"encode node record ({n_gpus} GPUs) + psutil", med, p90, None))
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=1.0, run_dir=run_dir, sink=None, nvml=nvml,
                       cuda_device=cuda_device)
    med, p90 = _time(sm.sample_now, min(args.repeat, 500))
    rows.append(("sample_now (this process's whole share)", med, p90, None))
    print(f"\nsampler cost per sample (torch {torch.__version__}, CUDA: {torch.cuda.is_available()})")
    print(f"{'what':<48} {'median us':>10} {'p90 us':>10} {'per GPU us':>11}")
    for what, m, p, per in rows:
        print(f"{what:<48} {m * 1e6:>10.1f} {p * 1e6:>10.1f} {'' if per is None else f'{per * 1e6:.2f}':>11}")
    if args.real and n_gpus:
        handle = gpu_sampler.handles[0]
        t0 = time.perf_counter()
        nvml.nvmlDeviceGetPcieThroughput(handle, nvml.NVML_PCIE_UTIL_TX_BYTES)
        print(f"(for contrast, one nvmlDeviceGetPcieThroughput call: {(time.perf_counter() - t0) * 1e3:.1f} ms;"
              " never called by the sampler)")

    # 2. CPU share of the sampler thread -------------------------------------------------------------------------------
    # (a) CPU time of one publish (sample + encode + store.set), timed with thread_time in this thread;
    # (b) the sampler thread's own CPU time from /proc over a run, as a cross-check (10 ms ticks: coarse).
    sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=1.0, run_dir=run_dir, sink=None, nvml=nvml,
                       cuda_device=cuda_device)
    store = dist.HashStore()
    reps = min(args.repeat, 1000)
    for _ in range(5):
        sm._publish_once(store)
    c0 = time.thread_time()
    for _ in range(reps):
        sm._publish_once(store)
    per_publish = (time.thread_time() - c0) / reps
    print(f"\nCPU share of the sampler thread (node leader, {n_gpus} GPUs"
          f"{', + its torch.cuda figures' if cuda_device is not None else ''}; HashStore)")
    print(f"CPU per publish (sample + encode + store.set), mean of {reps}: {per_publish * 1e6:.0f} us")
    print(f"{'interval s':>10} {'CPU share % (from per-publish)':>31} {'measured % (/proc, thread)':>27}")
    for interval in (60.0, 1.0, 0.1):
        measured = ""
        if interval < 60:
            sm = SystemMetrics(RankInfo(), dist.HashStore(), interval=interval, run_dir=run_dir,
                               sink=None, nvml=nvml, cuda_device=cuda_device)
            sm.start()
            thread = sm._threads[0]
            time.sleep(0.05)
            c0, t0 = _thread_cpu_seconds(thread), time.monotonic()
            time.sleep(args.cpu_seconds)
            c1, t1 = _thread_cpu_seconds(thread), time.monotonic()
            published = sm.samples_published
            sm.stop()
            measured = f"{100 * (c1 - c0) / (t1 - t0):.3f} ({published} publishes)"
        print(f"{interval:>10.1f} {100 * per_publish / interval:>31.5f} {measured:>27}")

    # 3. bytes per interval ------------------------------------------------------------------------------------------
    print("\nbytes written to the store per node per interval (one rank per GPU, each with a CUDA device)")
    print(f"{'GPUs/node':>9} {'node record':>12} {'rank records':>13} {'total B':>8} {'B per GPU':>10}"
          f" {'meta once B':>12}")
    host = host_sampler.sample()
    rank_record = len(encode_rank_sample(123456, time.time(), {
        "memory_allocated": 41_234_567_890.0, "memory_reserved": 52_345_678_901.0,
        "max_memory_allocated": 60_123_456_789.0}))
    for n in (1, 8, 64):
        fake = FakeNvml(gpus=n, offset=3)
        gpus = NvmlSampler(fake, LOG).sample()
        node_record = len(encode_node_sample(123456, time.time(), host, gpus))
        meta = len(encode_node_meta("node-0123.cluster",
                                    [GpuIdentity(i, fake.uuid_of(i), fake.pci_bus_id_of(i)) for i in range(n)]))
        total = node_record + n * rank_record
        print(f"{n:>9d} {node_record:>12d} {n * rank_record:>13d} {total:>8d} {total / n:>10.1f} {meta:>12d}")

    # 4. CUDA device -> NVML GPU mapping, and one live row ------------------------------------------------------------
    if cuda_device is not None:
        print(f"\nCUDA devices of this process -> NVML GPUs (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        for d in range(torch.cuda.device_count()):
            uuid, pci = TorchCuda().identity(d)
            index = match_gpu(uuid, pci, gpu_sampler.identities)
            print(f"cuda:{d} uuid={uuid} pci={pci} -> NVML index {index}")
        for g in gpu_sampler.identities:
            print(f"NVML {g.index}: uuid={g.uuid} pci={g.pci}")
    rows_out: list[dict[str, float]] = []
    with SystemMetrics(RankInfo(), dist.HashStore(), interval=0.2, run_dir=run_dir, sink=rows_out.append,
                       nvml=nvml, cuda_device=cuda_device):
        time.sleep(1.0)
    if rows_out:
        row = rows_out[-1]
        shown = [k for k in row if not k.startswith("system/all/") or k.endswith("/mean") or k.endswith("count")]
        print(f"\none live row ({len(row)} keys; per-GPU keys of gpu0, node keys, aggregates' means):")
        for k in shown:
            if k.startswith("system/gpu") and not k.startswith("system/gpu0/"):
                continue
            print(f"  {k} = {row[k]:.6g}")


if __name__ == "__main__":
    main()
