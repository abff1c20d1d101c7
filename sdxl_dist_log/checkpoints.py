"""Which ``log_model`` calls upload, from what, under which artifact name: pure decisions, no W&B here."""

from __future__ import annotations

import os
from collections.abc import Sequence

from sdxl_dist_log.config import WandbConfig

FINAL_ALIASES = frozenset({"best", "final"})
"""Aliases that mark a checkpoint worth keeping even with ``log_checkpoints=False``."""


def wanted(config: WandbConfig, aliases: Sequence[str]) -> bool:
    """Whether the config uploads a checkpoint with these aliases (``log_model``, ``log_checkpoints``)."""
    return config.log_model and (config.log_checkpoints or bool(FINAL_ALIASES.intersection(aliases)))


def existing_source(path: str | os.PathLike[str]) -> str:
    """``path`` as a string, checked to exist.

    Raises:
        FileNotFoundError: nothing is at ``path``; the message names it.
    """
    source = os.fspath(path)
    if not os.path.exists(source):
        raise FileNotFoundError(f"log_model: checkpoint {source!r} does not exist; nothing was uploaded")
    return source


def artifact_name(name: str) -> str:
    """``name`` with every character W&B does not allow in an artifact name replaced by "-".

    Raises:
        ValueError: nothing usable is left.

    Example:
        >>> artifact_name("ckpt/step 1000")
        'ckpt-step-1000'
    """
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-.")
    if not cleaned:
        raise ValueError(f"artifact name {name!r} has no usable characters")
    return cleaned
