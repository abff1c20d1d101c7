"""WandbLogger from construction to the end of the process: which rank owns the run, modes, a killed process, and
preemption signals.

The W&B side of starting a run (fallback from online, a dead W&B service) is in tests/backends/test_wandb_backend.py;
the signal chaining alone in tests/test_preemption.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from sdxl_dist_log import ConfigError, WandbConfig, WandbLogger
from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.offline import attempts_of, find_run_dirs, read_run
from sdxl_dist_log.testing.wandb_env import apply, wandb_environment

pytestmark = pytest.mark.timeout(300)

WAIT_S = 120.0
"""How long a case waits for a process to get somewhere before it fails (wandb-core starts slowly on a busy box)."""


def _torchrun(script: Path, *args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", str(script), *args]


# -- construction ------------------------------------------------------------------------------------------------------
def test_unknown_config_keys_are_rejected_before_starting_anything(tmp_path: Path) -> None:
    """A mapping with an unknown key raises ConfigError naming it, before any run directory exists."""
    with pytest.raises(ConfigError, match="'projct'"):
        WandbLogger({"projct": "x", "mode": "offline", "dir": str(tmp_path / "runs")})
    assert not (tmp_path / "runs").exists()


def test_disabled_mode_writes_nothing(tmp_path: Path) -> None:
    """``mode="disabled"``: every call returns at once, nothing is reduced, and nothing is written (no run directory,
    no file)."""
    Path("weights.pt").write_bytes(b"w")
    with WandbLogger(WandbConfig(project="off", mode="disabled", dir=str(tmp_path / "disabled_out"))) as wb:
        assert wb.log_metrics({"loss": 1.0}, step=0) is None
        assert wb.log_images([np.zeros((8, 8, 3))], step=0) == 0
        assert wb.main_process.log_images([np.zeros((8, 8, 3))], step=0) == 0
        assert wb.log_model("weights.pt", aliases=["final"]) is False
        wb.log_config({"a": 1})
        assert wb.identity.mode == "disabled" and wb.run_dir is None
    out = tmp_path / "disabled_out"
    assert not out.exists() or list(out.rglob("*")) == []



@pytest.mark.slow
def test_disabled_mode_makes_no_collective_and_gathers_nothing(tmp_path: Path) -> None:
    """Two ranks with ``mode="disabled"``: building the logger, metrics, images (64x64 each), main-process calls and
    ``finish`` send nothing through torch.distributed, counted by ``CollectiveProbe`` from before construction."""

    def body(rank: int) -> dict[str, Any]:
        from sdxl_dist_log.testing.probe import CollectiveProbe

        with CollectiveProbe() as probe:
            with WandbLogger(WandbConfig(project="off", mode="disabled", dir=str(tmp_path))) as wb:
                for step in range(5):
                    wb.log_metrics({"loss": 1.0 + rank, "lr": 1e-4}, step=step)
                    wb.log_images([np.zeros((64, 64, 3), np.uint8)] * 4, step=step)
                wb.main_process.log_metrics({"val": 1.0})
                wb.log_config({"a": 1})
        return {"calls": dict(probe.api), "bytes": probe.sent + probe.received}

    assert values_or_raise(run_ranks(body, 2, timeout=120)) == [{"calls": {}, "bytes": 0}] * 2

@pytest.mark.slow
def test_world_size_without_process_group_warns_and_only_rank_zero_owns_a_run(tmp_path: Path, make_logger: Callable,
                                                                              only_run: Callable) -> None:
    """WORLD_SIZE=2 without ``init_process_group``: every rank warns, and only rank 0's own value lands."""
    def body(rank: int) -> bool:
        records = logging.handlers.BufferingHandler(capacity=10_000)
        logging.getLogger("sdxl_dist_log").addHandler(records)
        with make_logger(str(tmp_path)) as wb:
            wb.log_metrics({"x": float(rank)}, step=0)
        return any("not initialized" in r.getMessage() for r in records.buffer)

    assert values_or_raise(run_ranks(body, 2, backend=None, timeout=2 * WAIT_S)) == [True, True]
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


