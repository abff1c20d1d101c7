"""Logging from one rank, without a collective: what ``if accelerator.is_main_process:`` blocks need.

diffusers, Accelerate and Lightning scripts log validation images, metrics and tables from the main process only.
Done with ``log_images`` (a collective), the main process waits for ranks that never come while they wait for it in
the next DDP step. ``WandbLogger.main_process`` takes the same calls with the same arguments and never waits for
another rank: on the primary rank they land in the run at once; on any other rank they are checked (a bad argument
raises there too) and dropped, with one warning, since only the primary owns the run.

Example:
    >>> if accelerator.is_main_process:  # doctest: +SKIP
    ...     wb.main_process.log_images(images, captions=prompts, step=global_step, prefix="validation")
    ...     wb.main_process.log_table("validation/samples", ["prompt", "image"], list(zip(prompts, images)))
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sdxl_dist_log.arguments import checked_call, checked_image_call, checked_metrics
from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.errors import ImageInputError, LoggingInputError, MetricValueError
from sdxl_dist_log.framing import checked_step
from sdxl_dist_log.images import convert
from sdxl_dist_log.metrics import apply_prefix

Write = Callable[..., None]
"""``write(method, *args, step=step)``: the logger runs the backend's ``method`` under its lock at ``step``."""


def _table_cell(value: Any, row: int, column: str, value_range: tuple[float, float]) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Real):
        return float(value) if not isinstance(value, numbers.Integral) else int(value)
    try:
        [image] = convert.to_uint8_hwc(value, value_range=value_range)
    except (ImageInputError, ValueError) as exc:
        raise LoggingInputError(f"log_table: row {row}, column {column!r}: {type(value).__name__} is neither a "
                                f"number, a string, None nor one image ({exc})") from None
    return image


class MainProcessLog:
    """Metrics, images and tables from one rank, straight into the run: no collective, never waits for other ranks.

    Get it as ``WandbLogger.main_process``; do not build it yourself.
    """

    def __init__(self, write: Write, config: WandbConfig, *, is_primary: bool, rank: int, disabled: bool,
                 warn: Callable[[str, str], Any]) -> None:
        self._write = write
        self._config = config
        self._is_primary = is_primary
        self._rank = rank
        self._disabled = disabled
        self._warn = warn

    def _lands(self, what: str) -> bool:
        """Whether this rank's call reaches the run; warns once per method when it cannot."""
        if self._disabled:
            return False
        if not self._is_primary:
            self._warn(f"wb.main_process.{what} on rank {self._rank}: only the primary rank "
                       f"({self._config.primary_rank}) owns the run, so calls made here are dropped; make them "
                       f"where rank == {self._config.primary_rank} (WandbConfig.primary_rank)", f"main:{what}")
        return self._is_primary

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, *, commit: bool = True,
                    prefix: str | None = None) -> dict[str, float] | None:
        """Log this rank's own values (not reduced) as one row. No collective.

        Args:
            metrics: key -> python number, numpy scalar, or 0-d/1-element tensor.
            step: the training step (an int >= 0); the last one when None.
            commit: False keeps the values pending and merges them into the next committed row.
            prefix: key prefix; ``WandbConfig.metric_prefix`` when None, "" for none.

        Returns:
            The logged (prefixed) values on the primary; None elsewhere or with ``mode="disabled"``.

        Raises:
            MetricValueError: a key, value, ``step`` or ``prefix`` is not usable; the message names it.
        """
        if self._disabled:
            return None
        step, error = checked_call(step, prefix, MetricValueError)
        if error is not None:
            raise error
        values = apply_prefix(checked_metrics(metrics), self._config.metric_prefix if prefix is None else prefix)
        if not self._lands("log_metrics"):
            return None
        self._write("log_row", values, commit=commit, step=step)
        return values

    def log_images(self, images: Any, captions: Sequence[str] | str | None = None, step: int | None = None, *,
                   prefix: str | None = None, value_range: tuple[float, float] | None = None) -> int:
        """Log this rank's images under ``<prefix>/images``, at most ``max_images_to_log``. No collective.

        Args: as ``WandbLogger.log_images``.

        Returns:
            The number of images logged (0 off the primary and with ``mode="disabled"``).

        Raises:
            ImageInputError: an image, the captions, ``step`` or ``prefix`` are not usable; the message names it.
        """
        if self._disabled:
            return 0
        step, arrays, names, error = checked_image_call(images, captions, step, prefix,
                                                        value_range or self._config.image_value_range)
        if error is not None:
            raise error
        if not self._lands("log_images") or not arrays:
            return 0
        cap = self._config.max_images_to_log
        key = f"{self._config.sample_prefix if prefix is None else prefix}/images".lstrip("/")
        self._write("log_images", key, arrays[:cap], names[:cap], step=step)
        return len(arrays[:cap])

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None,
                  *, value_range: tuple[float, float] | None = None) -> int:
        """Log a table (a ``wandb.Table``) under ``key``: cells are numbers, strings, None or one image each.

        Args:
            key: the run key, e.g. "validation/samples".
            columns: the column names.
            rows: one sequence of cells per row, as many cells as columns.
            step: the training step; the last one when None.
            value_range: range of float image cells; ``WandbConfig.image_value_range`` when None.

        Returns:
            The number of rows logged (0 off the primary and with ``mode="disabled"``).

        Raises:
            LoggingInputError: the key, a column, a row's length or a cell is not usable; the message names the row
                and column.
        """
        if self._disabled:
            return 0
        step = checked_step(step, LoggingInputError)
        if not isinstance(key, str) or not key:
            raise LoggingInputError(f"log_table: key={key!r} must be a non-empty string")
        if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns) \
                or len(set(columns)) != len(columns):
            raise LoggingInputError(f"log_table: columns={columns!r} must be distinct non-empty strings")
        cells: list[list[Any]] = []
        for r, row in enumerate(rows):
            if isinstance(row, (str, bytes)) or not isinstance(row, Sequence) or len(row) != len(columns):
                raise LoggingInputError(f"log_table: row {r} must be a sequence of {len(columns)} cells, "
                                        f"got {row!r:.60}")
            cells.append([_table_cell(v, r, c, value_range or self._config.image_value_range)
                          for v, c in zip(row, columns)])
        if not self._lands("log_table"):
            return 0
        self._write("log_table", key, list(columns), cells, step=step)
        return len(cells)


__all__ = ["MainProcessLog"]
