"""An HF Accelerate tracker over the rank-aware logger: ``Accelerator(log_with=[SdxlTracker(...)])``.

How Accelerate calls a tracker (accelerate 1.x, ``accelerate/accelerator.py``): ``init_trackers``, ``log`` and the
tracker loop of ``end_training`` run on the **main process only** (``Accelerator.init_trackers`` and ``.log`` are
decorated with ``Accelerator.on_main_process``, whatever the tracker's ``main_process_only`` says), and
``accelerator.trackers`` stays empty on the other processes. A rank-aware call needs every rank, so the tracker has two
faces:

- Accelerate's, on the main process, without a collective: ``accelerator.init_trackers(project, config)`` merges the
  config into the run; ``accelerator.log(values, step=...)`` writes the main process's values as they are (what
  Accelerate's own ``"wandb"`` tracker does), into the one run, with the step metric; ``end_training`` closes it.
- the rank-aware one, on **every** rank: ``tracker.log_all_ranks(values, step=...)`` reduces all scalars of the call
  over the ranks in one collective and sends every rank's images (PIL, arrays, tensors or ``wandb.Image``) to the
  run under ``<key>/images``; ``tracker.wandb_logger`` is the ``WandbLogger`` itself (``log_metrics``,
  ``log_images``, ``log_model``, ...).

The logger is built at the first rank-aware call (a collective: every rank makes it), or at ``init_trackers`` in a
single-process job. ``tracker.log_model(path)`` uploads a checkpoint (``accelerator.save_state``'s folder) from the
main process, without a collective. The tracker's ``name`` is ``"wandb"``, so ``accelerator.get_tracker("wandb")``
and diffusers' ``if tracker.name == "wandb":`` validation code find it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from accelerate.tracking import GeneralTracker

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.integrations.session import LoggerSession, adapter_config, log_split

__all__ = ["SdxlTracker"]


class SdxlTracker(GeneralTracker):
    """Accelerate tracker over one rank-aware ``WandbLogger``.

    Args:
        project: the W&B project (Accelerate's trackers take it first); a ``project`` field otherwise.
        config: a ``WandbConfig`` or a mapping of its fields.
        logger: a ``UnifiedLogger`` or ``logging.Logger`` for the logger's messages.
        **fields: ``WandbConfig`` fields as keywords. Unlike ``WandbConfig``, ``metric_prefix`` defaults to ""
            (keys land as Accelerate's own W&B tracker writes them).

    Example:
        >>> tracker = SdxlTracker("sdxl", mode="offline")  # doctest: +SKIP
        >>> accelerator = Accelerator(log_with=[tracker])  # doctest: +SKIP
        >>> tracker.log_all_ranks({"train_loss": loss}, step=global_step)  # every rank: reduced  # doctest: +SKIP
    """

    name = "wandb"
    requires_logging_directory = False
    main_process_only = False  # its own methods decide; Accelerate's decorator would drop calls on other ranks

    def __init__(self, project: str | None = None, config: WandbConfig | Mapping[str, Any] | None = None, *,
                 logger: Any | None = None, **fields: Any) -> None:
        super().__init__()
        if project is not None:
            fields["project"] = project
        self.session = LoggerSession(adapter_config(config, fields), logger)
        self._pending_config: dict[str, Any] = {}

    # -- Accelerate's calls (main process only) ---------------------------------------------------------------------
    def start(self) -> None:
        """Called by ``init_trackers`` on the main process: builds the logger only in a single-process job."""
        if not _several_ranks():
            self._started()

    @property
    def tracker(self) -> Any | None:
        """The primary's W&B run (what ``get_tracker("wandb", unwrap=True)`` returns); None before it started."""
        return self.session.run

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        """Merge the hyper-parameters into the run config (kept until the run starts; secrets redacted)."""
        self._pending_config.update(values)
        if self.session.wb is not None:
            self.session.wb.log_config(self._pending_config)

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """``accelerator.log``: write the main process's values as they are, without a collective.

        Scalars go in one row (``wb.main_process.log_metrics``), images under ``<key>/images``; without ``step``
        they land at the last step.

        Raises:
            RuntimeError: a multi-process job has not started the logger yet (no rank-aware call was made).
            MetricValueError: a value is neither a number nor images (named).
        """
        wb = self.session.wb
        if wb is None:
            if _several_ranks():
                raise RuntimeError("SdxlTracker: the logger starts at the first rank-aware call, made on every "
                                   "rank: call tracker.log_all_ranks(...) or touch tracker.wandb_logger on every "
                                   "rank before accelerator.log")
            wb = self._started()
        log_split(wb.main_process, values, step)  # through the logger's journal and writer: preemption-safe

    def finish(self) -> None:
        """Close the run (``end_training`` calls this on the main process; call it on the others yourself)."""
        self.session.finish(0)

    # -- rank-aware calls (every rank) ------------------------------------------------------------------------------
    @property
    def wandb_logger(self) -> Any:
        """The ``WandbLogger`` under this tracker; the first access builds it, on every rank (a collective)."""
        return self._started()

    def log_all_ranks(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Log one call's values from every rank: scalars reduced in one collective, images from every rank.

        Args:
            values: key -> number, 0-d tensor, or images (one, or a list; ``[]`` on ranks with none). Every rank
                passes the same keys.
            step: the training step.
        """
        self._started()
        self.session.log_values(values, step=step)

    def log_model(self, path: str, metadata: Mapping[str, Any] | None = None,
                  aliases: Sequence[str] | None = None) -> bool:
        """Upload a checkpoint file or directory (``accelerator.save_state``'s folder) as a new artifact version.

        Not collective: call it on the main process (or every process; only the primary uploads).

        Returns:
            True where it was uploaded.
        """
        wb = self.session.wb if _several_ranks() else self._started()
        if wb is None:
            raise RuntimeError("SdxlTracker.log_model: the logger has not started; see SdxlTracker.log")
        return wb.log_model(path, metadata=metadata, aliases=aliases)

    def _started(self) -> Any:
        fresh = self.session.wb is None
        wb = self.session.get()
        if fresh and self._pending_config:
            wb.log_config(self._pending_config)
        return wb


def _several_ranks() -> bool:
    """Whether Accelerate runs this job on several processes (its state is set up by ``Accelerator()``)."""
    from accelerate.state import PartialState

    return PartialState().num_processes > 1
