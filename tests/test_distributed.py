"""Multi-rank behaviour with real processes (gloo), real offline W&B runs read back with our reader."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.offline import find_run_dirs, read_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

COUNTED = ("all_reduce", "all_gather", "all_gather_single", "all_gather_into_tensor", "all_gather_object",
           "broadcast", "broadcast_object_list", "gather", "gather_object", "barrier", "reduce", "scatter",
           "monitored_barrier")


def count_collectives() -> dict[str, int]:
    """Wrap torch.distributed's collectives in this process so every call is counted."""
    import torch.distributed as dist

    counts: dict[str, int] = {}
    for name in COUNTED:
        original = getattr(dist, name, None)
        if original is None:
            continue

        def wrapper(*args, __name=name, __original=original, **kwargs):
            counts[__name] = counts.get(__name, 0) + 1
            return __original(*args, **kwargs)

        setattr(dist, name, wrapper)
    return counts


def make_logger(tmp: str, nvml=None, **overrides):
    from sdxl_dist_log import WandbConfig, WandbLogger

    settings = dict(project="t", mode="offline", dir=tmp, log_system_metrics=False, collective_timeout=20.0)
    settings.update(overrides)
    return WandbLogger(WandbConfig(**settings), nvml=nvml)


def only_run(tmp: Path):
    runs = find_run_dirs(tmp)
    assert len(runs) == 1, f"expected exactly one run dir, found {runs}"
    return read_run(runs[0])


@pytest.mark.parametrize("world", [2, 3])
def test_one_run_with_exact_reductions(tmp_path: Path, world: int) -> None:
    ops = {"m": "mean", "s": "sum", "lo": "min", "hi": "max", "pr": "per_rank", "own": "local"}

    def body(rank: int):
        import torch

        with make_logger(str(tmp_path), metric_reduce=ops) as wb:
            for step in range(3):
                v = float((rank + 1) * (step + 1))
                wb.log_metrics({"m": torch.tensor(v), "s": v, "lo": np.float32(v), "hi": v, "pr": v, "own": v},
                               step=step)
            return wb.is_primary

    assert values_or_raise(run_ranks(body, world)) == [True] + [False] * (world - 1)
    run = only_run(tmp_path)
    assert run.exit_code == 0
    assert run.config["sdxl_dist_log"]["world_size"] == world
    rows = run.rows_with("metrics/m")
    assert len(rows) == 3
    for step, row in enumerate(rows):
        per_rank = [(r + 1) * (step + 1) for r in range(world)]
        assert row["trainer/step"] == step
        assert row["metrics/m"] == pytest.approx(sum(per_rank) / world)
        assert row["metrics/s"] == sum(per_rank)
        assert row["metrics/lo"] == min(per_rank)
        assert row["metrics/hi"] == max(per_rank)
        assert row["metrics/own"] == per_rank[0]
        assert [row[f"metrics/pr/rank{r}"] for r in range(world)] == per_rank


def test_one_collective_per_call_whatever_the_number_of_keys(tmp_path: Path) -> None:
    def body(rank: int):
        counts = count_collectives()
        with make_logger(str(tmp_path)) as wb:
            per_call = {}
            for n_keys in (8, 64, 512):
                metrics = {f"k{i:03d}": float(i + rank) for i in range(n_keys)}
                wb.log_metrics(metrics, step=n_keys)  # may grow the row capacity once (one extra gather)
                before = dict(counts)
                for step in range(5):
                    wb.log_metrics(metrics, step=n_keys + 1 + step)
                per_call[n_keys] = {k: (counts.get(k, 0) - before.get(k, 0)) / 5 for k in counts}
            return per_call

    for per_call in values_or_raise(run_ranks(body, 2)):
        for n_keys, ops in per_call.items():
            issued = {op: n for op, n in ops.items() if n}
            assert issued == {"all_gather_single": 1.0}, f"{n_keys} keys: {issued}"
    run = only_run(tmp_path)
    last = run.rows_with("metrics/k511")[-1]
    assert last["metrics/k511"] == pytest.approx(511.5)


def test_differing_keys_log_the_union_reduced_over_the_ranks_that_passed_each(tmp_path: Path) -> None:
    def body(rank: int):
        with make_logger(str(tmp_path)) as wb:
            metrics = {"shared": float(rank + 1), f"only{rank}": 10.0 * (rank + 1)}
            if rank == 2:
                metrics = {"shared": 3.0}
            logged = wb.log_metrics(metrics, step=0)
            wb.log_metrics({"after": 1.0}, step=1)  # the group still works afterwards
            return logged

    values = values_or_raise(run_ranks(body, 3))
    assert values[0] == values[1] == values[2]
    row = only_run(tmp_path).rows_with("metrics/shared")[0]
    assert row["metrics/shared"] == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert row["metrics/only0"] == 10.0  # rank 0 alone: its own value, not divided by 3
    assert row["metrics/only1"] == 20.0


