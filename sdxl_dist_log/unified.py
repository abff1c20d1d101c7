"""UnifiedLogger: rank-aware console and file logging, one progress bar, and a local metrics JSONL.

Each rank writes its own files (``<name>.rank<r>.log`` and ``<name>.rank<r>.metrics.jsonl``), so ranks never
interleave lines in one file. Only the primary rank prints INFO to the console and shows the progress bar; other
ranks print warnings and errors. When the console is not a terminal (a log file, a SLURM ``.out``), the bar gives
way to one plain progress line per ``progress_interval``: every record is one line. Handlers are closed on
``close()``/exit, never left open.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from sdxl_dist_log.collectives import placed_by_process_group
from sdxl_dist_log.config import LogConfig
from sdxl_dist_log.ranks import Launch, RankInfo


class _RankFilter(logging.Filter):
    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def _json_value(value: Any, number: float | None = None) -> Any:
    """``value`` as JSON holds it; ``number`` is its float when already known (read from a device in one copy)."""
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    if number is None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
    if not math.isfinite(number):
        return str(number)  # JSON has no NaN/inf; keep them readable
    kind = _integral_type(value)
    return kind(number) if kind is not None else number


class _ProgressAwareHandler(logging.StreamHandler):
    """Console handler that prints above the progress bar instead of gluing lines onto it."""

    def __init__(self, owner: UnifiedLogger, stream: TextIO) -> None:
        super().__init__(stream)
        self._owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        bar = self._owner._bar
        if bar is None:
            super().emit(record)
            return
        try:
            bar.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


def _integral_type(value: Any) -> type | None:
    """``bool`` or ``int`` when ``value`` (a number, numpy scalar/array or tensor) holds one, so JSON keeps it so."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool
    if isinstance(value, int) or type(value).__module__ == "numpy" and "int" in type(value).__name__:
        return int
    dtype = str(getattr(value, "dtype", "")).removeprefix("torch.")
    if dtype == "bool":
        return bool
    return int if dtype.startswith(("int", "uint")) else None


