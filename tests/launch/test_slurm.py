"""SLURM and submitit launch tests: real jobs on the one-node cluster of ``slurm/start_cluster.sh``, real processes.

Run: ``bash slurm/start_cluster.sh && .venv/bin/python -m pytest tests/launch/test_slurm.py -q``.
Tests marked ``slurm`` FAIL (not skip) when ``sinfo`` does not answer, unless ``SDXL_SKIP_SLURM=1``.
Every job is bounded: we poll ``job.done()`` against a deadline, then ``scancel`` and fail; a fixture cancels every
job a test submitted when it ends, so nothing is left queued.
"""

from __future__ import annotations

import os
import re
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
from sdxl_dist_log.testing import preempt

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
            pytest.fail(f"first attempt never started (squeue: {preempt.squeue_state(job.job_id)!r})\n{_logs(job)}")
        time.sleep(0.25)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)

    # 2. a requeued job is held ~120 s by BeginTime; move its start to now as soon as it is pending again
    while len(counter.read_text().splitlines()) < 2:
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"second attempt never started (squeue: {preempt.squeue_state(job.job_id)!r})\n{_logs(job)}")
        if preempt.squeue_state(job.job_id) == "PENDING":
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
            pytest.fail(f"first attempt never got ready (squeue: {preempt.squeue_state(job.job_id)!r})\n{_logs(job)}")
        time.sleep(0.25)
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
    while preempt.squeue_state(job.job_id) not in ("RUNNING", ""):
        if time.monotonic() > end:
            job.cancel(check=False)
            pytest.fail(f"requeued job never restarted (squeue: {preempt.squeue_state(job.job_id)!r})\n{_logs(job)}")
        if preempt.squeue_state(job.job_id) == "PENDING":
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
    from sdxl_dist_log.offline import attempts_of, find_run_dirs, read_run

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

    parts = [read_run(d) for d in find_run_dirs(out)]
    assert {p.run_id for p in parts} == {f"slurm-{job.job_id}"}
    first, second = attempts_of(parts)
    # submitit ignores the requeue's SIGTERM, so attempt 1 trains (and checkpoints) until SLURM's KillWait while its
    # wandb-core, signalled too, is gone: the logger starts a new one, and what that one had not written when
    # SIGKILL came, attempt 2 writes first. Attempt 2 resumes at the last checkpoint attempt 1 saved.
    assert first.ended == "killed" and second.ended == "finished"
    assert first.last_step is not None and first.last_step >= 10
    resumed_at = second.first_step
    assert resumed_at is not None and resumed_at % 5 == 0 and resumed_at >= 10
    steps = {row["trainer/step"] for p in parts for row in p.rows_with("metrics/loss")}
    assert steps == set(range(40))  # no hole: every step attempt 1 logged is in the run, and attempt 2's
    assert parts[-1].exit_code == 0
    # the checkpoints of every part are versions of one artifact
    assert {a.name for p in parts for a in p.artifacts} == {"ckpt"}


# ------------------------------------------------------------------------------------------------------------------
# (d) the sbatch template: srun + torchrun, no submitit
# ------------------------------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


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
    job_id = preempt.sbatch("slurm/train.sbatch", cwd=ROOT, env=env,
                            options=[f"--output={log}", "--job-name=sdxl-test-sbatch"],
                            args=["--steps", "3", "--step-time", "0", "--out-dir", str(out_dir)])
    log = Path(str(log).replace("%j", job_id))
    try:
        end = time.monotonic() + 100
        while preempt.squeue_state(job_id):
            if time.monotonic() > end:
                pytest.fail(f"sbatch job {job_id} not done after 100 s\n{log.read_text() if log.exists() else ''}")
            time.sleep(0.5)
    finally:
        preempt.cancel(job_id)
    text = log.read_text()
    job = preempt.scontrol_job(job_id)
    assert (job.get("JobState"), job.get("ExitCode")) == ("COMPLETED", "0:0"), text
    assert "1 node(s) x 1 worker(s)" in text and "running examples/train.py --steps 3" in text, text
    assert "srun exited with status 0" in text
    (run_dir,) = find_run_dirs(out_dir)
    run = read_run(run_dir)
    assert run.run_id == f"slurm-{job_id}" and run.exit_code == 0
    assert [row["trainer/step"] for row in run.rows_with("metrics/loss")] == [0, 1, 2]


# ------------------------------------------------------------------------------------------------------------------
# (e) preemption: every attempt closed with its mark, no row lost (examples/preemptible_train.py)
# ------------------------------------------------------------------------------------------------------------------
SWEEP_OFFSETS = (0.0, 0.04, 0.08, 0.12, 0.16, 0.2)
"""Seconds between a step's logging call returning and the signal: the row most at risk is the one just logged."""


