"""Every error this package raises on purpose, under one base class.

Catch ``SdxlDistLogError`` for all of them. Each also derives from the built-in type that fits its cause
(``ValueError`` for bad input, ``RuntimeError`` for a failure between ranks), so code written against the built-in
types keeps working. Every class is exported from ``sdxl_dist_log``; docs/distributed.md has the table of which
call raises which, on which ranks.

The tree:

    SdxlDistLogError
    ├── ConfigError (ValueError)              a config field is out of range or unknown; names the field
    ├── RankEnvironmentError (ValueError)     the launch's environment contradicts itself; names the variable
    ├── LoggingInputError (ValueError)        a logging call got a bad argument; names the key, index or argument
    │   ├── MetricValueError                  a metric key, value, step or reduce op is not usable
    │   ├── ImageInputError                   an image, caption or step is not usable
    │   ├── CheckpointError                   a checkpoint path (missing, broken link, link loop) or argument
    │   └── RunConfigError                    a config key or value W&B cannot store
    ├── CollectiveError (RuntimeError)        a logging collective failed; names the call and the ranks
    │   ├── CollectiveTimeoutError            ranks did not reach the call in time, or a peer died (its link closed)
    │   └── RanksOutOfStepError               ranks reached different logging calls
    ├── MetricKeyMismatchError (RuntimeError) ranks passed different keys (strict_keys) or reduce ops
    └── WandbFileError (ValueError)           an offline run file is not a W&B log or is damaged
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class SdxlDistLogError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(SdxlDistLogError, ValueError):
    """A configuration value is out of range or unknown; the message names the field."""


class RankEnvironmentError(SdxlDistLogError, ValueError):
    """The launch environment contradicts itself (e.g. RANK >= WORLD_SIZE); the message names the variable."""


class LoggingInputError(SdxlDistLogError, ValueError):
    """A logging call got an argument it cannot log; the message names the key, index or argument."""


class MetricValueError(LoggingInputError):
    """A metric key or value is not usable (not a number, several elements, ...); the message names the key."""


class ImageInputError(LoggingInputError):
    """An image or its caption cannot be logged; the message names the image's index, shape and dtype."""


class CheckpointError(LoggingInputError):
    """A checkpoint cannot be uploaded: its path is missing, holds a broken symbolic link or a link loop, or cannot be
    read, or ``log_model`` got a bad name, alias or metadata; the message names the path or argument."""


class RunConfigError(LoggingInputError):
    """A config key is not a non-empty string, or a value is not one W&B can store (numbers, strings, bools, None,
    lists and mappings of them); the message names the key's path, e.g. ``'optimizer.betas[1]'``."""


class CollectiveError(SdxlDistLogError, RuntimeError):
    """A logging collective failed; logging on the logger's group is closed, training may go on.

    Attributes:
        call: the call that failed, e.g. "log_metrics at step 1200".
        ranks: the ranks at fault (missing or out of step), when known.
    """

    def __init__(self, message: str, *, call: str = "", ranks: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.call = call
        self.ranks = list(ranks)


class CollectiveTimeoutError(CollectiveError):
    """Some ranks did not reach a logging call within the timeout, or a peer's connection closed (its process died or
    was killed): either way the ranks did not all get through the call, and ``ranks`` names the missing ones."""


class RanksOutOfStepError(CollectiveError):
    """Ranks reached different logging calls: one skipped or added a call."""


class MetricKeyMismatchError(SdxlDistLogError, RuntimeError):
    """Ranks passed different metric keys (``strict_keys``) or different reduce ops for one key.

    Attributes:
        missing: key -> ranks that did not pass it.
    """

    def __init__(self, message: str, missing: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__(message)
        self.missing = dict(missing or {})


class WandbFileError(SdxlDistLogError, ValueError):
    """A file is not a W&B offline run log, or its records cannot be read."""


__all__ = [
    "CheckpointError",
    "CollectiveError",
    "CollectiveTimeoutError",
    "ConfigError",
    "ImageInputError",
    "LoggingInputError",
    "MetricKeyMismatchError",
    "MetricValueError",
    "RankEnvironmentError",
    "RanksOutOfStepError",
    "RunConfigError",
    "SdxlDistLogError",
    "WandbFileError",
]
