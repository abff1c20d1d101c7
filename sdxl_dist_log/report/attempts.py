"""One run from several run directories: the attempts of a requeued job, merged into one :class:`MergedRun`.

A requeued SLURM job logs into the same run id again, and offline W&B gives each attempt its own
``offline-run-<time>-<id>`` directory. The report reads them as one run: attempts in start order, their histories
joined, and where a later attempt starts at an earlier training step than the previous one reached (it resumed
from a checkpoint), the later attempt's rows replace the earlier ones from that step on: the curves against the step
show the training that counted. The replaced rows stay, marked :data:`SUPERSEDED_KEY`: the time they ran was real,
so views against wall-clock time (the GPU heatmaps) and the attempts timeline still show every attempt whole.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxl_dist_log.offline.model import OfflineArtifact, OfflineRun
from sdxl_dist_log.offline.rundir import find_run_dirs, read_run
from sdxl_dist_log.runconfig import deep_merge

ATTEMPT_KEY = "_attempt"
"""Key added to every merged history row: the index of the attempt it came from (media files live in its dir)."""
SUPERSEDED_KEY = "_superseded"
"""Key set (True) on a merged row whose step a later attempt logged again."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Attempt:
    """One attempt of a run: one run directory, as read."""

    index: int
    run: OfflineRun
    step_key: str

    def steps(self) -> tuple[float, float] | None:
        """The first and last training step of its rows, or None when no row carries the step key."""
        values = [row[self.step_key] for row in self.run.history if _is_number(row.get(self.step_key))]
        return (min(values), max(values)) if values else None

    @property
    def start(self) -> float | None:
        """Start, seconds since the epoch (the run record's, else the first row's ``_timestamp``)."""
        if self.run.start_time is not None:
            return self.run.start_time
        times = [row["_timestamp"] for row in self.run.history if _is_number(row.get("_timestamp"))]
        return min(times) if times else None


@dataclass
class MergedRun:
    """The attempts of one run id read as one run; see the module docstring for how histories join."""

    attempts: list[Attempt]
    rows: list[dict[str, Any]]
    """History rows of every attempt in order, each with :data:`ATTEMPT_KEY`; replaced ones with
    :data:`SUPERSEDED_KEY` (see the module docstring)."""
    step_key: str
    """The key of the training step (the run's ``step_metric``; ``_step`` when no row carries it)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The attempts' configs, later ones updating earlier ones."""
    artifacts: list[tuple[int, OfflineArtifact]] = field(default_factory=list)
    """``(attempt index, artifact)`` in logging order; versions count distinct digests across all attempts."""

    @property
    def last(self) -> OfflineRun:
        """The latest attempt's run: identity and end state of the run as a whole."""
        return self.attempts[-1].run

    def current_rows(self) -> list[dict[str, Any]]:
        """The rows no later attempt replaced: the training that counted, in order."""
        return [row for row in self.rows if not row.get(SUPERSEDED_KEY)]

    @property
    def run_id(self) -> str:
        """The run id shared by every attempt."""
        return self.last.run_id

    def media_path(self, attempt: int, name: str) -> Path:
        """The file of a media value's ``filenames`` entry, logged in attempt ``attempt``."""
        return self.attempts[attempt].run.path / "files" / name


def load_runs(paths: Sequence[str | os.PathLike[str]]) -> list[OfflineRun]:
    """Read every run that ``paths`` name: run directories, ``.wandb`` files, or folders holding runs.

    Args:
        paths: at least one path; a folder is searched as ``find_run_dirs`` does.

    Returns:
        The runs, each directory read once, in the order found; without their summaries (``read_run(...,
        summary=False)``): the report shows none, and folding them is a third of reading a long run.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: no path given, or a folder holds no run (the message names it).
    """
    if not paths:
        raise ValueError("no run directory given")
    seen: dict[Path, OfflineRun] = {}
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise FileNotFoundError(f"no such run file or directory: {path}")
        targets = [path] if path.is_file() or any(path.glob("*.wandb")) else find_run_dirs(path)
        if not targets:
            raise ValueError(f"{path} holds no run directories (looked for offline-run-*/run-* in it and its wandb/)")
        for target in targets:
            run = read_run(target, summary=False)  # the report shows no summary: skip its fold
            seen.setdefault(run.path.resolve(), run)
    return list(seen.values())


def _mark_superseded(rows: list[dict[str, Any]], step_key: str, first_step: float) -> None:
    for row in rows:
        if _is_number(row.get(step_key)) and row[step_key] >= first_step:
            row[SUPERSEDED_KEY] = True


def merge_attempts(runs: Sequence[OfflineRun]) -> MergedRun:
    """Merge the run directories of one run id into one run, attempts ordered by start time.

    Args:
        runs: the attempts, in any order (from :func:`load_runs`).

    Returns:
        The merged run.

    Raises:
        ValueError: no runs, or runs of several run ids (the message lists each id's directories).
    """
    if not runs:
        raise ValueError("no runs to merge")
    ids: dict[str, list[str]] = {}
    for run in runs:
        ids.setdefault(run.run_id, []).append(str(run.path))
    if len(ids) > 1:
        listing = "; ".join(f"{run_id}: {', '.join(dirs)}" for run_id, dirs in sorted(ids.items()))
        raise ValueError(f"the directories hold {len(ids)} different runs; a report shows one run id ({listing})")
    ordered = sorted(runs, key=lambda r: (r.start_time if r.start_time is not None else float("inf"), r.path.name))
    step_key = ordered[-1].step_metric
    if not any(_is_number(row.get(step_key)) for run in ordered for row in run.history):
        step_key = "_step"
    attempts = [Attempt(index, run, step_key) for index, run in enumerate(ordered)]
    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    digests: dict[str, list[str]] = {}
    artifacts: list[tuple[int, OfflineArtifact]] = []
    for attempt in attempts:
        steps = attempt.steps() if step_key != "_step" else None  # W&B's _step restarts in every offline attempt
        if steps is not None:
            _mark_superseded(rows, step_key, steps[0])
        rows.extend({**row, ATTEMPT_KEY: attempt.index} for row in attempt.run.history)
        config = deep_merge(config, attempt.run.config)
        for artifact in attempt.run.artifacts:
            seen = digests.setdefault(artifact.name, [])
            if artifact.digest not in seen:
                seen.append(artifact.digest)
            artifacts.append((attempt.index, dataclasses.replace(artifact, version_index=seen.index(artifact.digest))))
    return MergedRun(attempts=attempts, rows=rows, step_key=step_key, config=config, artifacts=artifacts)