def _json_values(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready values; tensors reach the host in one copy per device, not one ``float()`` sync per metric.

    Integers stay integers (a step counter reads ``4``, not ``4.0``) and bools stay bools.
    """
    from sdxl_dist_log.metrics import MetricValueError, pack_values

    keys = [str(k) for k in metrics]
    try:
        values = pack_values({str(k): v for k, v in metrics.items()}, keys)
    except MetricValueError:  # not all numeric: convert one by one (strings are fine in a local log)
        return {str(k): _json_value(v) for k, v in metrics.items()}
    return {key: _json_value(value, number) for key, value, number in zip(keys, metrics.values(), values.tolist())}


def _format_postfix(values: Mapping[str, Any]) -> str:
    """``step_loss=0.1234, lr=0.0001``: numbers with 4 significant digits, anything else as text."""
    parts = []
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            parts.append(f"{key}={value}")
            continue
        parts.append(f"{key}={int(number)}" if _integral_type(value) is int else f"{key}={number:.4g}")
    return ", ".join(parts)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or odd stream is no terminal
        return False


class UnifiedLogger:
    """Console + file logger with progress tracking, for every rank.

    Args:
        config: a ``LogConfig`` or a mapping of its fields; defaults when None.
        rank_info: this process's rank; from the environment when None.
        stream: the console stream; ``sys.stderr`` when None. A terminal gets a live bar; anything else plain lines.
        clock: seconds, monotonic; paces the progress lines (a test passes its own).

    Example:
        >>> with UnifiedLogger(LogConfig(name="train", log_dir=tmp)) as log:  # doctest: +SKIP
        ...     log.info("starting")
    """

    def __init__(self, config: LogConfig | Mapping[str, Any] | None = None, *, rank_info: RankInfo | None = None,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config if isinstance(config, LogConfig) else LogConfig.from_dict(config or {})
        self.rank_info = rank_info or placed_by_process_group(Launch.from_env(os.environ).rank)
        cfg, rank = self.config, self.rank_info.rank
        self.is_primary = rank == cfg.primary_rank
        self._stream = sys.stderr if stream is None else stream
        self._terminal = _is_terminal(self._stream)
        self._clock = clock
        self.logger = logging.getLogger(f"sdxl_dist_log.{cfg.name}.rank{rank}")
        self.logger.setLevel(cfg.level)
        self.logger.propagate = False
        self._handlers: list[logging.Handler] = []
        formatter = logging.Formatter("%(asctime)s [rank %(rank)s] %(levelname)s %(message)s")
        rank_filter = _RankFilter(rank)
        self.log_path: Path | None = None
        self.metrics_path: Path | None = None
        if cfg.console:
            console = _ProgressAwareHandler(self, self._stream)
            console.setLevel(cfg.level if self.is_primary or cfg.all_ranks_console else "WARNING")
            self._add(console, formatter, rank_filter)
        if cfg.file or cfg.metrics_file:
            os.makedirs(cfg.log_dir, exist_ok=True)
        if cfg.file:
            self.log_path = Path(cfg.log_dir) / f"{cfg.name}.rank{rank}.log"
            self._add(logging.FileHandler(self.log_path, encoding="utf-8"), formatter, rank_filter)
        self._metrics_file = None
        if cfg.metrics_file:
            self.metrics_path = Path(cfg.log_dir) / f"{cfg.name}.rank{rank}.metrics.jsonl"
            self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._bar: Any = None
        self._progress_total: int | None = None
        self._progress_done = 0
        self._progress_started = 0.0
        self._progress_desc = ""
        self._last_line = 0.0
        self._postfix: dict[str, Any] = {}
        self._closed = False

    def _add(self, handler: logging.Handler, formatter: logging.Formatter, rank_filter: logging.Filter) -> None:
        handler.setFormatter(formatter)
        handler.addFilter(rank_filter)
        self.logger.addHandler(handler)
        self._handlers.append(handler)

    # -- messages -----------------------------------------------------------------------------------------------
    def debug(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.logger.debug(msg, *args, **kwargs)

    def info(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.logger.info(msg, *args, **kwargs)

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.logger.warning(msg, *args, **kwargs)

    def error(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.logger.error(msg, *args, **kwargs)

    def exception(self, msg: str, *args: Any, **kwargs: Any) -> None:
        self.logger.exception(msg, *args, **kwargs)

    # -- metrics ------------------------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Append one JSON line of this rank's metrics (local, not reduced) and log them at DEBUG."""
        row = {"time": time.time(), "step": step, **_json_values(metrics)}
        if self._metrics_file is not None:
            self._metrics_file.write(json.dumps(row) + "\n")
            self._metrics_file.flush()
        self.logger.debug("metrics step=%s %s", step, {k: row[k] for k in row if k not in ("time", "step")})

    # -- progress -----------------------------------------------------------------------------------------------
    def start_progress(self, total: int | None = None, desc: str = "") -> None:
        """Start (or restart) the progress bar; ``total=None`` for an open-ended count.

        On a terminal the primary shows a live bar; elsewhere it logs a progress line every ``progress_interval``.
        """
        self.close_progress()
        if total is not None and total < 0:
            raise ValueError(f"start_progress: total={total} must be >= 0")
        self._progress_total = total
        self._progress_done = 0
        self._progress_started = self._last_line = self._clock()
        self._progress_desc = desc or self.config.name
        self._postfix = {}
        if self.is_primary and self.config.progress and self._terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=self._progress_desc, dynamic_ncols=True, file=self._stream)

    def update_progress(self, n: int = 1) -> None:
        """Advance by ``n`` (0 is fine; past the total is clamped, never an error)."""
        if n < 0:
            raise ValueError(f"update_progress: n={n} must be >= 0")
        if self._progress_total is not None:
            n = max(0, min(n, self._progress_total - self._progress_done))
        self._progress_done += n
        if self._bar is not None and n:
            self._bar.update(n)
        elif n and self._lines_wanted() and self._clock() - self._last_line >= self.config.progress_interval:
            self.logger.info("%s", self._progress_line())

    def set_postfix(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Show values beside the progress (``set_postfix(step_loss=loss, lr=lr)``, as with tqdm in diffusers).

        They appear on the bar, in the progress lines and in the closing summary; each call replaces the last.
        Numbers (tensors too) show with 4 significant digits.
        """
        self._postfix = {**dict(values or {}), **more}
        if self._bar is not None:
            self._bar.set_postfix_str(_format_postfix(self._postfix), refresh=False)

    def progress_stats(self) -> dict[str, float | None]:
        """Steps done, total, rate (steps/s) and ETA (s); rate and ETA are None until they mean something."""
        elapsed = self._clock() - self._progress_started if self._progress_started else 0.0
        rate = self._progress_done / elapsed if elapsed > 0 and self._progress_done > 0 else None
        remaining = None if self._progress_total is None else self._progress_total - self._progress_done
        eta = remaining / rate if rate and remaining is not None else (0.0 if remaining == 0 else None)
        return {"done": self._progress_done, "total": self._progress_total, "rate": rate, "eta": eta}

    def close_progress(self) -> None:
        """Close the bar and log a one-line summary (steps, time, rate, the last postfix values)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._progress_started:
            stats = self.progress_stats()
            rate = f"{stats['rate']:.2f} steps/s" if stats["rate"] else "no steps"
            postfix = f", {_format_postfix(self._postfix)}" if self._postfix else ""
            self.logger.info("progress: %s/%s steps, %s%s", stats["done"], stats["total"], rate, postfix)
            self._progress_started = 0.0

    def _lines_wanted(self) -> bool:
        return self.is_primary and self.config.progress and not self._terminal and bool(self._progress_started)

    def _progress_line(self) -> str:
        self._last_line = self._clock()
        stats = self.progress_stats()
        total = stats["total"]
        done = f"{stats['done']}/{total}" + (f" ({100 * stats['done'] / total:.0f}%)" if total else "")
        rate = f", {stats['rate']:.2f} steps/s" if stats["rate"] else ""
        eta = f", eta {stats['eta']:.0f} s" if stats["eta"] else ""
        postfix = f", {_format_postfix(self._postfix)}" if self._postfix else ""
        return f"{self._progress_desc}: {done}{rate}{eta}{postfix}"

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the progress bar, the metrics file and every handler this logger added. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.close_progress()
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        for handler in self._handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self._handlers.clear()

    def __enter__(self) -> UnifiedLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            self.logger.error("exiting on %s: %s", exc_type.__name__ if exc_type else "error", exc)
        self.close()
