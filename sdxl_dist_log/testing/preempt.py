"""Preempt real SLURM jobs and check what their W&B run kept: shared by tests/launch/test_slurm.py and
benchmarks/bench_preemption.py.

The jobs run ``examples/preemptible_train.py``, which writes ``OUT/progress.txt`` on rank 0: one line per step,
``<attempt> <step> <unix time its log_metrics call returned>``. :func:`check` compares those lines with the run's
parts read back from disk (``offline.read_run``) and with the journal: every step whose call returned before its
attempt's signal must be in some part of the run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

SIGNALS = {
    "requeue": ["scontrol", "requeue"],  # what a preemption with requeue does: SIGTERM to every step, job requeued
    "term": ["scancel", "--signal=TERM"],  # a preemption without requeue: SIGTERM to every step
    "usr2": ["scancel", "--signal=USR2"],  # submitit's timeout/preemption signal, to every step
    "batch-usr1": ["scancel", "--batch", "--signal=USR1"],  # what sbatch --signal=B:USR1@N sends to the batch shell
}
"""How each kind of preemption is sent to a job, by name; the job id is appended."""


def squeue_state(job_id: str) -> str:
    """The job's state (``PENDING``, ``RUNNING``, ...), or "" once it has left the queue."""
    done = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip()


def scontrol_job(job_id: str) -> dict[str, str]:
    """The job's fields as ``scontrol show job`` prints them (``JobState``, ``ExitCode``, ``SubmitTime``, ...)."""
    done = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    return dict(item.split("=", 1) for item in done.stdout.split() if "=" in item)


def progress(out: Path) -> list[tuple[int, int, float]]:
    """``(attempt, step, time)`` lines of ``out/progress.txt`` (a torn last line is skipped)."""
    path = Path(out) / "progress.txt"
    lines = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split()
        if len(parts) == 3:
            lines.append((int(parts[0]), int(parts[1]), float(parts[2])))
    return lines


def wait_for(what: str, ready: Any, deadline: float, poll: float = 0.1) -> None:
    """Poll ``ready()`` until true; raise TimeoutError naming ``what`` at ``deadline`` (time.monotonic)."""
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(poll)


def send(job_id: str, how: str) -> float:
    """Send the preemption ``how`` (a key of :data:`SIGNALS`) to the job; returns the time just before sending."""
    sent = time.time()
    subprocess.run([*SIGNALS[how], job_id], check=True, capture_output=True, timeout=30)
    return sent


def release(job_id: str) -> None:
    """Start a requeued job now instead of after SLURM's ~120 s BeginTime hold, once 2 s have passed since the requeue.

    Not sooner: a batch job started in the same second its previous attempt was killed is refused by slurmd ("Job
    credential revoked"), and the job fails instead of running.
    """
    fields = scontrol_job(job_id)
    if fields.get("JobState") != "PENDING":
        return
    try:
        requeued = datetime.fromisoformat(fields.get("SubmitTime", "")).timestamp()
    except ValueError:
        return
    if time.time() - requeued >= 2:
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, timeout=30)


def signal_at(out: Path, job_id: str, how: str, *, attempt: int, after_steps: int, offset: float,
              deadline: float) -> float:
    """Once ``attempt`` has logged ``after_steps`` steps, send ``how`` ``offset`` seconds after its last step's call
    returned; returns the sending time."""
    def ready() -> bool:
        return sum(1 for a, _, _ in progress(out) if a == attempt) >= after_steps

    wait_for(f"attempt {attempt} to log {after_steps} steps", ready, deadline, poll=0.02)
    last = max(t for a, _, t in progress(out) if a == attempt)
    time.sleep(max(0.0, last + offset - time.time()))
    return send(job_id, how)


def preempt_once(out: Path, job_id: str, how: str, *, offset: float, deadline: float, after_steps: int = 5) -> float:
    """A preemption without requeue: signal attempt 0 (as :func:`signal_at`), then wait for the job to end. Cancels
    the job whatever happens; returns the sending time."""
    try:
        sent = signal_at(out, job_id, how, attempt=0, after_steps=after_steps, offset=offset, deadline=deadline)
        wait_for("the job to end", lambda: squeue_state(job_id) == "", deadline, poll=0.5)
    finally:
        cancel(job_id)
    return sent


def preempt_and_resume(out: Path, job_id: str, how: str, *, deadline: float, tries: int = 1,
                       offset_of: Callable[[int], float] = lambda attempt: 0.05,
                       after_steps: int = 5) -> list[tuple[int, float]]:
    """Signal attempts 0 .. ``tries`` - 1 in turn (each as :func:`signal_at`, ``offset_of(attempt)`` after its last
    step), start each requeued job at once and wait for the next attempt to log; then wait for the job to end.
    Cancels the job whatever happens.

    Returns:
        (attempt, sending time) of every signal, for :func:`check`.
    """
    signals = []
    try:
        for attempt in range(tries):
            signals.append((attempt, signal_at(out, job_id, how, attempt=attempt, after_steps=after_steps,
                                               offset=offset_of(attempt), deadline=deadline)))
            wait_for(f"attempt {attempt + 1}", lambda a=attempt + 1: (release(job_id) or True) and any(
                n == a for n, _, _ in progress(out)), deadline, poll=0.3)
        wait_for("the job to end", lambda: squeue_state(job_id) == "", deadline, poll=0.5)
    finally:
        cancel(job_id)
    return signals


