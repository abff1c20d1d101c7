"""SLURM and submitit launch tests: real jobs on the one-node cluster of ``slurm/start_cluster.sh``, real processes.

Run: ``bash slurm/start_cluster.sh && .venv/bin/python -m pytest tests/launch/test_slurm.py -q``.
Tests marked ``slurm`` FAIL (not skip) when ``sinfo`` does not answer, unless ``SDXL_SKIP_SLURM=1``.
Every job is bounded: we poll ``job.done()`` against a deadline, then ``scancel`` and fail; a fixture cancels every
job a test submitted when it ends, so nothing is left queued.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import cloudpickle
import pytest

from sdxl_dist_log.cli import main
from sdxl_dist_log.launch.submit import submit

# The task functions below live in this test module, which a job's interpreter cannot import: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_DEADLINE_S = 50.0


# ------------------------------------------------------------------------------------------------------------------
# functions that run inside the jobs
# ------------------------------------------------------------------------------------------------------------------
def allreduce_task() -> tuple[int, int, int, str | None]:
    """gloo all_reduce of rank + 1 over all tasks; returns (rank, world_size, sum, SLURM_JOB_ID)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        t = torch.tensor([dist.get_rank() + 1], dtype=torch.int64)
        dist.all_reduce(t)
        return dist.get_rank(), dist.get_world_size(), int(t.item()), os.environ.get("SLURM_JOB_ID")
    finally:
        dist.destroy_process_group()


def requeue_task(counter: str, wait_s: float = 45.0) -> tuple[int, str | None, str | None]:
    """Record the attempt in ``counter``; the first attempt waits to be requeued, the second returns.

    Returns:
        (attempt, SLURM_JOB_ID, SDXL_DIST_LOG_LAUNCHER).
    """
    path = Path(counter)
    attempt = len(path.read_text().splitlines()) + 1 if path.exists() else 1
    job_id = os.environ.get("SLURM_JOB_ID")
    with path.open("a") as f:
        f.write(f"{attempt} {job_id} {os.environ.get('SLURM_RESTART_COUNT', '')}\n")
    if attempt == 1:
        time.sleep(wait_s)  # the test requeues us meanwhile; reaching the end means it did not
        raise RuntimeError("first attempt was not requeued")
    return attempt, job_id, os.environ.get("SDXL_DIST_LOG_LAUNCHER")


def logging_task(out_dir: str, marker: str, wait_s: float = 45.0) -> dict:
    """Train-like loop with the logger; attempt 1 logs steps 0-2 then waits to be requeued, attempt 2 logs 3-5."""
    import torch.distributed as dist

    from sdxl_dist_log import WandbConfig, WandbLogger

    attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0")) + 1
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    config = WandbConfig(project="t", mode="offline", dir=out_dir, log_system_metrics=False, flush_interval=0.2)
    with WandbLogger(config) as wb:
        first = 0 if attempt == 1 else 3
        for step in range(first, first + 3):
            wb.log_metrics({"loss": float(rank + step)}, step=step)
        identity = wb.identity
        if attempt == 1:
            time.sleep(1.0)  # past flush_interval: the requeue kills wandb-core, and only flushed rows survive it
            if rank == 0:
                Path(marker).write_text("logged")
            time.sleep(wait_s)  # the test requeues the job meanwhile
            raise RuntimeError("first attempt was not requeued")
    dist.destroy_process_group()
    return {"attempt": attempt, "run_id": identity.run_id, "group": identity.group, "job_type": identity.job_type}


