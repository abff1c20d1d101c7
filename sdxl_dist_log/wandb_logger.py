"""WandbLogger: the rank-aware facade every rank calls.

Composition, decided once at construction: a ``Collectives`` (the only torch.distributed user; none at all with
``mode="disabled"``), a backend (the W&B run on the primary rank, a ``NullBackend`` elsewhere), a ``Dispatcher``
(inline, or one background thread with ``async_metrics``), a ``FaultPolicy`` (``on_logging_fault``), the
``MainProcessLog`` for calls from one rank, and the background ``SystemMetrics`` sampler. No rank checks at call
sites beyond that choice.
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
from sdxl_dist_log.arguments import checked_call, checked_image_call, own_error
from sdxl_dist_log.backends.base import Backend, NullBackend
from sdxl_dist_log.collectives import Collectives
from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.construction import announce, check_primary_rank, resolve_config, start_line, without_process_group
from sdxl_dist_log.dispatch import Dispatcher
from sdxl_dist_log.errors import MetricValueError
from sdxl_dist_log.faults import FaultPolicy, Notices
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.identity import CONFIG_SECTION, RunIdentity, launch_record, propose_identity, recorded
from sdxl_dist_log.images import transport
from sdxl_dist_log.main_process import MainProcessLog
from sdxl_dist_log.metrics import apply_prefix
from sdxl_dist_log.preemption import CLOSE_ON_SIGNAL_S, DEFAULT_SIGNALS, SignalChain
from sdxl_dist_log.ranks import Launch, RankInfo
from sdxl_dist_log.reduction import MetricReducer, PreparedMetrics
from sdxl_dist_log.runconfig import checked_config, deep_merge
from sdxl_dist_log.secrets import redact_secrets
from sdxl_dist_log.straggler import StragglerView

_log = logging.getLogger("sdxl_dist_log")


class WandbLogger:
    """Log metrics, images, checkpoints and config from every rank of a job into one W&B run.

    Every rank constructs it at the same point (after ``init_process_group``, if any) and calls ``log_metrics`` and
    ``log_images`` at the same points: these are collective. ``log_model`` and ``log_config`` are not: call them on
    every rank or on the primary only; only the primary uploads. Under ``if accelerator.is_main_process:`` log
    through ``main_process`` (a ``MainProcessLog``): the same calls, no collective. A call's own bad argument raises
    where it was made; a fault between ranks follows ``WandbConfig.on_logging_fault`` (docs/distributed.md).

    Args:
        config: a ``WandbConfig`` or a mapping of its fields; or the fields as keywords (``**fields``: rules in
            ``construction.resolve_config``). Unknown fields are an error.
        logger: a ``UnifiedLogger`` (or a ``logging.Logger``) that receives this logger's messages.
        rank_info: where this process sits; read from ``env`` when None.
        env: the environment to read the launch from (rank, job ids, ``SDXL_DIST_LOG_*`` overrides); ``os.environ``
            when None. It is read once, here.
        nvml: an NVML module (or a test double with its API) to sample GPUs with; ``pynvml`` when None.
        clock: seconds, monotonic, for ``section`` timings; ``time.perf_counter`` when None.
        backend: what the primary writes to instead of the W&B run it would start: ``NullBackend()`` runs every
            collective without W&B (benchmarks and tests). ``mode="disabled"`` makes no collective at all.

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
        backend: Backend | None = None,
        **fields: Any,
    ) -> None:
        started = time.monotonic()  # init_timeout counts from here: a fallback run is ready about 1 s after it
        self.config = resolve_config(config, fields)
        self._log = logger if isinstance(logger, logging.Logger) else getattr(logger, "logger", None) or _log
        notices = Notices(self._log)  # every message of the logger: secrets scrubbed, keyed warnings once
        self._warn, self._info = notices.warn, notices.info
        launch = Launch.from_env(os.environ if env is None else env)  # the one read of the environment
        if rank_info is not None:
            launch = dataclasses.replace(launch, rank=rank_info)
        cfg, rank = self.config, launch.rank
        # disabled: every rank has this config, so no rank needs another's word: no group, no collective at all
        self._collectives = Collectives(rank=rank.rank, world_size=1, timeout=cfg.collective_timeout) \
            if cfg.mode == "disabled" else Collectives.create(rank=rank.rank, world_size=rank.world_size,
                                                              launch=launch, timeout=cfg.collective_timeout,
                                                              primary=cfg.primary_rank)
        if self._collectives.active:
            rank = rank.with_process_group(self._collectives.rank, self._collectives.world_size)
            launch = dataclasses.replace(launch, rank=rank)
            self._collectives.warn_when_waiting(cfg.collective_warn_after, self._warn)
        elif rank.world_size > 1 and cfg.mode != "disabled":
            self._warn(without_process_group(rank.world_size, cfg.primary_rank))
        check_primary_rank(cfg.primary_rank, rank.world_size)
        self.launch = launch
        self.rank_info = rank
        self.is_primary = rank.is_primary(cfg.primary_rank)
        self._nvml = nvml
        self._lock, self._config_lock = threading.RLock(), threading.Lock()
        self._last_step = 0  # the one owner of "the current step": calls without a step log at it
        self._run_config: dict[str, Any] = {}
        self._finished = False
        self._backend: Backend = NullBackend()
        self._faults = FaultPolicy(cfg.on_logging_fault, notices.error)
        self.identity = self._start_run(backend, started + cfg.init_timeout)
        self._off = self.identity.mode == "disabled"  # known alike on every rank: calls return at once, on all
        self.main_process = MainProcessLog(self._write, cfg, is_primary=self.is_primary, rank=rank.rank,
                                           disabled=self._off, warn=self._warn)
        self._metrics = MetricReducer(
            self._collectives, metric_reduce=cfg.metric_reduce, primary_rank=cfg.primary_rank,
            strict_keys=cfg.strict_keys, warn=lambda message, key: self.is_primary and self._warn(message, key))
        self._stragglers = StragglerView.start(self._collectives, rank, cfg, primary=self.is_primary, clock=clock,
                                               warn=self._warn, merge_config=self._merge_run_config)
        self._dispatcher = Dispatcher(threaded=cfg.async_metrics)
        self._system = self._start_system_metrics()
        self._signals = SignalChain(self._close_on_signal, self._log)

    # -- construction -------------------------------------------------------------------------------------------
    def _start_run(self, backend: Backend | None, deadline: float) -> RunIdentity:
        cfg = self.config
        proposal: dict[str, Any] | None = None
        if self.is_primary:
            from sdxl_dist_log.backends.wandb_backend import start_backend

            proposed, resume = propose_identity(cfg, self.launch)
            base = checked_config(cfg.config, "WandbConfig.config")
            self._run_config = redact_secrets(deep_merge(base, {CONFIG_SECTION: launch_record(cfg, self.launch)}))
            try:
                self._backend, identity = (backend, proposed) if backend is not None else start_backend(
                    cfg, proposed, self._run_config, resume, logger=self._log, deadline=deadline)
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
        if self.is_primary and backend is None:  # a given backend (tests, benchmarks) has no run to point at
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
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, *, commit: bool = True,
                    prefix: str | None = None,
                    reduce: str | Mapping[str, str] | None = None) -> dict[str, float] | None:
        """Reduce ``metrics`` over all ranks in one collective and log one row on the primary. Collective.

        Args:
            metrics: key -> python number, numpy scalar, or 0-d/1-element tensor (CPU or CUDA).
            step: the training step (an int >= 0); the last one when None.
            commit: False keeps the values pending and merges them into the next committed row.
            prefix: key prefix; ``WandbConfig.metric_prefix`` when None, "" for none.
            reduce: op for all keys ("mean", "sum", "min", "max", "per_rank", "local") or key/glob -> op;
                ``WandbConfig.metric_reduce`` and then "mean" fill in.

        Returns:
            The logged (reduced, prefixed) values; None with ``async_metrics`` (they are computed later), with
            ``mode="disabled"`` (nothing is reduced), and after a fault let pass by ``on_logging_fault``.

        Raises:
            MetricValueError: this rank's key, value, ``step``, ``reduce`` or ``prefix`` is not usable (named); its
                flagged row reaches the other ranks first (a logging fault there). Nothing of the call is logged.
            MetricKeyMismatchError: with ``strict_keys``, ranks passed different keys (raised on every rank).
            CollectiveError: the collective failed (ranks named), with ``on_logging_fault="raise"`` only.
        """
        if self._off:
            return None
        sections = self._stragglers.take()
        prepared = self._metrics.prepare(metrics, reduce, non_blocking=self._dispatcher.threaded, sections=sections)
        step, error = checked_call(step, prefix, MetricValueError)
        if error is not None:  # a bad step, like a bad value, must still reach the collective (as an error flag)
            prepared = prepared.failed(error)
        call, prefix = CallInfo("log_metrics", step), self.config.metric_prefix if prefix is None else prefix
        return self._collective(lambda: self._reduce_and_log(prepared, call, prefix, commit), call, prepared.error,
                                None)

    def _collective(self, job: Callable[[], Any], call: CallInfo, own: Exception | None, fallback: Any) -> Any:
        """Run ``job`` (a call's collective part) under the fault policy, inline or queued (then return ``fallback``).
        This rank's own input error is raised once its flagged row is on its way; an earlier background job's error
        only after this call was queued (raising first would make this rank skip a collective the others make)."""
        if own is not None and not self._collectives.active:
            raise own_error(own, call, self.rank_info.rank, self.rank_info.world_size)
        result: list[Any] = []
        self._dispatcher.submit(lambda: result.append(self._faults.run(job, fallback, own)))
        if own is not None:
            raise own_error(own, call, self.rank_info.rank, self.rank_info.world_size)
        self._dispatcher.raise_pending()
        return result[0] if result else fallback

    def _reduce_and_log(self, prepared: PreparedMetrics, call: CallInfo, prefix: str, commit: bool) -> dict[str, float]:
        reduced = self._metrics.reduce(prepared, call)
        logged = apply_prefix(reduced.values, prefix)
        self._warn_if_degraded(call)
        self._write("log_row", self._stragglers.row(logged, prepared.sections, reduced.section_times),
                    step=call.step, commit=commit)
        return logged

    def section(self, name: str) -> AbstractContextManager[None]:
        """``with wb.section("data"):`` times a part of the step for the straggler view (``StragglerView.section``)."""
        return self._stragglers.section(name)

    # -- images -------------------------------------------------------------------------------------------------
    def log_images(self, images: Any, captions: Sequence[str] | str | None = None, step: int | None = None, *,
                   prefix: str | None = None, value_range: tuple[float, float] | None = None) -> int:
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
            0 with ``async_metrics`` (the gather happens later), with ``mode="disabled"``, and after a fault let pass.

        Raises:
            ImageInputError: this rank's images, captions, ``step``, ``prefix`` or ``value_range`` are invalid (named);
                its flagged offer reaches the other ranks first (a logging fault there).
            CollectiveError: the collective failed (ranks named), with ``on_logging_fault="raise"`` only.
        """
        if self._off:
            return 0
        cfg = self.config
        step, arrays, names, error = checked_image_call(images, captions, step, prefix,
                                                        value_range or cfg.image_value_range)
        call = CallInfo("log_images", step)
        key = f"{cfg.sample_prefix if prefix is None or error else prefix}/images".lstrip("/")
        return self._collective(lambda: self._gather_and_log_images(arrays, names, error, key, call), call, error, 0)

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
            self._write("log_images", key, gathered.images, gathered.captions, step=call.step)
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
        large checkpoint delays the primary's next logging collective (and so the others' at that call). Successive
        calls make versions v0, v1, ... of the artifact ``name`` (default ``checkpoint_prefix``). ``log_model=False``
        makes this a no-op; ``log_checkpoints=False`` skips calls without a "best" or "final" alias.

        Returns:
            True if this rank uploaded it (False on other ranks, when disabled, or when the run has failed).

        Raises:
            CheckpointError: a bad argument (on any rank); on the primary, which alone reads the files, a missing
                ``path``, a broken symbolic link, a link loop or an unreadable file under it (named), in every mode.
        """
        self._dispatcher.raise_pending()
        cfg = self.config
        aliases, metadata = checkpoints.checked_arguments(path, aliases, name, type, metadata)
        if not self.is_primary:
            return False
        source = checkpoints.checked_source(path)  # a bad path fails alike whether or not this run uploads
        if self._off or not checkpoints.wanted(cfg, aliases):
            return False
        artifact = checkpoints.artifact_name(name or cfg.checkpoint_prefix)
        details = checkpoints.upload_metadata(source, self._last_step, metadata)
        uploaded = self._backend.log_artifact(source, name=artifact, type=type, aliases=aliases, metadata=details)
        if uploaded:
            self._info(f"checkpoint {os.fspath(path)} -> artifact {artifact} aliases={aliases}")
        return uploaded

    def log_config(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``values`` into the run config (nested dicts merge key by key; secrets redacted). Primary only.

        Returns:
            The whole merged config as logged (on the primary; {} elsewhere).

        Raises:
            RunConfigError: a key or value W&B cannot store, on any rank that calls (named: ``'optim.betas[1]'``).
        """
        self._dispatcher.raise_pending()
        clean = redact_secrets(checked_config(values, "log_config"))
        if not self.is_primary:
            return {}
        self._merge_run_config(clean)
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
    run_dir = property(lambda self: self.identity.run_dir, doc="The W&B run's directory on the primary, or None.")
    run = property(lambda self: self._backend.run, doc="The primary's wandb run, an escape hatch (see quickstart).")

    def _write(self, method: str, *args: Any, step: int | None, **kwargs: Any) -> None:
        """Call the backend's ``method`` under the lock, at the row's step (``_at_step``)."""
        with self._lock:
            getattr(self._backend, method)(*args, step=self._at_step(step), **kwargs)

    def _at_step(self, step: int | None) -> int:
        """The step a row belongs to: the call's, remembered as the current one; the current one when None."""
        if step is not None:
            self._last_step = step
        return self._last_step

    def _log_system_row(self, row: Mapping[str, float]) -> None:
        """Write a system row; a node seen for the first time first puts its host into the run config."""
        hosts = dict(getattr(self._system, "hostnames", None) or {})
        known = recorded(self._run_config, "hostnames") or {}
        named = {f"node{n}": host for n, host in sorted(hosts.items())}
        if named and named != known:
            self._merge_run_config({CONFIG_SECTION: {"hostnames": named}})
        self._write("log_side_row", dict(row), step=None)

    def _merge_run_config(self, values: Mapping[str, Any]) -> None:
        with self._config_lock:  # merges reach the run in order; logging calls do not wait for W&B's answer
            with self._lock:  # the primary's run gets the top-level sections the merge touched
                self._run_config = deep_merge(self._run_config, values)
                sections = {key: self._run_config[key] for key in values}
            self._backend.update_config(sections)

    def _warn_if_degraded(self, call: CallInfo) -> None:
        failure = self._collectives.failure
        if failure is not None and self.is_primary:
            self._warn(f"{call}: values are this rank's own, not reduced: logging collectives are off since "
                       f"{failure.call}", once_key="degraded")


__all__ = ["WandbLogger"]
