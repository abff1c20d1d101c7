"""A PyTorch Lightning ``Logger`` over the rank-aware logger: ``Trainer(logger=SdxlLightningLogger(...))``.

How Lightning calls a logger (lightning 2.x, ``trainer/connectors/logger_connector``, ``loggers/utilities.py``,
``callbacks/model_checkpoint.py``): ``log_metrics(metrics, step)`` on **every** rank at the same points (every
``log_every_n_steps`` and at epoch ends), with what ``self.log(...)`` collected on that rank; ``log_hyperparams``,
``log_graph`` and ``save`` on every rank; ``after_save_checkpoint`` on global rank 0 only, right after
``ModelCheckpoint`` saved; ``finalize(status)`` on every rank at the end.

So ``self.log("loss", loss)`` with the default ``sync_dist=False`` costs no collective in Lightning, and this logger
reduces all keys of the row in one collective of its own (mean unless ``metric_reduce`` says otherwise), where
``sync_dist=True`` costs Lightning a barrier and an all_reduce per key. Lightning's own ``WandbLogger`` writes on rank
0 only: with ``sync_dist=False`` its rows hold rank 0's values alone.

The ``WandbLogger`` underneath is built at the first of these calls (all ranks make it, after the process group
exists). Checkpoints that ``ModelCheckpoint`` saves become versions of one artifact, aliased ``latest`` (and ``best``
for the best one so far).
"""

from __future__ import annotations

import os
from argparse import Namespace
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from lightning.pytorch.loggers.logger import Logger
except ImportError:  # the standalone package
    from pytorch_lightning.loggers.logger import Logger  # type: ignore[no-redef]

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.integrations.session import LoggerSession, adapter_config

__all__ = ["SdxlLightningLogger"]


def _plain_params(params: Mapping[str, Any] | Namespace) -> dict[str, Any]:
    """Hyper-parameters as a plain nested dict (argparse namespaces and Lightning's AttributeDicts unwrapped)."""
    if isinstance(params, Namespace):
        params = vars(params)
    return {str(k): _plain_params(v) if isinstance(v, (Mapping, Namespace)) else v for k, v in params.items()}


class SdxlLightningLogger(Logger):
    """Lightning logger that logs through one rank-aware ``WandbLogger``.

    Args:
        config: a ``WandbConfig`` or a mapping of its fields.
        logger: a ``UnifiedLogger`` or ``logging.Logger`` for the logger's messages.
        **fields: ``WandbConfig`` fields as keywords (``project=``, ``name=``, ``mode=``, ...). Unlike
            ``WandbConfig``, ``metric_prefix`` defaults to "" (keys land as Lightning's own W&B logger writes them).

    Example:
        >>> trainer = Trainer(logger=SdxlLightningLogger(project="sdxl", mode="offline"))  # doctest: +SKIP
    """

    def __init__(self, config: WandbConfig | Mapping[str, Any] | None = None, *, logger: Any | None = None,
                 **fields: Any) -> None:
        super().__init__()
        self.session = LoggerSession(adapter_config(config, fields), logger)

    # -- what Lightning asks of a logger ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The W&B project (Lightning puts checkpoints under ``save_dir/name/version``)."""
        return self.session.config.project

    @property
    def version(self) -> str:
        """The run id once the run started, else "" (never starts it: this may be read on one rank only)."""
        wb = self.session.wb
        return wb.identity.run_id if wb is not None else (self.session.config.run_id or "")

    @property
    def save_dir(self) -> str:
        """Where the W&B run directory goes (``WandbConfig.dir``)."""
        return self.session.config.dir

    @property
    def experiment(self) -> Any | None:
        """The primary's W&B run once started (Lightning's name for it); None before and on other ranks."""
        return self.session.run

    @property
    def wandb_logger(self) -> Any:
        """The ``WandbLogger`` under this logger (built on first use: a collective)."""
        return self.session.get()

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Reduce the row over ranks in one collective and log it on the primary. Every rank calls this."""
        self.session.log_values(metrics, step=step)

    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """Merge the hyper-parameters into the run config (the primary writes; secrets redacted)."""
        self.session.get().log_config(_plain_params(params))

    def log_graph(self, model: Any, input_array: Any | None = None) -> None:
        """Start the run if it is not yet (every rank calls this at fit start); graphs are not logged."""
        self.session.get()

    def log_image(self, key: str, images: Sequence[Any], step: int | None = None,
                  caption: Sequence[str] | None = None, **kwargs: Any) -> None:
        """Log images from every rank under ``<key>/images`` (call on every rank; ``[]`` where there are none)."""
        self.session.get().log_images(images, captions=caption, step=step, prefix=key)

    def save(self) -> None:
        """Start the run if it is not yet; rows are committed as they are logged, so nothing else waits here."""
        self.session.get()

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Upload the checkpoint ``ModelCheckpoint`` just saved (rank 0 calls this; no collective)."""
        path = getattr(checkpoint_callback, "_last_checkpoint_saved", "") or checkpoint_callback.last_model_path
        if not path or not os.path.exists(path) or self.session.wb is None:
            return
        best = os.path.abspath(path) == os.path.abspath(checkpoint_callback.best_model_path or "")
        score = checkpoint_callback.current_score
        metadata = {"monitor": checkpoint_callback.monitor,
                    "score": None if score is None else float(score), "file": os.path.basename(path)}
        self.session.wb.log_model(path, metadata=metadata, aliases=["latest"] + (["best"] if best else []))

    def finalize(self, status: str) -> None:
        """Close the run on every rank (exit code 0 on "success"/"finished", 1 otherwise)."""
        self.session.finish(0 if status in ("success", "finished") else 1)
