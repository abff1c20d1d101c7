"""What a decoded offline run is: :class:`OfflineRun`, :class:`OfflineArtifact`, and how keys are named and flattened.

Plain data and pure functions; nothing here reads files or imports wandb.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxl_dist_log.config import DEFAULT_STEP_METRIC
from sdxl_dist_log.identity import recorded

KEY_SEP = "/"
"""Separator joining the parts of a nested key, ``{"a": {"b": 1}}`` -> ``"a/b"``."""
SYSTEM_PREFIX = "system/"
"""Prefix of the system-metric keys (``system/gpu0/util``) that the logger writes into history rows."""


def is_media(value: Any) -> bool:
    """True for a W&B media value (a dict with ``_type``, e.g. ``images/separated``), kept whole when flattening."""
    return isinstance(value, dict) and "_type" in value


def flatten(tree: Mapping[str, Any], sep: str = KEY_SEP, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``sep``-joined keys, keeping media dicts (those with ``_type``) as single values.

    Args:
        tree: a nested mapping.
        sep: the separator between key parts.
        prefix: prepended to every key.

    Returns:
        A flat dict; an empty nested dict disappears.

    Example:
        >>> flatten({"a": {"b": 1}, "img": {"_type": "images/separated", "count": 2}})
        {'a/b': 1, 'img': {'_type': 'images/separated', 'count': 2}}
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not is_media(value):
            out.update(flatten(value, sep, name + sep))
        else:
            out[name] = value
    return out


@dataclass
class OfflineArtifact:
    """One ``run.log_artifact`` call as an offline run recorded it (an ``artifact`` record).

    Offline records carry no server version numbers: ``version_index`` counts the distinct digests logged under
    this name in this run (0, 1, ...), which equals the server's ``v<N>`` only for a new artifact collection.
    """

    name: str
    type: str
    aliases: list[str]
    """Sorted (wandb keeps them as a set, so the recorded order varies); ``latest`` is added by wandb itself."""
    metadata: dict[str, Any]
    digest: str
    files: list[str]
    """Paths inside the artifact (manifest entries), sorted."""
    description: str = ""
    size: int = 0
    """Sum of the manifest entries' sizes in bytes."""
    version_index: int = 0
    tags: list[str] = field(default_factory=list)

    @property
    def local_version(self) -> str:
        """``v<version_index>``: the version within this run (see the class docstring)."""
        return f"v{self.version_index}"