@pytest.mark.slow
def test_torchrun_launch_one_run_grouped_by_launch_and_no_wandb_off_primary(tmp_path: Path,
                                                                            only_run: Callable) -> None:
    """Under torchrun: one run, grouped by the torchrun run id, job type "train-torchrun", and rank 1 never imports
    wandb."""
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    proc = subprocess.run(_torchrun(script, str(tmp_path)), capture_output=True, text=True, timeout=2 * WAIT_S,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["wandb"] for i in info] == [True, False]
    run = only_run(tmp_path)
    assert run.group == info[0]["group"] and run.group.startswith("torchrun-")
    assert run.job_type == "train-torchrun"
    assert run.rows_with("metrics/loss")[0]["metrics/loss"] == 0.5


# -- a killed process --------------------------------------------------------------------------------------------------
def _killed_child(root: str, conn: Any) -> None:
    apply(wandb_environment(root))
    os.chdir(root)
    wb = WandbLogger(WandbConfig(project="killed", mode="offline", dir="out", log_system_metrics=False))
    wb.log_metrics({"loss": 1.5}, step=7)
    conn.send(os.path.abspath(wb.run_dir))
    threading.Event().wait(WAIT_S * 2)  # "training" until killed


def _logged_rows(run_dir: str) -> list[dict[str, Any]]:
    try:
        return read_run(run_dir).rows_with("metrics/loss")
    except Exception:  # the file is being written: read again on the next poll
        return []


@pytest.mark.slow
def test_sigkill_keeps_the_logged_row(tmp_path: Path) -> None:
    """A row reaches the run file while the process lives, without ``finish``; SIGKILL keeps it, the run has no
    exit record, and wandb-core exits with its parent."""
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_killed_child, args=(str(tmp_path), sender))
    proc.start()
    helpers: list[psutil.Process] = []
    lingering: list[psutil.Process] = []
    try:
        assert receiver.poll(WAIT_S), f"the child did not log within {WAIT_S:g} s"
        run_dir = receiver.recv()
        helpers = psutil.Process(proc.pid).children(recursive=True)  # wandb-core
        deadline = time.monotonic() + WAIT_S
        while not _logged_rows(run_dir):  # flushed by wandb-core every flush_interval, with no finish
            assert time.monotonic() < deadline, f"the row never reached {run_dir} while the process ran"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(WAIT_S)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(5)
        _, lingering = psutil.wait_procs(helpers, timeout=60)  # wandb-core exits when its parent dies
        for helper in lingering:
            helper.kill()
        psutil.wait_procs(lingering, timeout=5)
    assert not lingering, f"wandb-core did not exit within 60 s of its parent's SIGKILL: {lingering}"
    run = read_run(run_dir)
    assert run.exit_code is None
    [row] = run.rows_with("metrics/loss")
    assert (row["metrics/loss"], row["trainer/step"]) == (1.5, 7)


# -- preemption --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_preemption_runs_the_handler_that_was_there_before(tmp_path: Path, make_logger: Callable,
                                                           only_run: Callable) -> None:
    """On SIGUSR1 the run is marked preempting and finished, then the handler installed before (e.g. submitit's
    checkpoint) still runs."""
    def body(rank: int) -> list[int]:
        seen: list[int] = []
        signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append(signum))  # e.g. submitit's checkpoint
        wb = make_logger(str(tmp_path))
        wb.handle_preemption()
        wb.log_metrics({"loss": 1.0}, step=0)
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + WAIT_S
        while not seen:  # Python runs the handlers on the main thread, between bytecodes
            assert time.monotonic() < deadline, "the previous SIGUSR1 handler never ran"
            time.sleep(0.01)
        return seen

    assert values_or_raise(run_ranks(body, 1, backend=None, timeout=2 * WAIT_S)) == [[signal.SIGUSR1]]
    run = only_run(tmp_path)
    assert run.preempting and run.finished


