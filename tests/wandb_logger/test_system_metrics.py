"""System figures through WandbLogger: they reach the run (primed CPU %, no NVML on this machine), and with several
simulated nodes every GPU of every node lands with its node's host name.

The sampler itself is tested in tests/system/; here only what the logger makes of it, read from the run.
Each case waits for the system row it needs to appear in the run file (a poll with a deadline), never a fixed time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from sdxl_dist_log import LogConfig, UnifiedLogger, WandbConfig, WandbLogger
from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.offline import OfflineRun, read_run

pytestmark = pytest.mark.timeout(300)

WAIT_S = 120.0
"""How long a case waits for a system row before it fails; only a sampler that never delivers reaches it."""


def _rows_so_far(run_dir: str, key: str) -> list[dict[str, Any]]:
    """The rows holding ``key`` in the live run file; none while the file cannot be read yet."""
    try:
        run: OfflineRun = read_run(run_dir)
    except Exception:  # the file is being written: read again on the next poll
        return []
    return run.rows_with(key)


def _one_process() -> dict[str, Any]:
    # psutil.cpu_percent(None) measures since the previous call *of the calling thread* (psutil >= 5.9.6 keys its
    # state by thread id); an unprimed call returns 0.0 or a one-tick value by chance. To make "was the sampling
    # thread primed?" deterministic, this stand-in keeps psutil's per-thread state but answers -1.0 when unprimed.
    real_cpu_percent = psutil.cpu_percent
    primed_threads: set[int] = set()

    def cpu_percent(interval: float | None = None, percpu: bool = False) -> Any:
        if interval or percpu:
            return real_cpu_percent(interval, percpu)
        primed = threading.get_ident() in primed_threads
        primed_threads.add(threading.get_ident())
        return 42.0 if primed else -1.0

    psutil.cpu_percent = cpu_percent
    out: dict[str, Any] = {}
    config = WandbConfig(project="system", mode="offline", dir="out", system_metrics_interval=0.5)
    with UnifiedLogger(LogConfig(name="system", log_dir="logs", console=False)) as log, \
            WandbLogger(config, logger=log) as wb:
        deadline = time.monotonic() + WAIT_S
        while not _rows_so_far(wb.run_dir, "system/cpu/percent"):
            assert time.monotonic() < deadline, f"no system row reached the run within {WAIT_S:g} s"
            time.sleep(0.2)
        wb.log_metrics({"loss": 1.0}, step=1)
        out["run_dir"] = os.path.abspath(wb.run_dir)
    out["log"] = Path(log.log_path).read_text()
    return out


@pytest.fixture(scope="module")
def system(scenario: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return scenario(_one_process, "system")


def test_first_cpu_percent_is_primed(system: dict[str, Any]) -> None:
    """The sampler thread primes psutil's per-thread CPU reference itself, so even the first row is a real figure.

    Priming in the thread that calls ``start()`` instead of the sampling thread left the first row unprimed; the
    stand-in of ``cpu_percent`` in the scenario makes an unprimed call visible as -1.
    """
    cpu = system["run"].column("system/cpu/percent")
    assert cpu, "no system row landed"
    assert cpu[0][1] > 0.0, f"first system/cpu/percent rows {cpu[:3]}: sampled without priming (-1 = unprimed)"


def test_missing_nvml_does_not_crash_logging(system: dict[str, Any]) -> None:
    """Without NVML the run still gets host figures and no GPU keys, metrics still log, and the log says why."""
    run = system["run"]
    assert run.exit_code == 0 and run.rows_with("system/memory/percent")
    assert run.rows_with("metrics/loss")[0]["trainer/step"] == 1
    assert "NVML unavailable" in system["log"]
    assert not any(k.startswith("system/gpu") for k in run.keys())


@pytest.mark.slow
def test_every_gpu_of_every_simulated_node_reaches_the_run_with_hostnames(tmp_path: Path, make_logger: Callable,
                                                                          only_run: Callable) -> None:
    """Ranks 0, 1 on node 0 and rank 2 on node 1, each node with 2 fake GPUs (utilization 10*i + offset): one row
    holds every GPU of both nodes and the cluster-wide aggregates, at a training step, with both host names."""
    layout = {0: (0, 0), 1: (0, 1), 2: (1, 0)}

    def rank_env(rank: int) -> dict[str, str]:
        node, local = layout[rank]
        return {"GROUP_RANK": str(node), "LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": "2"}

    def body(rank: int) -> int:
        from sdxl_dist_log.testing.fake_nvml import FakeNvml

        nvml = FakeNvml(gpus=2, offset=40 * layout[rank][0])
        with make_logger(str(tmp_path), log_system_metrics=True, system_metrics_interval=0.2, nvml=nvml) as wb:
            # train until the primary sees a row with node 1's GPUs in the run file; "seen" reaches every rank as
            # the max over ranks, so all ranks stop after the same call
            deadline = time.monotonic() + WAIT_S
            for step in range(100_000):
                seen = wb.is_primary and bool(_rows_so_far(wb.run_dir, "system/node1/gpu1/utilization"))
                logged = wb.log_metrics({"x": 1.0, "seen": float(seen)}, step=step, reduce={"seen": "max"})
                if logged["metrics/seen"] == 1.0:
                    break
                assert time.monotonic() < deadline, f"no row with node 1's GPUs within {WAIT_S:g} s"
                time.sleep(0.2)
            return wb.rank_info.node_rank

    assert values_or_raise(run_ranks(body, 3, rank_env=rank_env, timeout=2 * WAIT_S)) == [0, 0, 1]
    run = only_run(tmp_path)
    rows = [row for row in run.history if "system/node1/gpu1/utilization" in row]
    assert rows, f"no row with both nodes; keys seen: {sorted({k for r in run.history for k in r})[:40]}"
    row = rows[-1]
    per_gpu = {(n, i): row[f"system/node{n}/gpu{i}/utilization"] for n in (0, 1) for i in (0, 1)}
    assert per_gpu == {(0, 0): 0, (0, 1): 10, (1, 0): 40, (1, 1): 50}
    assert row["system/all/gpu/utilization/mean"] == pytest.approx(25.0)
    assert row["system/all/gpu/utilization/min"] == 0 and row["system/all/gpu/utilization/max"] == 50
    assert row["trainer/step"] >= 0  # system rows carry the training step, so W&B never drops them
    hosts = run.config["sdxl_dist_log"]["hostnames"]
    assert set(hosts) == {"node0", "node1"}
