"""Pure helpers for the run config: nested merge and redaction of secrets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***redacted***"
_SECRET_KEY = re.compile(r"(api[_-]?key|token|password|passwd|secret|credential)", re.IGNORECASE)


def redact_secrets(values: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``values``, replacing the value of every key that looks like a secret, at any depth.

    Example:
        >>> redact_secrets({"hf": {"token": "abc"}, "lr": 1e-4})
        {'hf': {'token': '***redacted***'}, 'lr': 0.0001}
    """
    out: dict[str, Any] = {}
    for key, value in values.items():
        if _SECRET_KEY.search(str(key)) and not isinstance(value, Mapping):
            out[key] = REDACTED
        elif isinstance(value, Mapping):
            out[key] = redact_secrets(value)
        else:
            out[key] = value
    return out


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested mappings merge key by key instead of replacing each other."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out