def _preemptible(tmp_path: Path, steps: int, requeue: bool = True) -> tuple[str, Path]:
    """Submit examples/preemptible_train.py as one srun task; returns (job id, its output folder)."""
    return preempt.submit_preemptible(tmp_path, ROOT / "examples" / "preemptible_train.py", steps=steps,
                                      step_time=0.1, requeue=requeue, job_name="sdxl-test-preempt")


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text and "Exception ignored" not in text, text[-3000:]


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(480)
def test_requeued_at_every_point_of_a_step_each_attempt_closes_and_no_row_is_lost(slurm_cluster: str,
                                                                                  tmp_path: Path) -> None:
    """One job requeued once per signal time, 0-200 ms after a step's logging call returned: SLURM's SIGTERM
    reaches wandb-core too. Every step logged before a signal is in the run, every preempted attempt's last part
    has the preempting mark and an exit record, all parts share the job's run id, and the last attempt finishes."""
    job, out = _preemptible(tmp_path, steps=40)
    signals = preempt.preempt_and_resume(out, job, "requeue", deadline=time.monotonic() + 420,
                                         tries=len(SWEEP_OFFSETS), offset_of=SWEEP_OFFSETS.__getitem__, after_steps=3)
    report = preempt.check(out, signals)
    log = next(tmp_path.glob("slurm-*.out")).read_text()
    assert report.missing == [], report.summary()
    assert report.run_ids == {f"slurm-{job}"}
    states = [(a.state, a.signal, a.last_part_marked, a.last_part_exit) for a in report.attempts]
    assert states == [("preempted", "SIGTERM", True, 1)] * len(SWEEP_OFFSETS) + [("finished", None, False, 0)], log
    _no_traceback(log)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(150)
def test_scancel_term_closes_the_run_with_its_mark_and_every_row(slurm_cluster: str, tmp_path: Path) -> None:
    """A preemption without requeue (``scancel --signal=TERM``): the one attempt's run ends with the preempting mark
    and an exit record, with every step logged before the signal; the task ends by SIGTERM, as it would have."""
    job, out = _preemptible(tmp_path, steps=200, requeue=False)
    sent = preempt.preempt_once(out, job, "term", offset=0.05, deadline=time.monotonic() + 120)
    report = preempt.check(out, [(0, sent)])
    log = next(tmp_path.glob("slurm-*.out")).read_text()
    assert report.missing == [] and len(report.required) >= 5, report.summary()
    [attempt] = report.attempts
    assert (attempt.state, attempt.signal, attempt.last_part_marked, attempt.last_part_exit) == (
        "preempted", "SIGTERM", True, 1), log
    assert "task 0: Terminated" in log
    _no_traceback(log)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_submitit_usr2_closes_the_run_then_submitit_requeues_into_the_same_run(slurm_cluster: str,
                                                                             tmp_path: Path) -> None:
    """submitit's own signal (``scancel -s USR2``) on a 2-task job: the run is closed with its mark before
    submitit's handler checkpoints and requeues; no traceback and no W&B exit-hook error on any task; the next
    attempt continues the same run id and finishes; no row lost."""
    out, folder = tmp_path / "out", tmp_path / "submitit"
    assert main(["submit", str(ROOT / "examples" / "preemptible_train.py"), "--executor", "slurm",
                 "--tasks-per-node", "2", "--folder", str(folder), "--time", "5", "--job-name", "sdxl-test-usr2",
                 "--", str(out), "--steps", "40", "--step-time", "0.1"]) == 0
    job = next(folder.glob("*_submitted.pkl")).name.split("_")[0]
    report = preempt.check(out, preempt.preempt_and_resume(out, job, "usr2", deadline=time.monotonic() + 180))
    errors = "".join(p.read_text() for p in folder.glob("*.err"))
    assert report.missing == [], report.summary()
    assert report.run_ids == {f"slurm-{job}"}
    assert [(a.state, a.signal, a.last_part_marked) for a in report.attempts] == [
        ("preempted", "SIGUSR2", True), ("finished", None, False)], errors
    _no_traceback(errors)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(200)
def test_sbatch_template_usr1_before_the_time_limit_requeues_torchrun_into_the_same_run(
        slurm_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--signal=B:USR1@N`` (sent by hand: ``scancel --batch --signal=USR1``): the template's trap requeues; SLURM's
    SIGTERM reaches torchrun, both workers (twice: torchrun forwards it) and wandb-core. The run is closed with its
    mark, no row is lost, and the requeued job continues the same run id."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "TRAIN_SCRIPT": str(ROOT / "examples" / "preemptible_train.py"), "NPROC_PER_NODE": "2"}
    env.pop("TRAIN_MODULE", None)
    out = tmp_path / "out"
    job = preempt.sbatch("slurm/train.sbatch", cwd=ROOT, env=env, args=[str(out), "--steps", "40"],
                         options=[f"--output={tmp_path}/train-%j.out", "--job-name=sdxl-test-usr1"])
    report = preempt.check(out, preempt.preempt_and_resume(out, job, "batch-usr1", deadline=time.monotonic() + 180))
    log = next(tmp_path.glob("train-*.out")).read_text()
    assert report.missing == [], report.summary()
    assert report.run_ids == {f"slurm-{job}"}
    assert [(a.state, a.signal, a.last_part_marked, a.last_part_exit) for a in report.attempts] == [
        ("preempted", "SIGTERM", True, 1), ("finished", None, False, 0)], log
    assert "USR1: time limit near; requeueing" in log and "srun exited with status 0" in log
    # what docs/slurm.md shows of this run: inspect's attempts, the journal, the parts wandb sync would upload
    assert main(["inspect", str(out / "wandb")]) == 0
    shown = capsys.readouterr().out.splitlines()
    attempts = shown[shown.index(f"attempts of run slurm-{job}: 2"):]
    assert re.fullmatch(r"  1\. \S+: steps 0\.\.\d+, preempted by SIGTERM at step \d+, run closed [\d.]+ s later",
                        attempts[1]), attempts
    assert attempts[-1].endswith("in the run: no gap") and "finished" in attempts[-3], attempts
    assert not list((out / "wandb" / "journal" / f"slurm-{job}").glob("*.rows-*.jsonl"))  # all held: events only
