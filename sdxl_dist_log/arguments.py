"""Checks of the arguments of a logging call, shared by the collective calls and ``MainProcessLog``. Pure.

A collective call must still reach its collective when an argument is bad (the other ranks would wait for it), so
``checked_call`` returns the error instead of raising it; ``own_error`` is what the rank raises afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from sdxl_dist_log.errors import ImageInputError, LoggingInputError, MetricValueError
from sdxl_dist_log.framing import CallInfo, checked_step
from sdxl_dist_log.images import convert
from sdxl_dist_log.metrics import pack_values


def checked_prefix(prefix: Any, error_type: type[LoggingInputError]) -> str | None:
    """``prefix`` if it is a str or None, else ``error_type`` naming it."""
    if prefix is not None and not isinstance(prefix, str):
        raise error_type(f"prefix={prefix!r} must be a str or None")
    return prefix


def checked_call(step: Any, prefix: Any, error_type: type[LoggingInputError]) -> tuple[int | None, Exception | None]:
    """A collective call's ``step`` and ``prefix`` checked: (the step or None, the error or None), never raised."""
    try:
        step = checked_step(step, error_type)
    except LoggingInputError as exc:
        return None, exc
    try:
        checked_prefix(prefix, error_type)
    except LoggingInputError as exc:
        return step, exc
    return step, None


def checked_image_call(
    images: Any, captions: Any, step: Any, prefix: Any, value_range: tuple[float, float]
) -> tuple[int | None, list[np.ndarray], list[str | None], Exception | None]:
    """A ``log_images`` call's arguments checked: (step or None, images, captions, the error or None), never raised.

    On an error there are no images: the rank still offers zero images, flagged, to the collective.
    """
    step, error = checked_call(step, prefix, ImageInputError)
    if error is not None:
        return step, [], [], error
    try:
        arrays, names = convert.checked_images(images, captions, value_range)
    except Exception as exc:  # noqa: BLE001 - any failure must still reach the collective as a flag
        named = exc if isinstance(exc, ImageInputError) else ImageInputError(f"{type(exc).__name__}: {exc}")
        return step, [], [], named
    return step, arrays, names, None


def checked_metrics(metrics: Any) -> dict[str, float]:
    """``metrics`` as key -> float, or ``MetricValueError`` naming the bad key (the checks of ``log_metrics``)."""
    if not isinstance(metrics, Mapping):
        raise MetricValueError(f"metrics must be a mapping of key -> value, not {type(metrics).__name__}")
    for key in metrics:
        if not isinstance(key, str) or not key:
            raise MetricValueError(f"metric key {key!r} is not a non-empty string")
    keys = sorted(metrics)
    return dict(zip(keys, pack_values(metrics, keys).tolist()))


def own_error(error: Exception, call: CallInfo, rank: int, world_size: int) -> Exception:
    """A rank's own input error as raised at its call site: the same type, saying which call and rank, and that
    nothing of the call was logged (on any rank: its flagged row failed the call everywhere)."""
    where = f"{call} on rank {rank}" if world_size > 1 else str(call)
    return type(error)(f"{where}: {error}; nothing of this call was logged")


__all__ = ["checked_call", "checked_image_call", "checked_metrics", "own_error"]
