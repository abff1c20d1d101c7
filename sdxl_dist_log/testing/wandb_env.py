"""A private, silent, offline W&B environment for tests, benchmarks and child processes.

W&B writes outside the run directory too (staging under ``WANDB_DATA_DIR``, a cache under ``WANDB_CACHE_DIR``,
settings under ``WANDB_CONFIG_DIR``) and, unless told otherwise, reports errors over the network at exit. Everything
here points those places into one folder and turns the network off, so a test's runs land where it can read them and
nothing of one test leaks into another.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

WANDB_DIRS = (("WANDB_DIR", "dir"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
              ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts"))
CLEARED = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
           "GROUP_RANK", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_JOB_ID",
           "SLURM_ARRAY_TASK_ID", "MASTER_ADDR", "MASTER_PORT", "SDXL_DIST_LOG_RUN_ID", "SDXL_DIST_LOG_GROUP",
           "SDXL_DIST_LOG_JOB_TYPE")
"""Variables a test must not inherit: a real key, a forced mode, a launcher's rank variables."""


def wandb_environment(root: str | os.PathLike[str]) -> dict[str, str]:
    """The variables that keep W&B's files under ``root/wandb_home`` and W&B off the network (dirs are created).

    Returns:
        Variable -> value, to put into ``os.environ`` or a child's environment; ``CLEARED`` lists what to remove.
    """
    home = Path(root) / "wandb_home"
    env = {}
    for name, sub in WANDB_DIRS:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[name] = str(home / sub)
    env.update(WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    return env


def apply(env: Mapping[str, str], cleared: Iterable[str] = CLEARED) -> None:
    """Set ``env`` in this process's environment and remove ``cleared`` (for a child process that owns its env)."""
    for name in cleared:
        os.environ.pop(name, None)
    os.environ.update(env)