@dataclass
class OfflineRun:
    """An offline W&B run decoded from its ``.wandb`` file and ``files/`` directory; see ``read_run``."""

    path: Path
    """The run directory (``.../offline-run-<time>-<id>``)."""
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """Config values as logged (JSON-decoded, nested dicts kept nested); W&B's own ``_wandb`` entry dropped."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per history row: ``"metrics/loss"``-style keys (nested keys joined with ``/``), ``_step``,
    ``_runtime``, ``_timestamp``; media values stay whole dicts with ``_type``."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The final summary, flattened like history rows; ``_wandb`` dropped."""
    artifacts: list[OfflineArtifact] = field(default_factory=list)
    media_files: list[str] = field(default_factory=list)
    """Files under ``files/media``, relative to ``files/`` (``media/images/...``), sorted."""
    exit_code: int | None = None
    """The exit record's code; None without an exit record (the run is live or was killed)."""
    truncated: bool = False
    """True when the ``.wandb`` file ends in a cut or corrupt tail."""
    truncation_reason: str | None = None
    record_counts: dict[str, int] = field(default_factory=dict)
    """Number of records by ``Record`` oneof name (``history``, ``summary``, ``artifact``, ...)."""
    wandb_file: Path | None = None
    start_time: float | None = None
    """Run start, seconds since the epoch."""
    runtime: int | None = None
    """Seconds, from the exit record."""
    wandb_version: str = ""
    """``producer`` of the header record (the writing wandb version)."""
    telemetry: dict[str, Any] = field(default_factory=dict)
    """The last telemetry record: ``features`` (names set true), ``python_version``, ``cli_version``, ..."""
    environment: dict[str, Any] = field(default_factory=dict)
    """The environment record's non-empty fields (os, python, host, program, args, gpu, ...)."""
    files: list[str] = field(default_factory=list)
    """Paths named by ``files`` records (relative to ``files/``), in order, without repeats."""
    stats: list[dict[str, Any]] = field(default_factory=list)
    """wandb's own system-metric samples (``stats`` records): ``_timestamp`` plus its keys."""
    preempting: bool = False
    """True when the run recorded ``mark_preempting()``."""

    @property
    def step_metric(self) -> str:
        """The key that carries the training step in this run's rows, as the logger recorded it in the config.

        ``config["sdxl_dist_log"]["step_metric"]`` (``WandbConfig.step_metric`` of the writing logger); a run
        without that entry (written by plain wandb, or before the logger recorded it) gets ``"trainer/step"``.

        Example:
            >>> OfflineRun(Path("."), config={"sdxl_dist_log": {"step_metric": "global_step"}}).step_metric
            'global_step'
            >>> OfflineRun(Path(".")).step_metric
            'trainer/step'
        """
        value = recorded(self.config, "step_metric")
        return value if isinstance(value, str) and value else DEFAULT_STEP_METRIC

    @property
    def finished(self) -> bool:
        """True when the run has an exit record (``finish`` ran)."""
        return self.exit_code is not None

    @property
    def end_state(self) -> str:
        """How this recording of the run ended, from its records.

        ``"preempted"`` when it recorded ``mark_preempting()`` (the logger's preemption handler does, then finishes
        with code 1), else ``"finished"`` for exit code 0, ``"failed"`` for another exit code, and ``"killed"``
        without an exit record (killed, or still running: the file alone cannot tell).

        Example:
            >>> OfflineRun(Path("."), exit_code=1, preempting=True).end_state, OfflineRun(Path(".")).end_state
            ('preempted', 'killed')
        """
        if self.preempting:
            return "preempted"
        if self.exit_code is None:
            return "killed"
        return "finished" if self.exit_code == 0 else "failed"

    @property
    def end_time(self) -> float | None:
        """When the recording ended, seconds since the epoch: start plus the exit record's runtime, or the last
        ``_timestamp`` of a history row when later (a killed run has no exit record); None when neither is known."""
        times = [row["_timestamp"] for row in self.history if isinstance(row.get("_timestamp"), (int, float))]
        if self.start_time is not None and self.runtime is not None:
            times.append(self.start_time + self.runtime)
        return max(times) if times else self.start_time

    def keys(self) -> list[str]:
        """All history keys, sorted."""
        return sorted({key for row in self.history for key in row})

    def step_values(self, key: str | None = None) -> list[float]:
        """The training step of every history row that carries a numeric one, in order (``step_metric`` when
        ``key`` is None)."""
        key = key or self.step_metric
        return [row[key] for row in self.history if isinstance(row.get(key), (int, float))]

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        """The history rows that contain ``key``, in order."""
        return [row for row in self.history if key in row]

    def column(self, key: str) -> list[tuple[int, Any]]:
        """``(step, value)`` for each history row holding ``key``; step is ``_step``, else the row's index.

        Example:
            >>> OfflineRun(Path("."), history=[{"_step": 3, "a": 1.0}, {"_step": 4}]).column("a")
            [(3, 1.0)]
        """
        out = []
        for index, row in enumerate(self.history):
            if key in row:
                step = row.get("_step", index)
                out.append((step if isinstance(step, int) else index, row[key]))
        return out

    def artifact_versions(self, name: str) -> list[OfflineArtifact]:
        """The artifacts logged under ``name`` (without ``:version``), in logging order."""
        return [a for a in self.artifacts if a.name == name]