PREEMPT_SCRIPT = """
import os, sys, threading
from sdxl_dist_log import WandbConfig, WandbLogger
import torch.distributed as dist
dist.init_process_group("gloo")
wb = WandbLogger(WandbConfig(project="t", mode="offline", dir=sys.argv[1], log_system_metrics=False))
wb.handle_preemption()
for step in range(5):
    wb.log_metrics({"loss": float(step)}, step=step)
open(os.path.join(sys.argv[1], f"ready{dist.get_rank()}"), "w").close()
threading.Event().wait(float(sys.argv[2]))  # training would go on; SIGTERM arrives meanwhile
"""


@pytest.mark.slow
def test_sigterm_to_every_process_twice_marks_the_run_preempting_and_keeps_every_step(tmp_path: Path) -> None:
    """What SLURM's proctrack/linuxproc does on a requeue, and torchrun on top: SIGTERM to torchrun, both workers and
    wandb-core, twice 5 ms apart (torchrun forwards its copy as well). The run is marked preempting and closed (in a
    new part: its first service is dead), and every step is kept."""
    script = tmp_path / "train.py"
    script.write_text(PREEMPT_SCRIPT)
    proc = subprocess.Popen(_torchrun(script, str(tmp_path), str(WAIT_S * 2)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT_S
        while not all((tmp_path / f"ready{r}").exists() for r in range(2)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert any(p.name() == "wandb-core" for p in tree)
        for _ in range(2):
            for member in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    member.send_signal(signal.SIGTERM)
            time.sleep(0.005)
        output, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert "marking the run as preempting" in output, output[-3000:]
    # torchrun's agent prints its own SignalException; nothing of ours or of W&B's may show a traceback
    assert "Exception ignored" not in output, output[-3000:]
    assert not re.search(r'File "[^"]*/(sdxl_dist_log|wandb)/', output), output[-3000:]  # no frame of ours or W&B's
    parts = [read_run(d) for d in find_run_dirs(tmp_path)]
    assert parts[-1].preempting and parts[-1].exit_code == 1  # closed, not abandoned
    assert sorted(row["trainer/step"] for p in parts for row in p.rows_with("metrics/loss")) == [0, 1, 2, 3, 4]


def _killed_before_its_rows_were_written(root: str, conn: Any) -> None:
    apply(wandb_environment(root))
    os.chdir(root)
    wb = WandbLogger(WandbConfig(project="resumed", mode="offline", dir="out", log_system_metrics=False,
                                 run_id="resume-me", resume=True, flush_interval=600.0))
    for step in range(5):
        wb.log_metrics({"loss": float(step)}, step=step)
    conn.send("logged")
    threading.Event().wait(WAIT_S * 2)  # "training" until killed


@pytest.mark.slow
def test_rows_a_killed_process_had_not_written_go_first_into_the_next_attempt(tmp_path: Path) -> None:
    """SIGKILL to the process and its wandb-core before the run file held anything (a node killed, KillWait over):
    the next attempt of the run (same run id) writes those rows first, then its own; ``inspect`` shows attempt 1
    killed and taken over."""
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_killed_before_its_rows_were_written, args=(str(tmp_path), sender))
    proc.start()
    try:
        assert receiver.poll(WAIT_S), f"the child did not log within {WAIT_S:g} s"
        receiver.recv()
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for member in tree:
            member.kill()
        psutil.wait_procs(tree, timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(10)

    def resume() -> str:
        apply(wandb_environment(str(tmp_path)))
        os.chdir(tmp_path)
        with WandbLogger(WandbConfig(project="resumed", mode="offline", dir="out", log_system_metrics=False,
                                     run_id="resume-me", resume=True)) as wb:
            for step in range(5, 8):
                wb.log_metrics({"loss": float(step)}, step=step)
        return "done"

    assert values_or_raise(run_ranks(lambda rank: resume(), 1, backend=None, timeout=2 * WAIT_S)) == ["done"]
    first, second = (read_run(d) for d in find_run_dirs(tmp_path / "out"))
    assert first.rows_with("metrics/loss") == [] and first.exit_code is None
    assert [row["trainer/step"] for row in second.rows_with("metrics/loss")] == list(range(8))
    assert second.summary["sdxl_dist_log/rows_from_earlier_attempts"] == 5
    killed, resumed = attempts_of([first, second])
    assert (killed.ended, killed.taken_over, resumed.ended) == ("killed", 5, "finished")