def test_differing_keys_with_strict_raise_on_every_rank_naming_ranks_and_keys(tmp_path: Path) -> None:
    def body(rank: int):
        from sdxl_dist_log import MetricKeyMismatchError

        with make_logger(str(tmp_path), strict_keys=True) as wb:
            try:
                wb.log_metrics({"a": 1.0} if rank == 0 else {"a": 1.0, "b": 2.0}, step=0)
            except MetricKeyMismatchError as exc:
                return str(exc)
            return None

    messages = values_or_raise(run_ranks(body, 2))
    for message in messages:
        assert message is not None and "'b' missing on ranks [0]" in message and "log_metrics at step 0" in message


def test_a_bad_value_on_one_rank_raises_on_every_rank_and_logs_nothing(tmp_path: Path) -> None:
    def body(rank: int):
        from sdxl_dist_log.errors import MetricValueError

        with make_logger(str(tmp_path)) as wb:
            wb.log_metrics({"loss": 1.0}, step=0)
            try:
                wb.log_metrics({"loss": "oops" if rank == 1 else 2.0}, step=1)
            except MetricValueError as exc:
                error = str(exc)
            else:
                error = None
            wb.log_metrics({"loss": 3.0}, step=2)
            return error

    errors = values_or_raise(run_ranks(body, 2))
    assert all(e is not None and "ranks [1]" in e for e in errors)
    assert "'loss'" in errors[1]  # the rank with the bad value names the key
    steps = [row["trainer/step"] for row in only_run(tmp_path).rows_with("metrics/loss")]
    assert steps == [0, 2]


def test_images_from_every_rank_reach_the_run_capped_fairly_with_rank_captions(tmp_path: Path) -> None:
    def body(rank: int):
        import torch

        with make_logger(str(tmp_path), max_images_to_log=4) as wb:
            count = {0: 3, 1: 1, 2: 5}[rank]
            batch = torch.stack([torch.full((3, 8, 8), rank * 50 + i, dtype=torch.uint8) for i in range(count)])
            return wb.log_images(batch, captions=[f"r{rank}-{i}" for i in range(count)], step=7)

    counts = values_or_raise(run_ranks(body, 3))
    assert counts[0] == 4  # primary reports how many landed: shares 2 + 1 + 1
    run = only_run(tmp_path)
    entry = run.rows_with("sample/images")[0]["sample/images"]
    assert entry["count"] == 4
    assert entry["captions"] == ["[rank 0] r0-0", "[rank 0] r0-1", "[rank 1] r1-0", "[rank 2] r2-0"]
    from PIL import Image

    pngs = sorted(p for p in run.media_files if p.endswith(".png"))
    assert len(pngs) == 4
    pixels = sorted({int(np.asarray(Image.open(run.path / "files" / p))[0, 0, 0]) for p in pngs})
    assert pixels == [0, 1, 50, 100]  # rank 0's first two, rank 1's first, rank 2's first


def test_a_rank_that_never_arrives_is_named_within_the_timeout(tmp_path: Path) -> None:
    def body(rank: int):
        from sdxl_dist_log import CollectiveTimeoutError

        with make_logger(str(tmp_path), collective_timeout=3.0) as wb:
            wb.log_metrics({"loss": 1.0}, step=0)
            if rank == 1:
                time.sleep(9)  # stuck in "training": never reaches the step-1 call
                return None
            start = time.monotonic()
            try:
                wb.log_metrics({"loss": 2.0}, step=1)
            except CollectiveTimeoutError as exc:
                waited = time.monotonic() - start
                wb.log_metrics({"loss": 3.0}, step=2)  # degraded: this rank's own value, no hang
                return {"error": str(exc), "ranks": exc.ranks, "waited": waited}
            return None

    values = values_or_raise(run_ranks(body, 2, timeout=60))
    result = values[0]
    assert result is not None, "rank 0 did not raise"
    assert result["ranks"] == [1]
    assert "log_metrics at step 1" in result["error"] and "ranks [1] did not reach it" in result["error"]
    assert result["waited"] < 3.0 + 6.0
    run = only_run(tmp_path)
    assert run.exit_code == 0  # the run was finished despite the failure
    assert [r["trainer/step"] for r in run.rows_with("metrics/loss")] == [0, 2]


