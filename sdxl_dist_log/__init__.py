"""Rank-aware Weights & Biases logging for distributed PyTorch training.

Every rank calls the same API; metrics are reduced in one collective, every rank's images reach the one run that the
primary rank owns, and system figures of every GPU on every node land in it. Importing this package imports neither
wandb nor torch.distributed's heavy parts: names resolve lazily on first use.

Example:
    >>> from sdxl_dist_log import WandbLogger, WandbConfig, UnifiedLogger, LogConfig
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_ERRORS = ("CheckpointError", "CollectiveError", "CollectiveTimeoutError", "ConfigError", "ImageInputError",
           "LoggingInputError", "MetricKeyMismatchError", "MetricValueError", "RankEnvironmentError",
           "RanksOutOfStepError", "RunConfigError", "SdxlDistLogError", "WandbFileError")
_EXPORTS = {
    "WandbConfig": "sdxl_dist_log.config",
    "LogConfig": "sdxl_dist_log.config",
    "Launch": "sdxl_dist_log.ranks",
    "RankInfo": "sdxl_dist_log.ranks",
    "RunIdentity": "sdxl_dist_log.identity",
    "WandbLogger": "sdxl_dist_log.wandb_logger",
    "UnifiedLogger": "sdxl_dist_log.unified",
    "Reduce": "sdxl_dist_log.metrics",
    "read_run": "sdxl_dist_log.offline",
    **{name: "sdxl_dist_log.errors" for name in _ERRORS},
}

__all__ = sorted(_EXPORTS) + ["__version__"]

if TYPE_CHECKING:
    from sdxl_dist_log.config import LogConfig, WandbConfig
    from sdxl_dist_log.errors import (
        CheckpointError,
        CollectiveError,
        CollectiveTimeoutError,
        ConfigError,
        ImageInputError,
        LoggingInputError,
        MetricKeyMismatchError,
        MetricValueError,
        RankEnvironmentError,
        RanksOutOfStepError,
        RunConfigError,
        SdxlDistLogError,
        WandbFileError,
    )
    from sdxl_dist_log.identity import RunIdentity
    from sdxl_dist_log.metrics import Reduce
    from sdxl_dist_log.offline import read_run
    from sdxl_dist_log.ranks import Launch, RankInfo
    from sdxl_dist_log.unified import UnifiedLogger
    from sdxl_dist_log.wandb_logger import WandbLogger


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sdxl_dist_log' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
