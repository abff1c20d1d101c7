"""Who the run is: run id, name, group and job_type of a launch, as pure functions of the config and the launch.

Rules (docs/naming.md):
- group: ``WandbConfig.group``; else ``SDXL_DIST_LOG_GROUP``; else the SLURM array (``slurm-array-<array job id>``)
  so that the tasks of an array group together; else the SLURM job (``slurm-<job id>``); else torchrun's rendezvous
  id (``torchrun-<run id>``); else none.
- job_type: ``WandbConfig.job_type``; else ``SDXL_DIST_LOG_JOB_TYPE``; else ``train-<launcher>``.
- run id: ``WandbConfig.run_id``; else ``SDXL_DIST_LOG_RUN_ID``; else derived from the SLURM job and array task, so
  a requeued job (same job id) resumes its run; else a fresh random id chosen by the primary and broadcast.
- name: ``WandbConfig.name``; else the run id.

The environment reaches these functions only as a ``Launch`` value (``ranks.py``), read once.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.ranks import Launch

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
CONFIG_SECTION = "sdxl_dist_log"
"""The run config key under which the logger records the launch (world size, nodes, job id, step metric, ...)."""


@dataclass(frozen=True, slots=True)
class RunIdentity:
    """Who the run is: decided on the primary, broadcast to every rank at start.

    Attributes:
        run_id: W&B run id (stable across SLURM requeues of one job).
        name: display name.
        group: W&B group (one per launch or experiment).
        job_type: W&B job type.
        mode: the mode the run really has: "online", "offline" or "disabled" (after any fallback).
        run_dir: the run's directory on the primary's filesystem, or None.
        fallback_reason: why the run is not in the mode asked for, or None.
        tags: the run's tags.
    """

    run_id: str
    name: str
    group: str | None
    job_type: str | None
    mode: str = "offline"
    run_dir: str | None = None
    fallback_reason: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (tags as a list), for the broadcast to every rank."""
        values = asdict(self)
        values["tags"] = list(self.tags)
        return values

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunIdentity:
        """The inverse of ``to_json``."""
        values = dict(data)
        values["tags"] = tuple(values.get("tags") or ())
        return cls(**values)


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "run"


def derive_group(config: WandbConfig, launch: Launch) -> str | None:
    """The W&B group of this launch (see the module docstring for the rules)."""
    if config.group:
        return config.group
    if launch.group:
        return launch.group
    if launch.slurm_array_job_id:
        return f"slurm-array-{launch.slurm_array_job_id}"
    if launch.slurm_job_id:
        return f"slurm-{launch.slurm_job_id}"
    if launch.rendezvous_id:
        return f"torchrun-{_safe(launch.rendezvous_id)}"
    return None


def derive_job_type(config: WandbConfig, launch: Launch) -> str:
    """The W&B job_type of this launch."""
    return config.job_type or launch.job_type or f"train-{launch.rank.launcher}"


def derive_run_id(
    config: WandbConfig, launch: Launch, *, random_id: Callable[[], str] = lambda: secrets.token_hex(4)
) -> tuple[str, bool]:
    """The run id, and whether it is stable across restarts of the same job (then the run is resumed).

    Args:
        random_id: makes the id of a launch that has no stable one (tests pass a fixed one).

    Returns:
        (run id, stable): stable is True for explicit ids and ids derived from the SLURM job.
    """
    if config.run_id:
        return _safe(config.run_id), True
    if launch.run_id:
        return _safe(launch.run_id), True
    if launch.slurm_array_job_id and launch.slurm_array_task_id:
        return f"slurm-{_safe(launch.slurm_array_job_id)}-{_safe(launch.slurm_array_task_id)}", True
    if launch.slurm_job_id:
        return f"slurm-{_safe(launch.slurm_job_id)}", True
    return random_id(), False


def resume_mode(config: WandbConfig, stable_id: bool) -> str | None:
    """W&B's ``resume`` argument: the config's, or "allow" for stable ids so a requeued job continues its run."""
    explicit = config.wandb_resume
    if explicit is not None:
        return explicit
    return "allow" if stable_id else None


def propose_identity(config: WandbConfig, launch: Launch) -> tuple[RunIdentity, str | None]:
    """The identity the primary asks W&B for, and the ``resume`` argument that goes with it."""
    run_id, stable = derive_run_id(config, launch)
    proposed = RunIdentity(
        run_id=run_id,
        name=config.name or run_id,
        group=derive_group(config, launch),
        job_type=derive_job_type(config, launch),
        mode=config.mode,
        tags=tuple(config.tags),
    )
    return proposed, resume_mode(config, stable)


def recorded(config: Mapping[str, Any], key: str) -> Any:
    """What a run's config records under ``CONFIG_SECTION`` for ``key``; None where the run (or the key) has none,
    e.g. a run written by plain wandb.

    Example:
        >>> recorded({"sdxl_dist_log": {"step_metric": "global_step"}}, "step_metric"), recorded({}, "step_metric")
        ('global_step', None)
    """
    entry = config.get(CONFIG_SECTION)
    return entry.get(key) if isinstance(entry, Mapping) else None


def launch_record(config: WandbConfig, launch: Launch) -> dict[str, Any]:
    """What the run config records about the launch, under ``CONFIG_SECTION``.

    ``step_metric`` is recorded so that readers of the run (``sdxl-dist-log inspect``) plot against the right key.
    """
    rank = launch.rank
    return {"launcher": rank.launcher, "world_size": rank.world_size, "num_nodes": rank.num_nodes,
            "job_id": launch.job_id, "primary_host": rank.hostname, "step_metric": config.step_metric}


__all__ = ["CONFIG_SECTION", "RunIdentity", "derive_group", "derive_job_type", "derive_run_id", "launch_record",
           "propose_identity", "recorded", "resume_mode"]