def test_a_rank_that_skips_a_call_is_caught_in_the_next_one(tmp_path: Path) -> None:
    def body(rank: int):
        from sdxl_dist_log.errors import RanksOutOfStepError

        with make_logger(str(tmp_path)) as wb:
            wb.log_metrics({"loss": 1.0}, step=0)
            try:
                if rank == 0:
                    wb.log_metrics({"loss": 2.0}, step=1)  # rank 1 skipped this one
                wb.log_images([np.zeros((4, 4, 3), np.uint8)], step=2)
            except RanksOutOfStepError as exc:
                return {"error": str(exc), "ranks": exc.ranks}
            return None

    values = values_or_raise(run_ranks(body, 2))
    for value in values:
        assert value is not None and value["ranks"] == [1]
        assert "rank 1: log_images at step 2" in value["error"] and "rank 0: log_metrics at step 1" in value["error"]


def test_async_metrics_keep_order_and_values(tmp_path: Path) -> None:
    def body(rank: int):
        with make_logger(str(tmp_path), async_metrics=True) as wb:
            for step in range(20):
                assert wb.log_metrics({"x": float(step * (rank + 1))}, step=step) is None
            wb.log_images([np.full((4, 4, 3), 255, np.uint8)], captions=[f"r{rank}"], step=19)
        return True

    values_or_raise(run_ranks(body, 2))
    run = only_run(tmp_path)
    rows = run.rows_with("metrics/x")
    assert [r["trainer/step"] for r in rows] == list(range(20))
    assert [r["metrics/x"] for r in rows] == [step * 1.5 for step in range(20)]
    assert run.rows_with("sample/images")[0]["sample/images"]["count"] == 2


def test_model_and_config_calls_never_block_other_ranks(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"w" * 64)

    def body(rank: int):
        with make_logger(str(tmp_path / "runs")) as wb:
            uploaded = [wb.log_model(checkpoint, metadata={"step": 1}, aliases=["latest"])]  # every rank
            if wb.is_primary:
                (checkpoint / "weights.bin").write_bytes(b"v" * 64)
                uploaded.append(wb.log_model(checkpoint, metadata={"step": 2}))  # primary only
                wb.log_config({"lr": 0.1})
            wb.log_config({"batch": 8})
            wb.log_metrics({"x": 1.0}, step=0)  # still in step with each other
            return uploaded

    values = values_or_raise(run_ranks(body, 2))
    assert values == [[True, True], [False]]
    run = only_run(tmp_path / "runs")
    versions = [a for a in run.artifacts if a.name == "ckpt"]
    assert len(versions) == 2 and len({a.digest for a in versions}) == 2
    assert versions[0].metadata["step"] == 1 and "latest" in versions[0].aliases
    assert run.config["lr"] == 0.1 and run.config["batch"] == 8


def test_world_size_without_process_group_warns_and_only_rank_zero_owns_a_run(tmp_path: Path) -> None:
    def body(rank: int):
        import logging

        records: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                records.append(record.getMessage())

        logging.getLogger("sdxl_dist_log").addHandler(Keep())
        with make_logger(str(tmp_path)) as wb:
            wb.log_metrics({"x": float(rank)}, step=0)
        return any("not initialized" in m for m in records)

    assert values_or_raise(run_ranks(body, 2, backend=None)) == [True, True]
    assert only_run(tmp_path).rows_with("metrics/x")[0]["metrics/x"] == 0.0


TORCHRUN_SCRIPT = """
import json, os, sys
from sdxl_dist_log import WandbConfig, WandbLogger
import torch.distributed as dist
dist.init_process_group("gloo")
with WandbLogger(WandbConfig(project="t", mode="offline", dir=sys.argv[1], log_system_metrics=False)) as wb:
    wb.log_metrics({"loss": float(dist.get_rank())}, step=0)
    info = {"rank": dist.get_rank(), "wandb": "wandb" in sys.modules, "group": wb.identity.group,
            "job_type": wb.identity.job_type}
open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w").write(json.dumps(info))
dist.destroy_process_group()
"""


def test_torchrun_launch_one_run_grouped_by_launch_and_no_wandb_off_primary(tmp_path: Path) -> None:
    import json
    import subprocess

    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["wandb"] for i in info] == [True, False]
    run = only_run(tmp_path)
    assert run.group == info[0]["group"] and run.group.startswith("torchrun-")
    assert run.job_type == "train-torchrun"
    assert run.rows_with("metrics/loss")[0]["metrics/loss"] == 0.5


def test_online_init_without_network_falls_back_on_every_rank_within_the_bound(tmp_path: Path) -> None:
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # nothing listens on port 9

    def body(rank: int):
        start = time.monotonic()
        with make_logger(str(tmp_path), mode="online", init_timeout=3.0) as wb:
            elapsed = time.monotonic() - start
            wb.log_metrics({"x": float(rank)}, step=0)
            return {"mode": wb.identity.mode, "reason": wb.identity.fallback_reason, "elapsed": elapsed}

    values = values_or_raise(run_ranks(body, 2, env=env, timeout=90))
    for value in values:
        assert value["mode"] == "offline" and "online init failed" in value["reason"]
        assert value["elapsed"] < 3.0 + 20.0
    assert only_run(tmp_path).rows_with("metrics/x")[0]["metrics/x"] == 0.5


