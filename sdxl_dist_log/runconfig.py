"""Pure helpers for the run config: the check of what W&B can store, and the nested merge.

Secrets are kept out of the config by ``secrets.redact_secrets``; this module only decides what a config may hold.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from typing import Any

from sdxl_dist_log.errors import RunConfigError

_MAX_DEPTH = 32


def checked_config(values: Any, where: str = "log_config") -> dict[str, Any]:
    """A copy of ``values`` in the types W&B stores, or ``RunConfigError`` naming the first key it cannot store.

    Kept: None, bools, ints, finite or not floats, strings, lists, tuples (as lists) and mappings with non-empty
    string keys. Converted: numpy scalars and small arrays (to numbers and lists), ``os.PathLike`` (to its path).
    Anything else (an object, a function, bytes, a non-string key) is an error, so one bad value never reaches W&B,
    where it would fail the config update instead of this call.

    Args:
        values: the mapping to check.
        where: the call or field named in the error, e.g. "log_config" or "WandbConfig.config".

    Raises:
        RunConfigError: ``values`` is not a mapping, or a key or value cannot be stored; the message names its path
            (``'optimizer.betas[1]'``) and type.

    Example:
        >>> checked_config({"lr": 1e-4, "betas": (0.9, 0.99)})
        {'lr': 0.0001, 'betas': [0.9, 0.99]}
    """
    if not isinstance(values, Mapping):
        raise RunConfigError(f"{where} takes a mapping of key -> value, not {type(values).__name__}")
    return _mapping(values, "", where, 0)


def _mapping(values: Mapping[Any, Any], path: str, where: str, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key:
            place = f" under {path!r}" if path else ""
            raise RunConfigError(f"{where}: key {key!r}{place} must be a non-empty string (W&B stores string keys)")
        out[key] = _value(value, f"{path}.{key}" if path else key, where, depth + 1)
    return out


def _value(value: Any, path: str, where: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise RunConfigError(f"{where}: {path!r} is nested more than {_MAX_DEPTH} levels deep (a cycle?)")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return _mapping(value, path, where, depth)
    if isinstance(value, (list, tuple)):
        return [_value(item, f"{path}[{i}]", where, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy" and hasattr(value, "tolist") and getattr(value, "size", 0) <= 4096:
        return _value(value.tolist(), path, where, depth)
    raise RunConfigError(
        f"{where}: {path!r} is a {type(value).__module__}.{type(value).__qualname__} ({value!r:.60}), which W&B "
        "cannot store; pass numbers, strings, bools, None, lists or dicts (str(value) if it is meant as text)"
    )


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested mappings merge key by key instead of replacing each other."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


__all__ = ["checked_config", "deep_merge"]