# ------------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """The cluster answers ``sinfo`` and ``sacct``; FAILS otherwise (skips only with SDXL_SKIP_SLURM=1)."""
    if os.environ.get("SDXL_SKIP_SLURM") == "1":
        pytest.skip("SDXL_SKIP_SLURM=1")
    hint = "start it with `bash slurm/start_cluster.sh` (as root), or set SDXL_SKIP_SLURM=1 to skip these tests"
    for cmd in (["sinfo", "-h", "-o", "%P %T"], ["sacct", "-n", "-X", "--starttime", "now-1hours"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
        except (FileNotFoundError, subprocess.TimeoutExpired) as exc:
            pytest.fail(f"SLURM cluster not available: `{' '.join(cmd)}` failed: {exc}; {hint}", pytrace=False)
        if out.returncode != 0:
            pytest.fail(
                f"SLURM cluster not available: `{' '.join(cmd)}` exited {out.returncode}: {out.stderr.strip()}; "
                f"{hint}",
                pytrace=False,
            )
        if cmd[0] == "sinfo":
            states = out.stdout.split()
            if not any(s.startswith(("idle", "mixed", "alloc")) for s in states[1::2]):
                pytest.fail(f"SLURM node not usable (sinfo: {out.stdout.strip()!r}); {hint}", pytrace=False)
    return "ok"


@pytest.fixture
def jobs() -> Iterator[list]:
    """Jobs a test submits; any still running at teardown is cancelled (scancel for SLURM, kill for local)."""
    submitted: list = []
    yield submitted
    for job in submitted:
        try:
            if not job.done():
                job.cancel(check=False)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


def _logs(job) -> str:
    parts = []
    for i in range(job.num_tasks):
        task = job.task(i)
        parts.append(f"--- task {i} stderr ({task.paths.stderr}):\n{(task.stderr() or '')[-3000:]}")
    return "\n".join(parts)


def wait_done(job, deadline_s: float = JOB_DEADLINE_S) -> None:
    """Poll ``job.done()`` until the deadline; on timeout cancel the job and fail with its logs."""
    end = time.monotonic() + deadline_s
    while not job.done():
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {deadline_s:g} s (cancelled)\n{_logs(job)}")
        time.sleep(0.5)


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


# ------------------------------------------------------------------------------------------------------------------
# (c) local executor: real processes, no SLURM
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_local_two_tasks_allreduce(tmp_path: Path, jobs: list, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_JOB_ID", "SLURM_PROCID", "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    job = submit(allreduce_task, tasks_per_node=2, executor="local", folder=tmp_path / "submitit", timeout_min=2)
    jobs.append(job)
    wait_done(job)
    results = job.results()
    assert sorted(results) == [(0, 2, 3, None), (1, 2, 3, None)], _logs(job)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cli_submit_local_wait(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "train.py"
    script.write_text(
        "import os, sys\n"
        "from pathlib import Path\n"
        "out = Path(sys.argv[1]) / f\"rank{os.environ['RANK']}.txt\"\n"
        "out.write_text(' '.join([os.environ['WORLD_SIZE'], os.environ['SDXL_DIST_LOG_LAUNCHER'], *sys.argv[2:]]))\n"
        "if os.environ['RANK'] == '1' and '--fail' in sys.argv: sys.exit(3)\n"
    )
    base = ["submit", str(script), "--executor", "local", "--tasks-per-node", "2", "--folder", str(tmp_path / "s"),
            "--wait", "--wait-timeout", "50", "--time", "2"]
    assert main(base + ["--", str(tmp_path), "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "submitted job" in out and "_0_log.out" in out and "2/2 tasks succeeded" in out
    assert (tmp_path / "rank0.txt").read_text() == "2 submitit --lr 0.1"
    assert (tmp_path / "rank1.txt").read_text() == "2 submitit --lr 0.1"

    assert main(base + ["--", str(tmp_path), "--fail"]) == 1
    err = capsys.readouterr().err
    assert "task 1: FAILED" in err and "exited with status 3" in err


# ------------------------------------------------------------------------------------------------------------------
# (a) and (b): the real SLURM cluster
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_two_tasks_allreduce(slurm_cluster: str, tmp_path: Path, jobs: list) -> None:
    job = submit(allreduce_task, tasks_per_node=2, executor="slurm", folder=tmp_path / "submitit", timeout_min=5,
                 job_name="sdxl-test-allreduce")
    jobs.append(job)
    wait_done(job)
    results = job.results()
    assert sorted(r[:3] for r in results) == [(0, 2, 3), (1, 2, 3)], _logs(job)
    assert {r[3] for r in results} == {job.job_id}


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_slurm_requeue_keeps_job_id(slurm_cluster: str, tmp_path: Path, jobs: list) -> None:
    counter = tmp_path / "attempts.txt"
    job = submit(requeue_task, str(counter), executor="slurm", folder=tmp_path / "submitit", timeout_min=5,
                 job_name="sdxl-test-requeue")
    jobs.append(job)
    end = time.monotonic() + JOB_DEADLINE_S

    # 1. wait for the first attempt to start, then requeue the job from outside (what preemption does)
    while not (counter.exists() and counter.read_text().strip()):
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"first attempt never started (squeue: {squeue_state(job.job_id)!r})\n{_logs(job)}")
        time.sleep(0.25)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)

    # 2. a requeued job is held ~120 s by BeginTime; move its start to now as soon as it is pending again
    while len(counter.read_text().splitlines()) < 2:
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"second attempt never started (squeue: {squeue_state(job.job_id)!r})\n{_logs(job)}")
        if squeue_state(job.job_id) == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], capture_output=True,
                           timeout=30)
        time.sleep(0.25)

    wait_done(job, max(5.0, end - time.monotonic()))
    attempt, job_id, launcher = job.result()
    assert attempt == 2 and job_id == job.job_id and launcher == "submitit"
    lines = [line.split() for line in counter.read_text().splitlines()]
    assert [line[:2] for line in lines] == [["1", job.job_id], ["2", job.job_id]]


def requeue_when_ready(job, ready: Path, end: float) -> None:
    """Wait for ``ready`` to exist, requeue the job, and start it again at once (skipping the 120 s BeginTime)."""
    while not ready.exists():
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"first attempt never got ready (squeue: {squeue_state(job.job_id)!r})\n{_logs(job)}")
        time.sleep(0.25)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
    while squeue_state(job.job_id) not in ("RUNNING", ""):
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"requeued job never restarted (squeue: {squeue_state(job.job_id)!r})\n{_logs(job)}")
        if squeue_state(job.job_id) == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], capture_output=True,
                           timeout=30)
        time.sleep(0.25)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_slurm_requeued_job_resumes_the_same_run_reduced_over_both_tasks(slurm_cluster: str, tmp_path: Path,
                                                                          jobs: list) -> None:
    from sdxl_dist_log.offline import find_run_dirs, read_run

    runs_dir = tmp_path / "runs"
    marker = tmp_path / "attempt1.logged"
    job = submit(logging_task, str(runs_dir), str(marker), tasks_per_node=2, executor="slurm",
                 folder=tmp_path / "submitit", timeout_min=5, job_name="sdxl-test-resume")
    jobs.append(job)
    end = time.monotonic() + 100
    requeue_when_ready(job, marker, end)
    wait_done(job, max(5.0, end - time.monotonic()))
    results = job.results()
    assert {r["attempt"] for r in results} == {2}, _logs(job)
    expected_id = f"slurm-{job.job_id}"
    assert {r["run_id"] for r in results} == {expected_id}
    assert {r["group"] for r in results} == {f"slurm-{job.job_id}"}
    assert {r["job_type"] for r in results} == {"train-submitit"}

    runs = [read_run(d) for d in find_run_dirs(runs_dir)]
    assert [r.run_id for r in runs] == [expected_id, expected_id]  # one run id, two offline parts
    first, second = runs
    assert first.group == second.group == f"slurm-{job.job_id}"
    # each step's value is the mean over the 2 tasks of (rank + step)
    assert [(row["trainer/step"], row["metrics/loss"]) for row in first.rows_with("metrics/loss")] == [
        (0, 0.5), (1, 1.5), (2, 2.5)]
    assert [(row["trainer/step"], row["metrics/loss"]) for row in second.rows_with("metrics/loss")] == [
        (3, 3.5), (4, 4.5), (5, 5.5)]
    assert second.exit_code == 0


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_slurm_demo_preempted_mid_training_resumes_from_its_checkpoint_into_the_same_run(
        slurm_cluster: str, tmp_path: Path, jobs: list) -> None:
    import functools

    from sdxl_dist_log.demo import train
    from sdxl_dist_log.offline import find_run_dirs, read_run

    out = tmp_path / "demo"
    task = functools.partial(train, 40, out_dir=str(out), step_time=0.25, checkpoint_every=5, image_every=10,
                             system_metrics_interval=0.5, resume=True)
    job = submit(task, tasks_per_node=2, executor="slurm", folder=tmp_path / "submitit", timeout_min=5,
                 job_name="sdxl-test-demo-resume")
    jobs.append(job)
    end = time.monotonic() + 110
    requeue_when_ready(job, out / "checkpoints" / "step_10.pt", end)  # preempted after its second checkpoint
    wait_done(job, max(5.0, end - time.monotonic()))
    assert job.results()[0] is not None, _logs(job)

    first, second = (read_run(d) for d in find_run_dirs(out))
    assert first.run_id == second.run_id == f"slurm-{job.job_id}"
    steps_first = [row["trainer/step"] for row in first.rows_with("metrics/loss")]
    steps_second = [row["trainer/step"] for row in second.rows_with("metrics/loss")]
    # attempt 1 logged steps 0..9 before the requeue; what wandb-core had not flushed when SLURM killed it is lost,
    # at most flush_interval (0.5 s = 2 steps of 0.25 s) and a step in flight
    assert steps_first == list(range(len(steps_first))) and steps_first[-1] >= 9 - 3
    # submitit ignores the requeue's SIGTERM, so attempt 1 trains (and checkpoints) until SLURM's KillWait while
    # its wandb-core, signalled too, is gone: attempt 2 resumes at the last checkpoint attempt 1 saved
    resumed_at = steps_second[0]
    assert resumed_at % 5 == 0 and resumed_at >= 10
    assert steps_second == list(range(resumed_at, 40)) and second.exit_code == 0
    # the checkpoints of both parts are versions of one artifact
    assert {a.name for a in first.artifacts + second.artifacts} == {"ckpt"}


