"""Run id, name, group and job_type of a launch: pure functions of the config, the rank value and the environment.

Rules (docs/naming.md):
- group: ``WandbConfig.group``; else ``SDXL_DIST_LOG_GROUP``; else the SLURM array (``slurm-array-<array job id>``)
  so that the tasks of an array group together; else the SLURM job (``slurm-<job id>``); else torchrun's rendezvous
  id (``torchrun-<run id>``); else none.
- job_type: ``WandbConfig.job_type``; else ``SDXL_DIST_LOG_JOB_TYPE``; else ``train-<launcher>``.
- run id: ``WandbConfig.run_id``; else ``SDXL_DIST_LOG_RUN_ID``; else derived from the SLURM job and array task, so
  a requeued job (same job id) resumes its run; else a fresh random id chosen by the primary and broadcast.
- name: ``WandbConfig.name``; else the run id.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.ranks import RankInfo

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("-", text).strip("-") or "run"


def derive_group(config: WandbConfig, rank: RankInfo, env: Mapping[str, str]) -> str | None:
    """The W&B group of this launch (see the module docstring for the rules)."""
    if config.group:
        return config.group
    if env.get("SDXL_DIST_LOG_GROUP"):
        return env["SDXL_DIST_LOG_GROUP"]
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"slurm-array-{env['SLURM_ARRAY_JOB_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    run = env.get("TORCHELASTIC_RUN_ID")
    if run and run != "none":
        return f"torchrun-{_safe(run)}"
    return None


def derive_job_type(config: WandbConfig, rank: RankInfo, env: Mapping[str, str]) -> str:
    """The W&B job_type of this launch."""
    return config.job_type or env.get("SDXL_DIST_LOG_JOB_TYPE") or f"train-{rank.launcher}"


def derive_run_id(config: WandbConfig, env: Mapping[str, str]) -> tuple[str, bool]:
    """The run id, and whether it is stable across restarts of the same job (then the run is resumed).

    Returns:
        (run id, stable): stable is True for explicit ids and ids derived from the SLURM job.
    """
    if config.run_id:
        return _safe(config.run_id), True
    if env.get("SDXL_DIST_LOG_RUN_ID"):
        return _safe(env["SDXL_DIST_LOG_RUN_ID"]), True
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"slurm-{_safe(array_job)}-{_safe(task)}", True
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{_safe(env['SLURM_JOB_ID'])}", True
    return secrets.token_hex(4), False


def resume_mode(config: WandbConfig, stable_id: bool) -> str | None:
    """W&B's ``resume`` argument: the config's, or "allow" for stable ids so a requeued job continues its run."""
    explicit = config.wandb_resume
    if explicit is not None:
        return explicit
    return "allow" if stable_id else None
