"""The primary rank's backend: the only module that imports wandb.

Every row is committed at once and carries the training step under ``step_metric``; W&B plots every key against that
metric (``define_metric("*", step_metric=...)``, as Lightning does with ``trainer/global_step``). So rows are never
dropped for arriving "out of order" (system rows, images logged late for a step), and a killed job loses only what
the last flush interval held.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sdxl_dist_log.backends.base import NullBackend
from sdxl_dist_log.backends.journaled import JournaledBackend
from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.identity import RunIdentity
from sdxl_dist_log.journal import Journal, journal_root
from sdxl_dist_log.secrets import scrub_argv, scrub_text

_log = logging.getLogger("sdxl_dist_log")


class WandbSession:
    """One W&B run as the writer thread uses it (``writer.Session``): the current part, and the next ones.

    Every row is committed at once with the step under ``step_metric``; W&B plots every key against that metric.
    A new part (after the W&B service died) is the same run id with ``resume="allow"``, started with the settings
    of the first part, except that it records no code, requirements or machine facts again.
    """

    def __init__(self, run: Any, *, step_metric: str) -> None:
        self.run_id: str = run.id
        self._step_metric = step_metric
        self._root = os.path.abspath(run.settings.root_dir or ".")  # init's cwd: the script may chdir later
        self.run: Any = None
        self._use(run)

    @property
    def root_dir(self) -> str:
        """The directory the run was started under (``WandbConfig.dir``), absolute."""
        return self._root

    def _use(self, run: Any) -> None:
        self.run = run
        sync_file = getattr(run.settings, "sync_file", None)
        self._file = os.path.abspath(sync_file) if sync_file else None
        self._service = _service_process()
        run.define_metric(self._step_metric)
        run.define_metric("*", step_metric=self._step_metric, step_sync=True)

    def run_file(self) -> str | None:
        return self._file

    def log(self, row: Mapping[str, Any]) -> None:
        self.run.log(dict(row))

    def log_images(self, key: str, files: Sequence[str], captions: Sequence[str | None], step: int) -> None:
        import wandb

        self.run.log({key: [wandb.Image(f, caption=c) for f, c in zip(files, captions)], self._step_metric: step})

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], files: Sequence[str],
                  step: int) -> None:
        import wandb

        def cell(value: Any) -> Any:
            return wandb.Image(files[value["image"]]) if isinstance(value, dict) and "image" in value else value

        table = wandb.Table(columns=list(columns), data=[[cell(v) for v in row] for row in rows])
        self.run.log({key: table, self._step_metric: step})

    def log_artifact(self, path: str, *, name: str, type: str, aliases: Sequence[str],
                     metadata: Mapping[str, Any]) -> None:
        import wandb

        artifact = wandb.Artifact(name, type=type, metadata=dict(metadata))
        if os.path.isdir(path):
            artifact.add_dir(path)
        else:
            artifact.add_file(path)
        self.run.log_artifact(artifact, aliases=list(aliases))

    def update_config(self, values: Mapping[str, Any]) -> None:
        self.run.config.update(dict(values), allow_val_change=True)

    def update_summary(self, values: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(values))

    def mark_preempting(self) -> None:
        self.run.mark_preempting()

    def finish(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)

    def failure(self, exc: BaseException) -> str | None:
        """Why the service is gone when ``exc`` means it: its process exited, or the connection to it broke."""
        service = self._service
        code = service.poll() if service is not None else None
        if code is not None:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            return f"wandb-core (pid {service.pid}) ended with {how}"
        if isinstance(exc, ConnectionError) or type(exc).__name__ in ("MailboxClosedError", "HandleAbandonedError"):
            return f"the connection to wandb-core broke ({type(exc).__name__}: {exc})"
        return None

    def reopen(self, config: Mapping[str, Any], timeout: float) -> None:
        import wandb

        old = self.run.settings
        modes = [old.mode] + (["offline"] if old.mode == "online" else [])
        for index, mode in enumerate(modes):
            if mode == "offline":
                wandb.setup(wandb.Settings(mode="offline"))  # no error report over the network at exit
            # the first part recorded the code, requirements, argv and machine: a new part records none of them
            settings = _run_settings(mode, init_timeout=max(1.0, min(float(old.init_timeout), timeout)),
                                     finish_timeout=old.finish_timeout,
                                     flush_interval=old.x_transaction_log_flush_interval,
                                     x_disable_meta=True, x_disable_machine_info=True)
            try:
                with _argv_scrubbed():  # x_disable_meta records no argv; scrubbed all the same
                    run = wandb.init(project=old.project, entity=old.entity, name=old.run_name, id=self.run_id,
                                     group=old.run_group, job_type=old.run_job_type, tags=list(old.run_tags or ()),
                                     notes=old.run_notes, dir=self._root, resume="allow", config=dict(config),
                                     settings=settings)
            except Exception:
                if index + 1 == len(modes):
                    raise
                self.detach()
                continue
            self._use(run)
            return

    def detach(self) -> None:
        import wandb

        try:
            wandb.teardown()
        except BaseException:  # noqa: BLE001 - a dead service cannot be torn down (and may sys.exit): forget it
            pass


def _service_process() -> Any:
    """wandb-core's process (a ``subprocess.Popen``) as this process started it, or None when it cannot tell."""
    try:
        from wandb.sdk import wandb_setup

        return wandb_setup._singleton._connection._proc._process  # type: ignore[union-attr]
    except AttributeError:
        return None


