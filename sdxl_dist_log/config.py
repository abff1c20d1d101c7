"""Configuration values: frozen keyword-only dataclasses, validated when constructed.

The field names are those W&B users know from ``wandb.init`` and from the SDXL training scripts' logging configs;
the distributed and lifecycle settings come after them. ``from_dict`` rejects unknown keys, naming them and the
known ones. A config never changes once built: derive a variant with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sdxl_dist_log.errors import ConfigError

_T = TypeVar("_T")

MODES = ("online", "offline", "disabled")
FALLBACK_MODES = ("offline", "disabled")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_STEP_METRIC = "trainer/step"
"""The key that carries the training step in every row, unless ``WandbConfig.step_metric`` names another."""


def _check_choice(owner: str, name: str, value: object, allowed: Sequence[object]) -> None:
    if value not in allowed:
        raise ConfigError(f"{owner}.{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _check_number(owner: str, name: str, value: object, *, minimum: float, inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}.{name}={value!r} must be a finite number")
    if value < minimum or (not inclusive and value == minimum):
        bound = ">=" if inclusive else ">"
        raise ConfigError(f"{owner}.{name}={value!r} must be {bound} {minimum}")


def _from_dict(cls: type[_T], values: Mapping[str, Any]) -> _T:
    known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no field {', '.join(map(repr, unknown))}; known fields: {', '.join(known)}"
        )
    return cls(**values)


@dataclass(frozen=True, slots=True, kw_only=True)
class WandbConfig:
    """Settings of the W&B run and of the rank-aware logging around it."""

    project: str = "sdxl-training"
    """W&B project name."""
    name: str | None = None
    """Run name; derived from the launch when None (see docs/naming.md)."""
    entity: str | None = None
    """W&B entity (team or user); W&B's default when None."""
    tags: list[str] = field(default_factory=list)
    """Run tags."""
    notes: str | None = None
    """Run notes."""
    group: str | None = None
    """Group of related runs; derived from the launch (SLURM job, torchrun run id) when None."""
    job_type: str | None = None
    """Job type; derived from the launcher ("train-torchrun", "train-slurm", ...) when None."""
    dir: str = "outputs/wandb"
    """Directory under which W&B writes ``wandb/<run>``."""
    resume: bool | str = False
    """False, True ("allow"), or one of W&B's strings: "allow", "must", "never", "auto"."""
    reinit: bool = False
    """Allow several runs in one process (finishes the previous one)."""
    mode: str = "online"
    """"online", "offline" or "disabled"."""
    run_id: str | None = None
    """Explicit run id; otherwise derived from the SLURM job (stable across requeues) or generated."""
    sync_tensorboard: bool = False
    """Sync TensorBoard logs."""
    save_code: bool = True
    """Save a code snapshot."""
    save_requirements: bool = True
    """Save the pip requirements (``requirements.txt`` in the run's files)."""
    log_model: bool = True
    """Upload checkpoints with ``log_model``; False makes it a no-op."""
    log_checkpoints: bool = True
    """Upload intermediate checkpoints (any ``log_model`` call without the "best"/"final" alias)."""
    checkpoint_prefix: str = "ckpt"
    """Artifact name prefix for checkpoints: every ``log_model`` call is a version of the artifact ``<prefix>``."""
    sample_prefix: str = "sample"
    """Key prefix for image samples: images land under ``<prefix>/images``."""
    max_images_to_log: int = 16
    """Most images per ``log_images`` call, over all ranks together (a fair share per rank)."""
    image_value_range: tuple[float, float] = (0.0, 1.0)
    """Range of float images; (-1, 1) for diffusion outputs. Values outside are clamped, never wrapped."""
    metric_prefix: str = "metrics/"
    """Prefix added to every metric key; "" turns it off."""
    metric_reduce: dict[str, str] = field(default_factory=dict)
    """Reduce op per metric key or glob ("tokens/*": "sum"); keys it does not cover are averaged over ranks.
    Ops: mean, sum, min, max, per_rank (every rank's value as ``<key>/rank<r>``), local (the primary's value)."""
    log_system_metrics: bool = True
    """Sample GPU/CPU/memory/disk figures on every node in the background."""
    system_metrics_interval: float = 60.0
    """Seconds between system samples."""
    system_metrics_aggregate_only: bool = False
    """Log only cluster-wide min/mean/max of system figures (for jobs of hundreds of GPUs)."""
    primary_rank: int = 0
    """The rank that owns the W&B run and uploads artifacts."""
    collective_timeout: float = 300.0
    """Seconds a logging collective waits for every rank before raising ``CollectiveTimeoutError``."""
    strict_keys: bool = False
    """Raise on every rank when ranks pass different metric keys, instead of logging their union."""
    straggler_threshold: float = 1.5
    """A rank counts as a straggler in a section (``WandbLogger.section``) when its time is at least this many times
    the median rank's (> 1)."""
    straggler_patience: int = 3
    """Logging calls in a row the same rank must be the slowest of a section, above ``straggler_threshold``, before a
    warning names it with its host and GPU (>= 1)."""
    async_metrics: bool = False
    """Run logging collectives on a background thread; the training thread never waits for them."""
    init_timeout: float = 60.0
    """Seconds the primary waits for an online ``wandb.init`` before falling back."""
    fallback_mode: str = "offline"
    """What an online run that cannot start becomes: "offline" or "disabled"."""
    finish_timeout: float = 60.0
    """Upper bound in seconds for ``finish()``: draining queued logging and closing the run."""
    flush_interval: float = 0.5
    """Seconds between flushes of the run file, so a killed job loses at most about this much."""
    step_metric: str = DEFAULT_STEP_METRIC
    """Key that carries the training step in every row; W&B plots against it (see docs/quickstart.md)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Initial run config (the training hyper-parameters)."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_choice(owner, "mode", self.mode, MODES)
        _check_choice(owner, "fallback_mode", self.fallback_mode, FALLBACK_MODES)
        if not isinstance(self.project, str) or not self.project:
            raise ConfigError(f"{owner}.project must be a non-empty string, got {self.project!r}")
        if isinstance(self.resume, str):
            _check_choice(owner, "resume", self.resume, ("allow", "must", "never", "auto"))
        elif not isinstance(self.resume, bool):
            raise ConfigError(f"{owner}.resume={self.resume!r} must be a bool or one of 'allow', 'must', 'never', 'auto'")
        if isinstance(self.tags, str) or not all(isinstance(t, str) for t in self.tags):
            raise ConfigError(f"{owner}.tags must be a list of strings, got {self.tags!r}")
        object.__setattr__(self, "tags", list(self.tags))  # frozen: the one normalisation at construction
        if isinstance(self.max_images_to_log, bool) or not isinstance(self.max_images_to_log, int):
            raise ConfigError(f"{owner}.max_images_to_log={self.max_images_to_log!r} must be an integer")
        _check_number(owner, "max_images_to_log", self.max_images_to_log, minimum=0)
        _check_number(owner, "system_metrics_interval", self.system_metrics_interval, minimum=0, inclusive=False)
        for name in ("collective_timeout", "init_timeout", "finish_timeout", "flush_interval"):
            _check_number(owner, name, getattr(self, name), minimum=0, inclusive=False)
        _check_number(owner, "primary_rank", self.primary_rank, minimum=0)
        _check_number(owner, "straggler_threshold", self.straggler_threshold, minimum=1, inclusive=False)
        if isinstance(self.straggler_patience, bool) or not isinstance(self.straggler_patience, int):
            raise ConfigError(f"{owner}.straggler_patience={self.straggler_patience!r} must be an integer")
        _check_number(owner, "straggler_patience", self.straggler_patience, minimum=1)
        low, high = self.image_value_range
        if not low < high:
            raise ConfigError(f"{owner}.image_value_range={self.image_value_range!r} must be (low, high) with low < high")
        object.__setattr__(self, "image_value_range", (float(low), float(high)))
        from sdxl_dist_log.metrics import MetricValueError, resolve_reduce

        try:
            resolve_reduce(list(self.metric_reduce), self.metric_reduce)
        except MetricValueError as exc:
            raise ConfigError(f"{owner}.metric_reduce: {exc}") from None
        if not self.step_metric:
            raise ConfigError(f"{owner}.step_metric must be a non-empty key")

    @property
    def wandb_resume(self) -> str | None:
        """The ``resume`` argument for ``wandb.init``."""
        if self.resume is True:
            return "allow"
        if self.resume is False:
            return None
        return self.resume

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> WandbConfig:
        """Build from a mapping (a YAML section, say), rejecting unknown keys.

        Raises:
            ConfigError: a key is unknown (the message lists the known fields) or a value is invalid.
        """
        return _from_dict(cls, values)


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    """Settings of the console/file logger ``UnifiedLogger``."""

    name: str = "sdxl"
    """Logger name; also the stem of the log files."""
    level: str = "INFO"
    """Level of the console and file handlers."""
    log_dir: str = "outputs/logs"
    """Directory of the text log and the metrics JSONL; one file per rank (``<name>.rank<r>.log``)."""
    console: bool = True
    """Write to stderr."""
    file: bool = True
    """Write the text log file."""
    metrics_file: bool = True
    """Write ``log_metrics`` rows to ``<name>.rank<r>.metrics.jsonl`` beside the text log."""
    all_ranks_console: bool = False
    """Let every rank write INFO to the console; by default non-primary ranks print WARNING and above only."""
    progress: bool = True
    """Show a progress bar (primary rank only)."""
    primary_rank: int = 0
    """The rank that prints INFO and shows the progress bar."""
    progress_interval: float = 30.0
    """Seconds between progress lines when stderr is not a terminal (a log file, a SLURM ``.out``): there the bar
    gives way to one plain line per interval, so no line holds carriage-return redraws."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if isinstance(self.level, str):
            object.__setattr__(self, "level", self.level.upper())
        _check_choice(owner, "level", self.level, LOG_LEVELS)
        if not self.name:
            raise ConfigError(f"{owner}.name must be a non-empty string")
        _check_number(owner, "primary_rank", self.primary_rank, minimum=0)
        _check_number(owner, "progress_interval", self.progress_interval, minimum=0)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LogConfig:
        """Build from a mapping, rejecting unknown keys (the message lists the known fields)."""
        return _from_dict(cls, values)