PREEMPT_SCRIPT = """
import os, sys, time
from sdxl_dist_log import WandbConfig, WandbLogger
import torch.distributed as dist
dist.init_process_group("gloo")
wb = WandbLogger(WandbConfig(project="t", mode="offline", dir=sys.argv[1], log_system_metrics=False))
wb.handle_preemption()
for step in range(5):
    wb.log_metrics({"loss": float(step)}, step=step)
open(os.path.join(sys.argv[1], f"ready{dist.get_rank()}"), "w").close()
time.sleep(60)  # training would go on; SIGTERM arrives meanwhile
"""


def test_sigterm_marks_the_run_preempting_and_keeps_every_step(tmp_path: Path) -> None:
    import signal
    import subprocess

    script = tmp_path / "train.py"
    script.write_text(PREEMPT_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{r}").exists() for r in range(2)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)  # torchrun forwards it to the workers
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "marking the run as preempting" in output
    run = only_run(tmp_path)
    assert run.preempting
    assert [row["trainer/step"] for row in run.rows_with("metrics/loss")] == [0, 1, 2, 3, 4]
    assert run.exit_code is not None  # finished, not abandoned


def test_every_gpu_of_every_simulated_node_reaches_the_run_with_hostnames(tmp_path: Path) -> None:
    # ranks 0, 1 on node 0 and rank 2 on node 1, each node with 2 fake GPUs (utilization 10*i + offset)
    layout = {0: (0, 0), 1: (0, 1), 2: (1, 0)}

    def rank_env(rank: int) -> dict[str, str]:
        node, local = layout[rank]
        return {"GROUP_RANK": str(node), "LOCAL_RANK": str(local), "LOCAL_WORLD_SIZE": "2"}

    def body(rank: int):
        from sdxl_dist_log.testing.fake_nvml import FakeNvml

        nvml = FakeNvml(gpus=2, offset=40 * layout[rank][0])
        with make_logger(str(tmp_path), log_system_metrics=True, system_metrics_interval=0.2, nvml=nvml) as wb:
            for step in range(8):
                wb.log_metrics({"x": 1.0}, step=step)
                time.sleep(0.2)
            return wb.rank_info.node_rank

    assert values_or_raise(run_ranks(body, 3, rank_env=rank_env, timeout=120)) == [0, 0, 1]
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


def test_a_rank_that_skips_a_call_of_the_same_kind_is_caught_by_the_step(tmp_path: Path) -> None:
    # gloo pairs the n-th collective of every rank: without the step check, rank 0's step 1 would be averaged
    # with rank 1's step 2, a silently wrong mean
    def body(rank: int):
        from sdxl_dist_log.errors import RanksOutOfStepError

        with make_logger(str(tmp_path)) as wb:
            wb.log_metrics({"loss": 1.0}, step=0)
            try:
                for step in (1, 2) if rank == 0 else (2,):
                    wb.log_metrics({"loss": float(step)}, step=step)
            except RanksOutOfStepError as exc:
                return exc.ranks
            return None

    assert values_or_raise(run_ranks(body, 2)) == [[1], [1]]
    assert [r["trainer/step"] for r in only_run(tmp_path).rows_with("metrics/loss")] == [0]


def test_async_errors_never_make_one_rank_skip_a_call(tmp_path: Path) -> None:
    def body(rank: int):
        from sdxl_dist_log.errors import MetricValueError

        errors = 0
        with make_logger(str(tmp_path), async_metrics=True) as wb:
            for step in range(4):
                if rank == 0:
                    time.sleep(0.3)  # rank 1's worker reports the error long before rank 0's does
                try:
                    wb.log_metrics({"loss": "bad" if (rank == 1 and step == 0) else float(10 * step + rank)},
                                   step=step)
                except MetricValueError:
                    errors += 1
            try:
                wb.finish()
            except MetricValueError:
                errors += 1
        return errors

    assert values_or_raise(run_ranks(body, 2)) == [1, 1]
    rows = only_run(tmp_path).rows_with("metrics/loss")
    assert [(r["trainer/step"], r["metrics/loss"]) for r in rows] == [(1, 10.5), (2, 20.5), (3, 30.5)]


def test_preemption_runs_the_handler_that_was_there_before(tmp_path: Path) -> None:
    def body(rank: int):
        import os
        import signal

        seen: list[int] = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))  # e.g. submitit's checkpoint
        wb = make_logger(str(tmp_path))
        wb.handle_preemption()
        wb.log_metrics({"loss": 1.0}, step=0)
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.2)
        return seen

    assert values_or_raise(run_ranks(body, 1, backend=None)) == [[10]]
    assert only_run(tmp_path).preempting
