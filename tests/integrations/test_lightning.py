"""The Lightning logger with the real ``lightning`` and 2 real ranks (DDP, gloo on CPU, ranks started by our runner as
torchrun would): ``self.log(..., sync_dist=False)`` rows reduced by the logger in one collective per row,
``log_hyperparams`` into the run config, ``ModelCheckpoint`` checkpoints as versions of one artifact. Read back from
the ``.wandb`` file."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning")

from sdxl_dist_log.launch.local import run_ranks, values_or_raise  # noqa: E402
from sdxl_dist_log.offline import find_run_dirs, read_run  # noqa: E402

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

STEPS = 4


def _fit(out: str, rank: int) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    from sdxl_dist_log.integrations.lightning import SdxlLightningLogger
    from sdxl_dist_log.testing.probe import CollectiveProbe

    os.chdir(out)
    probe = CollectiveProbe()
    seen: dict[str, Any] = {"log_calls": []}

    class Model(pl.LightningModule):
        def __init__(self, lr: float = 0.1, hub_token: str = "hf_secret") -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.layer(batch).pow(2).mean()
            self.log("train_loss", loss)  # sync_dist=False: no collective here
            self.log("rank_value", float(self.global_rank))
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    class Counting(SdxlLightningLogger):
        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            probe.reset()
            super().log_metrics(metrics, step)
            seen["log_calls"].append(dict(probe.api))

    logger = Counting(project="lit", mode="offline", dir="runs", log_system_metrics=False, collective_timeout=60.0)
    # every second step, whatever the loss: a monitored top-1 saves again only when the random loss improves
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath="ckpt", every_n_train_steps=2, save_top_k=-1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS, logger=logger,
                         log_every_n_steps=1, callbacks=[checkpoint], enable_progress_bar=False,
                         enable_model_summary=False)
    data = torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)
    with probe:
        trainer.fit(Model(), data)
    seen["world"] = trainer.world_size
    seen["run_dir"] = logger.wandb_logger.run_dir if rank == 0 else None
    seen["experiment"] = logger.experiment is not None
    return seen


def test_sync_dist_false_rows_are_reduced_in_one_collective_and_checkpoints_uploaded(tmp_path: Path) -> None:
    results = values_or_raise(run_ranks(functools.partial(_fit, str(tmp_path)), 2, backend=None, timeout=300))
    assert [r["world"] for r in results] == [2, 2]
    assert [r["experiment"] for r in results] == [True, False]
    for r in results:
        assert len(r["log_calls"]) == STEPS
        assert all(calls == {"all_gather_single": 1} for calls in r["log_calls"]), r["log_calls"]
    [run_dir] = find_run_dirs(tmp_path / "runs")
    run = read_run(run_dir)
    rows = run.rows_with("rank_value")
    assert len(rows) == STEPS and all(r["rank_value"] == 0.5 for r in rows)  # both ranks' values, averaged
    assert all("train_loss" in r and "epoch" in r for r in rows)
    assert run.config["lr"] == 0.1 and run.config["hub_token"] != "hf_secret"
    assert len(run.artifacts) == 2 and {a.name for a in run.artifacts} == {"ckpt"}
    assert all("latest" in a.aliases and a.files for a in run.artifacts)
    assert run.exit_code == 0
