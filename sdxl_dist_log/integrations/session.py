"""The part both adapters share: one ``WandbLogger``, built on the first call every rank makes, fed split values."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.construction import resolve_config
from sdxl_dist_log.integrations.values import split_values
from sdxl_dist_log.wandb_logger import WandbLogger

ADAPTER_DEFAULTS: dict[str, Any] = {"metric_prefix": ""}
"""Where an adapter's defaults differ from ``WandbConfig``'s: keys land as the framework's own W&B logger writes them
(``train_loss``, not ``metrics/train_loss``)."""


def adapter_config(config: WandbConfig | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> WandbConfig:
    """An adapter's ``WandbConfig``: a config object as given, else the mapping and keywords over ``ADAPTER_DEFAULTS``.

    Raises:
        ConfigError: as ``resolve_config`` (a field given twice, an unknown field, a bad value).
    """
    if isinstance(config, WandbConfig):
        return resolve_config(config, fields)
    given = dict(config or {})
    defaults = {k: v for k, v in ADAPTER_DEFAULTS.items() if k not in given and k not in fields}
    return resolve_config(given, {**defaults, **fields})


class LoggerSession:
    """Owns the one ``WandbLogger`` of an adapter; builds it at the first ``get()``.

    The frameworks construct their loggers before the process group exists; the logger must be built after it, at
    a call that every rank makes (its construction is collective).

    Args:
        config: the logger's config.
        logger: a ``UnifiedLogger`` or ``logging.Logger`` for its messages.
        factory: builds the logger (``WandbLogger``; a test passes its own).
    """

    def __init__(self, config: WandbConfig, logger: Any | None = None,
                 factory: Callable[..., WandbLogger] = WandbLogger) -> None:
        self.config = config
        self._logger = logger
        self._factory = factory
        self.wb: WandbLogger | None = None
        self.finished = False

    def get(self) -> WandbLogger:
        """The logger, built now if it was not (a collective: every rank must reach this call)."""
        if self.wb is None:
            self.wb = self._factory(self.config, logger=self._logger)
        return self.wb

    @property
    def run(self) -> Any | None:
        """The primary's W&B run once started; None before, and on other ranks."""
        return None if self.wb is None else self.wb.run

    def log_values(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Log a framework's mixed dict: scalars in one ``log_metrics``, then one ``log_images`` per image key.

        Every rank must pass the same keys with values of the same kind (images or not); an image key may hold
        ``[]`` on ranks that have none. Images land under ``<key>/images``.
        """
        log_split(self.get(), values, step)

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run (every rank); a session that never started has nothing to finish. Idempotent."""
        if self.wb is not None and not self.finished:
            self.finished = True
            self.wb.finish(exit_code)


def log_split(target: Any, values: Mapping[str, Any], step: int | None) -> None:
    """Log a framework's mixed dict through ``target`` (a ``WandbLogger``, or its ``main_process``): the scalars in
    one ``log_metrics``, then one ``log_images`` per image key, under ``<key>/images``."""
    split = split_values(values)
    if split.scalars:
        target.log_metrics(split.scalars, step=step)
    for key, (images, captions) in split.images.items():
        target.log_images(images, captions=None if all(c is None for c in captions) else captions, step=step,
                          prefix=key)