class WandbBackend(JournaledBackend):
    """The primary rank's backend for one W&B run: journaled rows, one writer thread, a dead service replaced.

    Args:
        run: the run ``wandb.init`` returned (its first part).
        step_metric: the key that carries the training step.
        logger: where reports go.
    """

    def __init__(self, run: Any, *, step_metric: str, logger: logging.Logger | None = None) -> None:
        from sdxl_dist_log.offline.decode import count_records

        session = WandbSession(run, step_metric=step_metric)
        journal = Journal(journal_root(session.root_dir, session.run_id), run_id=session.run_id)
        super().__init__(session, journal, step_metric=step_metric, logger=logger or _log, count=count_records,
                         config=run.config.as_dict(), reopen_timeout=float(run.settings.init_timeout))
        self.take_over()

    @property
    def run(self) -> Any:
        """The W&B run of the current part."""
        return self.session.run


def _settings(config: WandbConfig, mode: str, init_timeout: float | None = None) -> Any:
    """The run's ``wandb.Settings``; ``init_timeout`` (``config.init_timeout`` when None) bounds wandb's wait."""
    return _run_settings(mode, init_timeout=config.init_timeout if init_timeout is None else init_timeout,
                         finish_timeout=config.finish_timeout, flush_interval=config.flush_interval,
                         save_code=config.save_code, save_requirements=config.save_requirements)


def _run_settings(mode: str, *, init_timeout: float, finish_timeout: float, flush_interval: float,
                  save_code: bool = False, save_requirements: bool = False, **extra: Any) -> Any:
    """The ``wandb.Settings`` of every part of a run (the first, and each one that replaces a dead service's)."""
    import wandb

    return wandb.Settings(
        mode=mode,
        init_timeout=init_timeout,
        finish_timeout=finish_timeout,
        x_transaction_log_flush_interval=flush_interval,
        x_disable_stats=True,  # sdxl_dist_log samples every node itself; W&B's sampler sees only this one
        console="off",
        silent=True,
        save_code=save_code,
        x_save_requirements=save_requirements,
        **extra,
    )


def start_backend(
    config: WandbConfig, proposed: RunIdentity, run_config: Mapping[str, Any], resume: str | None,
    logger: logging.Logger | None = None, deadline: float | None = None,
) -> tuple[WandbBackend | NullBackend, RunIdentity]:
    """Start the run on the primary rank, falling back within bounded time instead of failing the job.

    An online run without an API key (or with a malformed one) falls back at once, without prompting or asking the
    server; one whose server does not answer falls back after ``init_timeout``, the only bound wandb waits under:
    the credentials check makes no request, W&B's own telemetry (which would export to that server at exit) is off,
    and the failed attempt's service is let go without waiting for it to exit. The fallback is ``fallback_mode``
    ("offline" by default).

    Args:
        deadline: the ``time.monotonic()`` by which an online run must have started (the logger's construction
            plus ``init_timeout``): importing wandb and starting its service count against it, and wandb is given
            what is left (at least ``MIN_ONLINE_ATTEMPT_S``). ``init_timeout`` from now when None.

    Returns:
        The backend and the identity the run really has (mode after fallback, run dir, fallback reason).
    """
    log = logger or _log
    deadline = time.monotonic() + config.init_timeout if deadline is None else deadline
    if config.mode == "disabled":
        return NullBackend(), dataclasses.replace(proposed, mode="disabled")
    import wandb

    _without_wandb_telemetry()
    os.makedirs(config.dir, exist_ok=True)
    mode = config.mode
    reason = _missing_credentials(wandb) if mode == "online" else None
    if mode == "online" and reason is None:
        attempt_started = time.time()
        try:
            budget = max(MIN_ONLINE_ATTEMPT_S, deadline - time.monotonic())
            return _init(config, proposed, run_config, resume, "online", log, init_timeout=budget)
        except Exception as exc:  # CommError, timeouts, auth errors: logging must not kill training
            reason = f"online init failed: {type(exc).__name__}: {exc}"
            _release_service(wandb)
            _remove_failed_attempt(config.dir, proposed.run_id, since=attempt_started)
    if reason is not None:
        mode = config.fallback_mode
        log.warning("W&B run %s: %s; logging %s instead", proposed.run_id, reason, mode)
        if mode == "disabled":
            return NullBackend(), dataclasses.replace(proposed, mode="disabled", fallback_reason=reason)
    wandb.setup(wandb.Settings(mode="offline"))  # keeps wandb from reporting errors over the network at exit
    backend, identity = _init(config, proposed, run_config, resume, "offline", log)
    return backend, dataclasses.replace(identity, fallback_reason=reason)


