"""A run across its attempts: which parts each attempt wrote, its step range, how it ended, and gaps in the steps.

A requeued job is one W&B run (one run id) written by several attempts, and an attempt can write more than one part
(``offline-run-*`` directory): a new part each time its W&B service died. The logger's journal
(``<WandbConfig.dir>/journal/<run id>/``, see ``sdxl_dist_log.journal``) says which parts belong to which
attempt and how each attempt ended; without a journal (a run written by plain wandb), each part counts as an attempt
and its end is read from its file (exit record, preempting mark).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sdxl_dist_log.journal import AttemptLog, journal_root, read_attempts, step_range
from sdxl_dist_log.offline.model import OfflineRun


@dataclass
class Attempt:
    """One attempt of a run (one logger's life on the primary rank)."""

    name: str
    parts: list[Path] = field(default_factory=list)
    """The run directories it wrote, in order."""
    first_step: float | None = None
    last_step: float | None = None
    ended: str = "killed"
    """"finished", "preempted", "failed" (a nonzero exit), "lost" (no W&B service could be had to close it), or
    "killed" (it never closed its run: SIGKILL, out of memory, a node failure)."""
    signal: str | None = None
    """The preemption signal it received (SIGTERM, SIGUSR2, ...), if any."""
    signal_step: int | None = None
    """The last step it had logged when the signal came."""
    close_s: float | None = None
    """Seconds from the signal to the closed run."""
    taken_over_by: str | None = None
    """The later attempt that wrote what this one's parts did not hold."""
    taken_over: int = 0
    """How many entries that later attempt wrote for it."""

    def describe(self) -> str:
        """How it ended, in words: ``preempted by SIGTERM at step 11, run closed 0.32 s later``."""
        steps = f"steps {_num(self.first_step)}..{_num(self.last_step)}" if self.first_step is not None else "no steps"
        if self.ended == "finished":
            how = "finished"
        elif self.signal:
            how = f"preempted by {self.signal} at step {self.signal_step}"
            if self.ended == "preempted" and self.close_s is not None:
                how += f", run closed {self.close_s:.2f} s later"
            elif self.ended != "preempted":
                how += f", {'killed before its run was closed' if self.ended == 'killed' else self.ended}"
        else:
            how = self.ended
        later = f"; {self.taken_over} entries written later by {self.taken_over_by}" if self.taken_over else ""
        return f"{steps}, {how}{later}"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _from_journal(log: AttemptLog, logs: Sequence[AttemptLog]) -> Attempt:
    first, last = step_range(log)
    attempt = Attempt(log.name, first_step=first, last_step=last)
    attempt.parts = [Path(p["run_file"]).parent for p in log.all("part") if p.get("run_file")]
    closed, signal = log.last("closed"), log.first("signal")
    if signal is not None:
        attempt.signal, attempt.signal_step = signal.get("signal"), signal.get("step")
    if closed is not None:
        state = closed.get("state", "killed")
        attempt.ended = "failed" if state == "finished" and closed.get("exit_code") else state
        if signal is not None:
            attempt.close_s = round(log.close_s, 3)
    for later in logs:
        for taken in later.all("took_over"):
            if taken.get("attempt") == log.name:
                attempt.taken_over_by, attempt.taken_over = later.name, int(taken.get("entries", 0))
                steps = [s for s in taken.get("steps") or [] if isinstance(s, (int, float))]  # its entries are gone
                attempt.first_step = min([*steps, *([first] if first is not None else [])], default=None)
                attempt.last_step = max([*steps, *([last] if last is not None else [])], default=None)
    return attempt


def _from_part(run: OfflineRun) -> Attempt:
    steps = run.step_values()
    ended = "killed" if run.exit_code is None else run.end_state  # a mark without an exit record: killed
    return Attempt(run.path.name, [run.path], min(steps, default=None), max(steps, default=None), ended,
                   signal="a signal" if run.preempting else None)


def attempts_of(runs: Sequence[OfflineRun]) -> list[Attempt]:
    """The attempts of the run these parts belong to (all of one run id), oldest first.

    Args:
        runs: parts of one run, from ``read_run``; the journal beside them (``<dir>/journal/<run id>``, where the
            parts are ``<dir>/wandb/*-<run id>``) is read when there is one.
    """
    if not runs:
        return []
    root = journal_root(runs[0].path.parent.parent, runs[0].run_id)
    logs = read_attempts(root)
    if not logs:
        return [_from_part(run) for run in runs]
    return [_from_journal(log, logs) for log in logs]


def step_gaps(steps: Sequence[float]) -> list[tuple[float, float]]:
    """Ranges of steps missing from ``steps``, judged by the usual stride between logged steps.

    Example:
        >>> step_gaps([0, 1, 2, 5, 6])
        [(3, 4)]
        >>> step_gaps([0, 10, 20, 50])
        [(30, 40)]
    """
    ordered = sorted(set(steps))
    strides = Counter(b - a for a, b in zip(ordered, ordered[1:]))
    if not strides:
        return []
    stride = strides.most_common(1)[0][0]
    return [(a + stride, b - stride) for a, b in zip(ordered, ordered[1:]) if b - a > stride]


def tells_more(runs: Sequence[OfflineRun], attempts: Sequence[Attempt]) -> bool:
    """Whether ``format_attempts`` says more than the parts' own summaries: there are several parts or attempts, or
    the one attempt did not finish (killed, preempted, failed)."""
    return len(runs) > 1 or len(attempts) > 1 or any(len(a.parts) > 1 or a.ended != "finished" for a in attempts)


def format_attempts(runs: Sequence[OfflineRun], attempts: Sequence[Attempt] | None = None) -> str:
    """The per-attempt part of ``sdxl-dist-log inspect``: each attempt's step range, how it ended, its parts (rows,
    mark, exit), and the gaps in the steps of the whole run.

    Args:
        runs: parts of one run (one run id), from ``read_run``; parts named by the journal but not given are read.
        attempts: ``attempts_of(runs)``, where the caller has it already.
    """
    from sdxl_dist_log.offline.rundir import read_run

    attempts = attempts_of(runs) if attempts is None else attempts
    known = {run.path.resolve(): run for run in runs}
    lines = [f"attempts of run {runs[0].run_id}: {len(attempts)}"]
    steps: list[float] = []
    for index, attempt in enumerate(attempts, 1):
        lines.append(f"  {index}. {attempt.name}: {attempt.describe()}")
        for path in attempt.parts:
            run = known.get(path.resolve())
            if run is None and path.is_dir():
                try:
                    run = known[path.resolve()] = read_run(path, summary=False)  # the summary is not shown
                except (OSError, ValueError):
                    run = None
            if run is None:
                lines.append(f"       {path.name}: missing")
                continue
            rows = run.step_values()
            steps += rows
            end = "no exit record" if run.exit_code is None else f"exit {run.exit_code}"
            lines.append(f"       {path.name}: {len(rows)} rows{', preempting' if run.preempting else ''}, {end}")
    named = {p.resolve() for a in attempts for p in a.parts}
    for run in runs:  # parts no journal names (written by plain wandb) still count for the gaps
        if run.path.resolve() not in named:
            steps += run.step_values()
    if steps:
        gaps = step_gaps(steps)
        text = ", ".join(f"{_num(a)}..{_num(b)}" for a, b in gaps) if gaps else "no gap"
        lines.append(f"  steps {_num(min(steps))}..{_num(max(steps))} in the run: {text}")
    return "\n".join(lines)


__all__ = ["Attempt", "attempts_of", "format_attempts", "step_gaps", "tells_more"]
