"""What ``WandbLogger``'s constructor takes and says: its config from an object, a mapping or keywords, and the one
line the primary prints at start. Pure functions, shared with the framework adapters."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.errors import ConfigError
from sdxl_dist_log.identity import RunIdentity


def resolve_config(config: WandbConfig | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> WandbConfig:
    """The ``WandbConfig`` of a logger built from a config object or mapping and/or keyword fields.

    Args:
        config: a ``WandbConfig``, a mapping of its fields, or None.
        fields: fields given as keywords.

    Returns:
        ``config`` itself when no keywords are given; else the mapping and the keywords merged.

    Raises:
        ConfigError: a field is given both ways (named), keywords come with a ``WandbConfig`` object, a field is
            unknown or a value is invalid.

    Example:
        >>> resolve_config({"project": "a"}, {"mode": "offline"}).mode
        'offline'
    """
    if isinstance(config, WandbConfig):
        if fields:
            raise ConfigError(f"WandbLogger got a WandbConfig and the keyword fields {', '.join(sorted(fields))}: "
                              "pass one or the other (or dataclasses.replace(config, ...))")
        return config
    given = dict(config or {})
    twice = sorted(set(given) & set(fields))
    if twice:
        raise ConfigError(f"WandbLogger got {', '.join(map(repr, twice))} both in config and as a keyword")
    return WandbConfig.from_dict({**given, **fields})


def start_line(identity: RunIdentity, url: str | None = None) -> str:
    """The one line the primary says at start: the run, its mode, and where it is.

    Example:
        >>> start_line(RunIdentity("r1", "r1", None, None, mode="offline", run_dir="/o/wandb/offline-run-r1"))
        'W&B run r1 (offline) in /o/wandb/offline-run-r1; upload it later with: wandb sync /o/wandb/offline-run-r1'
    """
    fallback = f" (fell back: {identity.fallback_reason})" if identity.fallback_reason else ""
    if identity.mode == "disabled":
        return f"W&B run {identity.run_id} is disabled: nothing is written{fallback}"
    where = f"at {url or '(no URL)'}" if identity.mode == "online" else (
        f"in {identity.run_dir}; upload it later with: wandb sync {identity.run_dir}")
    extra = "".join(f" {k}={v}" for k, v in (("group", identity.group), ("job_type", identity.job_type)) if v)
    return f"W&B run {identity.run_id} ({identity.mode}){extra} {where}{fallback}"


def announce(logger: logging.Logger, line: str) -> None:
    """Say ``line`` once: through ``logger`` when it shows INFO somewhere, else on stderr (a bare ``logging.Logger``
    would swallow it, and the start line says where the run went)."""
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(line)
    else:
        print(f"sdxl_dist_log: {line}", file=sys.stderr, flush=True)


__all__ = ["announce", "resolve_config", "start_line"]


def without_process_group(world_size: int, primary_rank: int) -> str:
    """The warning for a launch of several ranks whose training script did not initialize torch.distributed."""
    return (f"WORLD_SIZE={world_size} but torch.distributed is not initialized: metrics are not reduced across "
            f"ranks; only rank {primary_rank} logs (its own values) to the run")