@dataclass
class AttemptReport:
    """How one attempt of a run ended, from its journal."""

    name: str
    state: str
    """"finished", "preempted", "lost" (no W&B service could be had), or "killed" (no close was journaled)."""
    signal: str | None
    parts: int
    close_s: float | None
    """Seconds from the signal reaching the logger to the run closed (journal times)."""
    closed_at: float | None = None
    """When the run closed (unix time, the journal's), for the time from the signal's command to the close."""
    index: int = 0
    """The attempt's place in its run, from 0."""
    last_part_marked: bool = False
    """The attempt's last part has the preempting mark."""
    last_part_exit: int | None = None
    """The exit code recorded in the attempt's last part; None without an exit record."""


@dataclass
class Report:
    """What a preempted job's run kept."""

    run_ids: set[str]
    required: set[int]
    """Steps whose logging call returned before their attempt's signal, and every step of a finished attempt."""
    in_run: Counter[int]
    """Step -> how many parts hold a row of it."""
    attempts: list[AttemptReport] = field(default_factory=list)
    parts: int = 0
    closed_with_mark: int = 0
    """Parts with the preempting mark and an exit record (how a run without a journal, plain wandb's, tells)."""

    @property
    def missing(self) -> list[int]:
        """Required steps no part of the run holds: must be empty."""
        return sorted(self.required - set(self.in_run))

    def summary(self) -> str:
        closes = [a.close_s for a in self.attempts if a.close_s is not None]
        bound = f", signal -> closed run {min(closes):.2f}..{max(closes):.2f} s" if closes else ""
        return (f"{len(self.required)} steps logged before a signal or at the end, {len(self.missing)} missing; "
                f"{len(self.attempts)} attempts in {self.parts} parts{bound}")


def check(out: Path, signals: Sequence[tuple[int, float]]) -> Report:
    """Compare the steps ``examples/preemptible_train.py`` logged under ``out`` with its run's parts and journal.

    Args:
        out: the script's output folder.
        signals: ``(attempt, time the signal was sent)`` for every preempted attempt; a later attempt counts as
            finished (all its steps are required).
    """
    from sdxl_dist_log.journal import journal_root, read_attempts
    from sdxl_dist_log.offline import find_run_dirs, read_run

    sent = dict(signals)
    required = {step for attempt, step, returned in progress(out)
                if attempt not in sent or returned < sent[attempt]}
    runs = [read_run(d, summary=False) for d in find_run_dirs(Path(out) / "wandb")]
    in_run: Counter[int] = Counter()
    for run in runs:
        in_run.update({int(row["trainer/step"]) for row in run.rows_with("metrics/loss")})
    report = Report({r.run_id for r in runs}, required, in_run, parts=len(runs),
                    closed_with_mark=sum(r.preempting and r.finished for r in runs))
    by_dir = {run.path.resolve(): run for run in runs}
    for run_id in report.run_ids:
        for index, log in enumerate(read_attempts(journal_root(Path(out) / "wandb", run_id))):
            closed, signal, parts = log.last("closed"), log.first("signal"), log.all("part")
            last = by_dir.get(Path(parts[-1]["run_file"]).parent.resolve()) if parts else None
            report.attempts.append(AttemptReport(
                log.name, closed["state"] if closed else "killed", signal["signal"] if signal else None, len(parts),
                log.close_s, closed_at=closed["time"] if closed else None, index=index,
                last_part_marked=bool(last and last.preempting), last_part_exit=last and last.exit_code))
    return report


def submit_preemptible(folder: Path, script: str | Path, *, steps: int, step_time: float, requeue: bool,
                       job_name: str, env: dict[str, str] | None = None) -> tuple[str, Path]:
    """Submit ``script`` (``examples/preemptible_train.py`` or a script with its arguments) as one srun task, its
    output under ``folder/out`` and SLURM's log in ``folder/slurm-<job>.out``; returns (job id, output folder)."""
    out = Path(folder) / "out"
    batch = Path(folder) / "job.sh"
    batch.write_text(f"#!/bin/bash\n#SBATCH --{'requeue' if requeue else 'no-requeue'}\n#SBATCH --open-mode=append\n"
                     f"#SBATCH --output={folder}/slurm-%j.out\n#SBATCH --job-name={job_name}\n"
                     f"srun {sys.executable} {script} {out} --steps {steps} --step-time {step_time}\n")
    return sbatch(str(batch), cwd=Path(folder), env=env), out


def sbatch(script: str, *, cwd: Path, env: dict[str, str] | None = None, options: Sequence[str] = (),
           args: Sequence[str] = ()) -> str:
    """Submit a batch script with sbatch ``options`` and script ``args``; returns the job id."""
    done = subprocess.run(["sbatch", "--parsable", *options, script, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=30, check=True)
    return done.stdout.strip().split(";")[0]


def cancel(job_id: str) -> None:
    """Cancel the job (best effort), e.g. when a test fails halfway."""
    subprocess.run(["scancel", job_id], capture_output=True, timeout=30)


__all__ = ["SIGNALS", "AttemptReport", "Report", "cancel", "check", "preempt_and_resume", "preempt_once", "progress",
           "release", "sbatch", "scontrol_job", "send", "signal_at", "squeue_state", "submit_preemptible", "wait_for"]
