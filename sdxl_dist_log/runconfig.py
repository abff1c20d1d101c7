"""Pure helpers for the run config: nested merge and redaction of secrets."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***redacted***"
_SECRET_WORDS = frozenset({"token", "password", "passwd", "secret", "credential", "credentials", "apikey"})
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def looks_secret(key: str) -> bool:
    """True for keys such as ``api_key``, ``hf_token``, ``apiKey``, ``db.password``; False for ``tokenizer``.

    The key is split into words (snake, kebab, dotted, camelCase); a secret word, or "api" followed by "key", marks it.
    """
    words = [w.lower() for w in _WORD.findall(str(key))]
    return any(w in _SECRET_WORDS for w in words) or any(a == "api" and b == "key" for a, b in zip(words, words[1:]))


def redact_secrets(values: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``values``, replacing the value of every key that looks like a secret, at any depth.

    Example:
        >>> redact_secrets({"hf": {"token": "abc"}, "lr": 1e-4})
        {'hf': {'token': '***redacted***'}, 'lr': 0.0001}
    """
    return {key: REDACTED if looks_secret(key) and not isinstance(value, Mapping) else _redact_value(value)
            for key, value in values.items()}


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact_secrets(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(item) for item in value)
    return value


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested mappings merge key by key instead of replacing each other."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    return out
