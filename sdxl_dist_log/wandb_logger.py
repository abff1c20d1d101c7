"""WandbLogger: the rank-aware facade every rank calls.

Composition, decided once at construction: a ``Collectives`` (the only torch.distributed user), a backend (the W&B
run on the primary rank, a ``NullBackend`` elsewhere), a ``Dispatcher`` (inline, or one background thread with
``async_metrics``), and the background ``SystemMetrics`` sampler. No rank checks at call sites beyond that choice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

import numpy as np

from sdxl_dist_log import checkpoints
from sdxl_dist_log.backends.base import Backend, NullBackend
from sdxl_dist_log.collectives import Collectives
from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.construction import announce, resolve_config, start_line, without_process_group
from sdxl_dist_log.dispatch import Dispatcher
from sdxl_dist_log.errors import ConfigError, ImageInputError, MetricValueError
from sdxl_dist_log.framing import CallInfo, checked_step
from sdxl_dist_log.identity import CONFIG_SECTION, RunIdentity, launch_record, propose_identity
from sdxl_dist_log.images import convert, transport
from sdxl_dist_log.metrics import apply_prefix
from sdxl_dist_log.preemption import CLOSE_ON_SIGNAL_S, DEFAULT_SIGNALS, SignalChain
from sdxl_dist_log.ranks import Launch, RankInfo
from sdxl_dist_log.reduction import MetricReducer, PreparedMetrics
from sdxl_dist_log.runconfig import deep_merge, redact_secrets
from sdxl_dist_log.straggler import StragglerView

_log = logging.getLogger("sdxl_dist_log")


class WandbLogger:
    """Log metrics, images, checkpoints and config from every rank of a job into one W&B run.

    Every rank constructs it at the same point (after ``init_process_group``, if any) and calls ``log_metrics`` and
    ``log_images`` at the same points: these are collective. ``log_model`` and ``log_config`` are not: call them on
    every rank or on the primary only; only the primary uploads.

    Args:
        config: a ``WandbConfig`` or a mapping of its fields; or the fields as keywords (``**fields``: rules in
            ``construction.resolve_config``). Unknown fields are an error.
        logger: a ``UnifiedLogger`` (or a ``logging.Logger``) that receives this logger's messages.
        rank_info: where this process sits; read from ``env`` when None.
        env: the environment to read the launch from (rank, job ids, ``SDXL_DIST_LOG_*`` overrides); ``os.environ``
            when None. It is read once, here.
        nvml: an NVML module (or a test double with its API) to sample GPUs with; ``pynvml`` when None.
        clock: seconds, monotonic, for ``section`` timings; ``time.perf_counter`` when None.

    Example:
        >>> with WandbLogger(project="sdxl", mode="offline") as wb:  # doctest: +SKIP
        ...     wb.log_metrics({"loss": loss}, step=step)
    """

    def __init__(
        self,
        config: WandbConfig | Mapping[str, Any] | None = None,
        logger: Any | None = None,
        *,
        rank_info: RankInfo | None = None,
        env: Mapping[str, str] | None = None,
        nvml: Any | None = None,
        clock: Callable[[], float] | None = None,
        **fields: Any,
    ) -> None:
        self.config = resolve_config(config, fields)
        self._log = logger if isinstance(logger, logging.Logger) else getattr(logger, "logger", None) or _log
        launch = Launch.from_env(os.environ if env is None else env)  # the one read of the environment
        if rank_info is not None:
            launch = dataclasses.replace(launch, rank=rank_info)
        cfg, rank = self.config, launch.rank
        self._collectives = Collectives.create(rank=rank.rank, world_size=rank.world_size, launch=launch,
                                               timeout=cfg.collective_timeout, primary=cfg.primary_rank)
        if self._collectives.active:
            rank = rank.with_process_group(self._collectives.rank, self._collectives.world_size)
            launch = dataclasses.replace(launch, rank=rank)
        elif rank.world_size > 1:
            self._warn(without_process_group(rank.world_size, cfg.primary_rank))
        if cfg.primary_rank >= rank.world_size:
            raise ConfigError(f"WandbConfig.primary_rank={cfg.primary_rank} is not a rank of this launch "
                              f"(world size {rank.world_size})")
        self.launch = launch
        self.rank_info = rank
        self.is_primary = rank.is_primary(cfg.primary_rank)
        self._nvml = nvml
        self._lock = threading.RLock()
        self._last_step = 0  # the one owner of "the current step": calls without a step log at it
        self._run_config: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._finished = False
        self._backend: Backend = NullBackend()
        self.identity = self._start_run()
        self._metrics = MetricReducer(
            self._collectives, metric_reduce=cfg.metric_reduce, primary_rank=cfg.primary_rank,
            strict_keys=cfg.strict_keys, warn=lambda message, key: self.is_primary and self._warn(message, key))
        self._stragglers = StragglerView.start(self._collectives, rank, cfg, primary=self.is_primary, clock=clock,
                                               warn=self._warn, merge_config=self._merge_run_config)
        self._dispatcher = Dispatcher(threaded=cfg.async_metrics)
        self._system = self._start_system_metrics()
        self._signals = SignalChain(self._close_on_signal, self._log)

    # -- construction -------------------------------------------------------------------------------------------
    def _start_run(self) -> RunIdentity:
        cfg = self.config
        proposal: dict[str, Any] | None = None
        if self.is_primary:
            from sdxl_dist_log.backends.wandb_backend import start_backend

            proposed, resume = propose_identity(cfg, self.launch)
            self._run_config = redact_secrets(deep_merge(cfg.config, {CONFIG_SECTION: launch_record(cfg, self.launch)}))
            try:
                self._backend, identity = start_backend(cfg, proposed, self._run_config, resume, logger=self._log)
            except Exception as exc:  # even the offline init failed (disk full, ...): train on, log nothing
                self._warn(f"W&B run could not be started ({type(exc).__name__}: {exc}); logging is disabled")
                identity = dataclasses.replace(proposed, mode="disabled", fallback_reason=str(exc))
            proposal = identity.to_json()
        # Every rank learns the outcome (mode after any fallback), so no rank waits longer than the primary's bound.
        shared = self._collectives.broadcast_json(
            proposal, src=cfg.primary_rank, call=CallInfo("init"),
            timeout=2 * cfg.init_timeout + cfg.collective_timeout,
        )
        identity = RunIdentity.from_json(shared) if shared is not None else RunIdentity("local", "local", None, None)
        if self.is_primary:
            announce(self._log, start_line(identity, getattr(self._backend.run, "url", None)))
        return identity

    def _start_system_metrics(self) -> Any:
        cfg = self.config
        if not cfg.log_system_metrics or self.identity.mode == "disabled":  # every rank knows the mode by now
            return None
        from sdxl_dist_log.system import start_system_metrics

        return start_system_metrics(
            self.rank_info, self._collectives.store, interval=cfg.system_metrics_interval, run_dir=cfg.dir,
            sink=self._log_system_row if self.is_primary else None, aggregate_only=cfg.system_metrics_aggregate_only,
            nvml=self._nvml, namespace=f"{self._collectives.namespace}/sys", logger=self._log)

    # -- metrics ------------------------------------------------------------------------------------------------
    def log_metrics(
        self,
        metrics: Mapping[str, Any],
        step: int | None = None,
        *,
        commit: bool = True,
        prefix: str | None = None,
        reduce: str | Mapping[str, str] | None = None,
    ) -> dict[str, float] | None:
        """Reduce ``metrics`` over all ranks in one collective and log one row on the primary. Collective.

        Args:
            metrics: key -> python number, numpy scalar, or 0-d/1-element tensor (CPU or CUDA).
            step: the training step (an int >= 0); the last one when None.
            commit: False keeps the values pending and merges them into the next committed row.
            prefix: key prefix; ``WandbConfig.metric_prefix`` when None, "" for none.
            reduce: op for all keys ("mean", "sum", "min", "max", "per_rank", "local") or key/glob -> op;
                ``WandbConfig.metric_reduce`` and then "mean" fill in.

        Returns:
            The logged (reduced, prefixed) values, or None with ``async_metrics`` (they are computed later).

        Raises:
            MetricValueError: a key or value is not usable, or ``step`` is not an int >= 0, on any rank (raised on
                every rank; nothing of the call is logged).
            MetricKeyMismatchError: with ``strict_keys``, ranks passed different keys (raised on every rank).
            CollectiveError: ranks did not all reach the call within ``collective_timeout`` (named).
        """
        sections = self._stragglers.take()
        prepared = self._metrics.prepare(metrics, reduce, non_blocking=self._dispatcher.threaded, sections=sections)
        try:  # a bad step, like a bad value, must still reach the collective (as an error flag)
            step = checked_step(step, MetricValueError)
        except MetricValueError as exc:
            step, prepared = None, prepared.failed(exc)
        if prepared.error is not None and not self._collectives.active:
            raise prepared.error
        call = CallInfo("log_metrics", step)
        prefix = self.config.metric_prefix if prefix is None else prefix
        result: list[dict[str, float]] = []
        self._dispatcher.submit(lambda: result.append(self._reduce_and_log(prepared, call, prefix, commit)))
        # a background job's error surfaces only after this call was queued: raising before it would make this rank
        # skip a collective that the other ranks make
        self._dispatcher.raise_pending()
        return result[0] if result else None

    def _reduce_and_log(self, prepared: PreparedMetrics, call: CallInfo, prefix: str, commit: bool) -> dict[str, float]:
        reduced = self._metrics.reduce(prepared, call)
        logged = apply_prefix(reduced.values, prefix)
        self._warn_if_degraded(call)
        self._write_row(self._stragglers.row(logged, prepared.sections, reduced.section_times), call.step, commit)
        return logged

    def section(self, name: str) -> AbstractContextManager[None]:
        """``with wb.section("data"):`` times a part of the step for the straggler view (``StragglerView.section``)."""
        return self._stragglers.section(name)

    # -- images -------------------------------------------------------------------------------------------------
    def log_images(
        self,
        images: Any,
        captions: Sequence[str] | str | None = None,
        step: int | None = None,
        *,
        prefix: str | None = None,
        value_range: tuple[float, float] | None = None,
    ) -> int:
        """Send every rank's images to the run, at most ``max_images_to_log`` in all (a fair share each). Collective.

        Args:
            images: a PIL image, numpy HW/HWC array, torch HW/CHW/BCHW tensor, or a sequence of them; zero images
                (``[]``) is fine on ranks that have none.
            captions: one per image, or None; with several ranks each caption is marked with its rank.
            step: the training step (an int >= 0); the last one when None.
            prefix: key prefix, ``WandbConfig.sample_prefix`` when None: images land under ``<prefix>/images``.
            value_range: range of float images; ``WandbConfig.image_value_range`` when None.

        Returns:
            The number of images logged in the run (on the primary; on other ranks, how many this rank sent);
            0 with ``async_metrics``, where the gather happens later.

        Raises:
            ImageInputError: an image, the captions or ``step`` are invalid on some rank (every rank raises; on
                other ranks than the culprit, the message names it).
        """
        cfg = self.config
        value_range = value_range or cfg.image_value_range
        error: Exception | None = None
        arrays: list[np.ndarray] = []
        names: list[str | None] = []
        try:  # any failure here must still reach the collective (as an error flag), or this rank skips it
            step = checked_step(step, ImageInputError)
            arrays = convert.to_uint8_hwc(images, value_range=value_range) if convert.has_images(images) else []
            names = convert.normalize_captions(captions, len(arrays))
        except Exception as exc:
            error = exc if isinstance(exc, ImageInputError) else ImageInputError(f"{type(exc).__name__}: {exc}")
            step = step if isinstance(step, int) else None
            arrays, names = [], []
        if error is not None and not self._collectives.active:
            raise error
        key = f"{cfg.sample_prefix if prefix is None else prefix}/images".lstrip("/")
        call = CallInfo("log_images", step)
        sent: list[int] = []
        self._dispatcher.submit(lambda: sent.append(self._gather_and_log_images(arrays, names, error, key, call)))
        self._dispatcher.raise_pending()  # after queueing, as in log_metrics
        return sent[0] if sent else 0

    def _gather_and_log_images(
        self, arrays: list[np.ndarray], captions: list[str | None], error: Exception | None, key: str, call: CallInfo
    ) -> int:
        cap, collectives = self.config.max_images_to_log, self._collectives
        gathered = collectives.run(transport.gather_steps(collectives, arrays, captions, cap, call, error), call)
        if not self.is_primary:
            return gathered.sent
        if gathered.over_cap(cap, call):
            self._warn(gathered.over_cap(cap, call), once_key="image-cap")
        self._warn_if_degraded(call)
        if gathered.images:
            with self._lock:
                self._backend.log_images(key, gathered.images, gathered.captions, self._at_step(call.step))
        return len(gathered.images)

    # -- checkpoints and config ---------------------------------------------------------------------------------
    def log_model(
        self,
        path: str | os.PathLike[str],
        metadata: Mapping[str, Any] | None = None,
        aliases: Sequence[str] | None = None,
        *,
        name: str | None = None,
        type: str = "model",
    ) -> bool:
        """Upload a checkpoint file or directory as a new version of one artifact. Primary only; no collective.

        Other ranks do not wait for this call, but the primary hashes and stages the files before it returns, so a
        large checkpoint delays the primary's next logging collective (and so the others' at that call).

        Successive calls make versions v0, v1, ... of the artifact ``name`` (default ``checkpoint_prefix``).
        ``log_model=False`` makes this a no-op, and ``log_checkpoints=False`` skips calls without a "best" or "final"
        alias.

        Returns:
            True if this rank uploaded it (False on other ranks, when disabled, or when the run has failed).

        Raises:
            FileNotFoundError: ``path`` does not exist (checked on the primary in every mode, before any upload).
        """
        self._dispatcher.raise_pending()
        cfg = self.config
        aliases = list(aliases or [])
        source = checkpoints.existing_source(path) if self.is_primary else None  # bad input fails in every mode
        if source is None or self.identity.mode == "disabled" or not checkpoints.wanted(cfg, aliases):
            return False
        artifact = checkpoints.artifact_name(name or cfg.checkpoint_prefix)
        details = {"source_path": os.path.abspath(source), "step": self._last_step, **dict(metadata or {})}
        uploaded = self._backend.log_artifact(source, name=artifact, type=type, aliases=aliases, metadata=details)
        if uploaded:
            self._log.info(f"checkpoint {source} -> artifact {artifact} aliases={aliases}")
        return uploaded

    def log_config(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into the run config (nested dicts merge key by key; secrets redacted). Primary only.

        Returns:
            The whole merged config as logged.
        """
        self._dispatcher.raise_pending()
        if not isinstance(values, Mapping):
            raise TypeError(f"log_config takes a mapping, got {type(values).__name__}")
        if not self.is_primary:
            return {}
        self._merge_run_config(redact_secrets(values))
        return dict(self._run_config)

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def finish(self, exit_code: int = 0) -> None:
        """Drain queued logging, stop the sampler and close the run, within ``finish_timeout`` seconds in all.

        Raises:
            The first error of a background logging job, after the run is closed (``async_metrics`` only).
        """
        self._finish(exit_code, self.config.finish_timeout)

    def _finish(self, exit_code: int, timeout: float) -> None:
        if self._finished:
            return
        self._finished = True
        deadline = time.monotonic() + timeout
        if not self._dispatcher.close(max(0.0, deadline - time.monotonic())):
            self._warn("queued logging did not finish within finish_timeout; the rest is dropped")
        if self._system is not None:
            self._system.stop(timeout=max(0.1, min(5.0, deadline - time.monotonic())))
        self._collectives.close()
        self._signals.restore()
        self._backend.finish(exit_code, max(1.0, deadline - time.monotonic()))
        self._dispatcher.raise_pending()

    def __enter__(self) -> WandbLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.finish(0)
            return
        try:
            self.finish(1)
        except Exception as pending:  # the training error is the one to see
            self._log.error("while finishing after an error: %s", pending)

    def handle_preemption(self, signals: Sequence[int] = DEFAULT_SIGNALS) -> None:
        """On these signals (SLURM's SIGTERM, SIGUSR1, submitit's SIGUSR2), mark the run as preempting and close it
        within ``min(finish_timeout, 20 s)``, then run the previous handler (submitit's checkpoint and requeue).

        Call from the main thread. A repeated signal changes nothing; see docs/slurm.md, section 6.
        """
        self._signals.install(signals)

    def _close_on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        self._warn(f"received {name}: marking the run as preempting and finishing it")
        self._backend.mark_preempting(name)  # a no-op off the primary (NullBackend)
        self._finish(1, min(self.config.finish_timeout, CLOSE_ON_SIGNAL_S))

    # -- internals ----------------------------------------------------------------------------------------------
    @property
    def run_dir(self) -> str | None:
        return self.identity.run_dir

    run = property(lambda self: self._backend.run, doc="The primary's wandb run, an escape hatch (see quickstart).")

    def _write_row(self, values: Mapping[str, Any], step: int | None, commit: bool) -> None:
        with self._lock:
            self._backend.log_row(values, self._at_step(step), commit)

    def _at_step(self, step: int | None) -> int:
        """The step a row belongs to: the call's, remembered as the current one; the current one when None."""
        if step is not None:
            self._last_step = step
        return self._last_step

    def _log_system_row(self, row: Mapping[str, float]) -> None:
        with self._lock:
            self._record_hostnames()
            self._backend.log_side_row(dict(row), self._last_step)

    def _record_hostnames(self) -> None:
        """Put the node -> host map into the run config whenever a node is seen for the first time."""
        hosts = dict(getattr(self._system, "hostnames", None) or {})
        known = self._run_config.get("sdxl_dist_log", {}).get("hostnames", {})
        named = {f"node{n}": host for n, host in sorted(hosts.items())}
        if named and named != known:
            self._merge_run_config({"sdxl_dist_log": {"hostnames": named}})

    def _merge_run_config(self, values: Mapping[str, Any]) -> None:
        with self._lock:  # merged into the run config; the primary's run gets the top-level sections they touch
            self._run_config = deep_merge(self._run_config, values)
            self._backend.update_config({key: self._run_config[key] for key in values})

    def _warn_if_degraded(self, call: CallInfo) -> None:
        failure = self._collectives.failure
        if failure is not None and self.is_primary:
            self._warn(f"{call}: values are this rank's own, not reduced: logging collectives are off since "
                       f"{failure.call}", once_key="degraded")

    def _warn(self, message: str, once_key: str | None = None) -> None:
        if once_key is not None:
            if once_key in self._warned:
                return
            self._warned.add(once_key)
        self._log.warning(message)


__all__ = ["WandbLogger"]