# ------------------------------------------------------------------------------------------------------------------
# (d) the sbatch template: srun + torchrun, no submitit
# ------------------------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def _scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=10)
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sbatch_template_runs_its_default_script(slurm_cluster: str, tmp_path: Path) -> None:
    from sdxl_dist_log.offline import find_run_dirs, read_run

    # as the template says: sbatch from the repository root, with the venv's torchrun on PATH
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var in ("TRAIN_SCRIPT", "TRAIN_MODULE", "NPROC_PER_NODE", "TORCHRUN"):
        env.pop(var, None)
    log = tmp_path / "train-%j.out"
    out_dir = tmp_path / "demo"
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--output={log}", "--job-name=sdxl-test-sbatch", "slurm/train.sbatch",
         "--steps", "3", "--step-time", "0", "--out-dir", str(out_dir)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    log = Path(str(log).replace("%j", job_id))
    try:
        end = time.monotonic() + 100
        while squeue_state(job_id):
            if time.monotonic() > end:
                pytest.fail(f"sbatch job {job_id} not done after 100 s\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    text = log.read_text()
    job = _scontrol_job(job_id)
    assert (job.get("JobState"), job.get("ExitCode")) == ("COMPLETED", "0:0"), text
    assert "1 node(s) x 1 worker(s)" in text and "running examples/train.py --steps 3" in text, text
    assert "srun exited with status 0" in text
    (run_dir,) = find_run_dirs(out_dir)
    run = read_run(run_dir)
    assert run.run_id == f"slurm-{job_id}" and run.exit_code == 0
    assert [row["trainer/step"] for row in run.rows_with("metrics/loss")] == [0, 1, 2]