MIN_ONLINE_ATTEMPT_S = 1.0
"""The least time wandb is given to start an online run, whatever is left of ``init_timeout``."""


def _without_wandb_telemetry() -> None:
    """Turn off W&B's own telemetry in this process: OpenTelemetry metrics and logs about wandb itself.

    They are exported to the W&B server at exit, waiting up to 30 s for it: behind a server that accepts and never
    answers (an online init that fell back), the process would hang that long after the script's last line. The
    run's data is not affected.
    """
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy
    except ImportError:  # a wandb without it exports nothing at exit
        return
    opentelemetry_proxy.disable()


def _missing_credentials(wandb: Any) -> str | None:
    """Why an online run cannot start for want of credentials, found without a request to the server; None if none.

    ``wandb.login`` prints "logged in as <user>" unless silent, and asks the server for that user name to do so:
    outside ``init_timeout``, and for as long as an unanswering server holds the request. Silent, it reads the
    environment, ``.netrc`` and W&B's settings only.
    """
    wandb.setup(wandb.Settings(silent=True))
    try:
        found = wandb.login(prompt=False, verify=False)
    except Exception as exc:  # a malformed key (AuthenticationError), two conflicting credential variables, ...
        return f"W&B credentials rejected ({type(exc).__name__}: {exc})"
    return None if found else "no W&B API key (set WANDB_API_KEY or run `wandb login`)"


_HANDOFF_WAIT_S = 5.0


def _release_service(wandb: Any) -> None:
    """Let go of the W&B service of a failed online attempt, without waiting for its process to exit.

    wandb-core keeps the failed attempt's run id ("run ID ... is in use"), so the offline run, which keeps the id
    (a requeued job resumes it), needs a new service. A service whose server accepted and never answered takes about
    2 s to exit once told to (docs/performance.md): ``wandb.teardown`` runs on a thread of its own, and the offline
    run starts as soon as wandb has dropped the old service (its singleton, then its token in the environment, the
    first things teardown does), not when the old process is gone.
    """
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib.service import service_token

    old = wandb_setup.singleton()
    closer = threading.Thread(target=wandb.teardown, name="sdxl-dist-log-wandb-teardown", daemon=True)
    closer.start()
    deadline = time.monotonic() + _HANDOFF_WAIT_S
    while closer.is_alive() and time.monotonic() < deadline:
        if wandb_setup.singleton() is not old and service_token.from_env() is None:
            return
        time.sleep(0.01)
    closer.join()  # no handoff seen within the wait: a wandb that tears down otherwise; wait for all of it


def _remove_failed_attempt(root: str, run_id: str, since: float) -> None:
    """Delete the directory a failed online init left (nothing was logged to it), so only the real run remains."""
    for path in glob.glob(os.path.join(root, "wandb", f"run-*-{glob.escape(run_id)}")):
        if os.path.getmtime(path) >= since - 1.0:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _argv_scrubbed() -> Iterator[None]:
    """Hide secrets on the command line from ``wandb.init`` while it starts the run.

    W&B stores ``sys.argv`` in the run's environment record (its Settings' computed ``_args``, read when the run
    starts): ``--hub_token hf_...`` would be in the ``.wandb`` file and, online, in the run's metadata. No setting
    replaces it, so the process's argv is the redacted one (``secrets.scrub_argv``) for the duration of the call;
    the program, host and Python are recorded as usual.
    """
    saved = sys.argv
    sys.argv = [saved[0], *scrub_argv(saved[1:])] if saved else saved
    try:
        yield
    finally:
        sys.argv = saved


def _init(
    config: WandbConfig, proposed: RunIdentity, run_config: Mapping[str, Any], resume: str | None, mode: str,
    logger: logging.Logger, init_timeout: float | None = None,
) -> tuple[WandbBackend, RunIdentity]:
    import wandb

    kwargs: dict[str, Any] = {}
    if config.reinit:
        kwargs["reinit"] = "finish_previous"
    with _argv_scrubbed():
        run = wandb.init(
            project=config.project,
            entity=config.entity,
            name=proposed.name,
            id=proposed.run_id,
            group=proposed.group,
            job_type=proposed.job_type,
            tags=list(proposed.tags),
            notes=scrub_text(config.notes) if config.notes else config.notes,
            dir=config.dir,
            resume=resume,
            config=dict(run_config),
            sync_tensorboard=config.sync_tensorboard,
            save_code=config.save_code,
            settings=_settings(config, mode, init_timeout),
            **kwargs,
        )
    backend = WandbBackend(run, step_metric=config.step_metric, logger=logger)
    run_dir = os.path.abspath(os.path.dirname(run.dir.rstrip("/"))) if run.dir else None
    return backend, dataclasses.replace(proposed, mode=mode, run_dir=run_dir)
