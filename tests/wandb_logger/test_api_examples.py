"""The API's usage examples run as a user writes them, and what each one leaves in the run, read back from disk.

One forked child runs them all (one wandb-core start): a quick start that leaves ``mode`` at its default "online"
on a machine without an API key, a config that sets every documented field, each logging feature, a training loop
with UnifiedLogger, and the snippet of docs/quickstart.md taken from the file itself.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch  # imported once here so that the forked child does not pay for it
from PIL import Image

from sdxl_dist_log.offline import find_run_dirs, read_run

pytestmark = pytest.mark.timeout(300)

QUICKSTART_MD = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def _quickstart_snippet() -> str:
    """The first python block of docs/quickstart.md that uses the API."""
    blocks = re.findall(r"```python\n(.*?)```", QUICKSTART_MD.read_text(encoding="utf-8"), flags=re.S)
    return next(b for b in blocks if "WandbLogger(" in b)


def _examples() -> dict[str, Any]:
    from sdxl_dist_log import LogConfig, UnifiedLogger, WandbConfig, WandbLogger

    out: dict[str, Any] = {}

    # -- quick start: mode left at "online"; no API key here, and stdin is not a terminal ------------------------------
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdin = open(os.devnull)  # noqa: SIM115 - the child exits right after
    records = logging.handlers.BufferingHandler(capacity=10_000)
    logging.getLogger("sdxl_dist_log").addHandler(records)
    generated_image = Image.new("RGB", (32, 32), (200, 30, 30))
    os.makedirs("checkpoints", exist_ok=True)
    Path("checkpoints/model.pt").write_bytes(b"quick-start weights")

    wandb_config = WandbConfig(
        project="my-sdxl-project",
        name="experiment-1",
        tags=["sdxl", "training"],
        log_model=True
    )
    logger = UnifiedLogger()
    logger.logger.addHandler(records)
    with WandbLogger(config=wandb_config, logger=logger) as wandb_logger:
        wandb_logger.log_metrics({
            "loss": 0.5,
            "accuracy": 0.95
        }, step=100)
        wandb_logger.log_images(
            images=[generated_image],
            captions=["Generated sample at step 100"]
        )
        wandb_logger.log_model(
            "checkpoints/model.pt",
            metadata={"step": 100},
            aliases=["latest"]
        )
        out["quick_identity"] = wandb_logger.identity.to_json()
        out["quick_run"] = os.path.abspath(wandb_logger.run_dir)  # relative to the cwd when config.dir is
    out["quick_run_dirs"] = [os.path.abspath(p) for p in find_run_dirs(wandb_config.dir)]
    out["quick_records"] = [(r.name, r.levelname, r.getMessage()) for r in records.buffer]
    out["quick_log"] = Path(logger.log_path).read_text() if logger.log_path else ""
    logger.close()
    logging.getLogger("sdxl_dist_log").removeHandler(records)

    # -- a config with every documented field (mode "offline"), then each logging feature ------------------------------
    config = WandbConfig(
        # Basic settings
        project="sdxl-training",      # W&B project name
        name="experiment-1",          # Run name
        tags=["sdxl", "training"],    # Run tags
        notes="Training notes",       # Run notes
        group="experiment-group",     # Group for related runs
        job_type="training",         # Type of job

        # Run settings
        dir="outputs/wandb",         # Directory for W&B files
        resume=False,                # Resume previous run
        reinit=False,               # Allow multiple runs in same process
        mode="offline",             # "online", "offline", or "disabled"

        # Sync settings
        sync_tensorboard=False,      # Sync TensorBoard logs
        save_code=True,             # Save code snapshot
        save_requirements=True,      # Save pip requirements

        # Media settings
        log_model=True,             # Log model checkpoints
        log_checkpoints=True,       # Log intermediate checkpoints
        checkpoint_prefix="ckpt",   # Prefix for checkpoint artifacts
        sample_prefix="sample",     # Prefix for image samples
        max_images_to_log=16,       # Max images per batch

        # Metric settings
        metric_prefix="metrics/",   # Prefix for metric names
        log_system_metrics=True,    # Log GPU/CPU metrics
        system_metrics_interval=60  # Seconds between system metrics
    )
    Image.new("RGB", (16, 16), (10, 20, 30)).save("sample.png")
    img1, img2, img3 = (Image.new("RGB", (8, 8), (v, v, v)) for v in (0, 100, 200))
    model_config = {"unet": "sdxl-base", "channels": 4}
    Path("checkpoints/step_1000.pt").write_bytes(b"step 1000 weights")
    with WandbLogger(config) as wandb_logger:
        # Metrics Logging
        wandb_logger.log_metrics({
            "loss/train": 0.5,
            "accuracy/train": 0.95
        }, step=100)
        wandb_logger.log_metrics({
            "loss/train": 0.5,
            "loss/val": 0.6,
            "accuracy/train": 0.95,
            "accuracy/val": 0.93,
            "learning_rate": 0.001
        }, step=100)
        # Image Logging
        from PIL import Image as PILImage
        image = PILImage.open("sample.png")
        wandb_logger.log_images(
            images=[image],
            captions=["Sample image"]
        )
        import torch
        tensor = torch.randn(3, 64, 64)  # [C, H, W]
        wandb_logger.log_images(
            images=[tensor],
            prefix="generated"  # Will be logged as "generated/images"
        )
        import numpy as np
        array = np.random.rand(64, 64, 3)  # [H, W, C]
        wandb_logger.log_images(
            images=[array],
            captions=["Random noise"]
        )
        wandb_logger.log_images(
            images=[img1, img2, img3],
            captions=["Sample 1", "Sample 2", "Sample 3"],
            step=100
        )
        # Model Logging
        wandb_logger.log_model(
            "checkpoints/model.pt",
            metadata={
                "step": 1000,
                "loss": 0.5,
                "config": model_config
            },
            aliases=["latest", "best"]
        )
        wandb_logger.log_model(
            "checkpoints/step_1000.pt",
            metadata={"step": 1000},
            aliases=["step-1000"]
        )
        # Configuration Logging
        wandb_logger.log_config({
            "model": {
                "type": "sdxl",
                "version": "1.0",
                "params": 1e9
            },
            "training": {
                "batch_size": 32,
                "learning_rate": 1e-4,
                "epochs": 100
            },
            "data": {
                "dataset": "custom",
                "size": 10000
            }
        })
        out["features_run"] = os.path.abspath(wandb_logger.run_dir)

    # -- a training loop with UnifiedLogger (20 steps; mode "offline") -------------------------------------------------
    def generate_sample() -> torch.Tensor:
        return torch.rand(3, 16, 16)

    Path("checkpoints/step_0.pt").write_bytes(b"step 0 weights")
    log_config = LogConfig(name="training")
    wandb_config = WandbConfig(project="sdxl", mode="offline")

    logger = UnifiedLogger(log_config)
    wandb_logger = WandbLogger(wandb_config, logger=logger)

    with logger, wandb_logger:
        logger.info("Starting training...")
        logger.start_progress(total=20)
        for step in range(20):
            logger.update_progress(1)
            metrics = {
                "loss": 0.5,
                "accuracy": 0.95
            }
            logger.log_metrics(metrics)
            wandb_logger.log_metrics(metrics, step=step)
            if step % 10 == 0:
                wandb_logger.log_images(
                    images=[generate_sample()],
                    step=step
                )
            if step % 50 == 0:
                wandb_logger.log_model(
                    f"checkpoints/step_{step}.pt",
                    metadata={"step": step}
                )
        out["loop_progress"] = logger.progress_stats()
    out["loop_run"] = os.path.abspath(wandb_logger.run_dir)
    out["loop_handlers_after"] = len(logger.logger.handlers)
    out["loop_log"] = Path(logger.log_path).read_text()
    out["loop_metrics_lines"] = Path(logger.metrics_path).read_text().splitlines()

    # -- docs/quickstart.md's snippet, as the file has it --------------------------------------------------------------
    namespace: dict[str, Any] = {"generated_image": generated_image}
    exec(compile(_quickstart_snippet(), str(QUICKSTART_MD), "exec"), namespace)
    out["docs_run"] = os.path.abspath(namespace["wb"].run_dir)
    return out


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory, in_child: Callable[..., Any]) -> dict[str, Any]:
    return in_child(_examples, tmp_path_factory.mktemp("examples"))


# -- quick start: online without a key ---------------------------------------------------------------------------------
def test_quick_start_online_without_key_falls_back_to_offline_without_trying(examples: dict[str, Any]) -> None:
    """Without an API key the run falls back to offline before any online attempt, with exactly one warning.

    The reason is the no-key one ("online init failed" would mean an online attempt was made and timed out), and
    only the offline run's directory exists; a prompt on stdin or a hang would end the child at its timeout.
    """
    identity = examples["quick_identity"]
    assert identity["mode"] == "offline"
    assert identity["fallback_reason"].startswith("no W&B API key"), identity["fallback_reason"]
    assert examples["quick_run_dirs"] == [examples["quick_run"]]
    warnings = [m for _, level, m in examples["quick_records"] if level == "WARNING"]
    assert len(warnings) == 1 and "API key" in warnings[0] and "offline" in warnings[0], warnings


def test_fallback_reason_reaches_the_given_logger(examples: dict[str, Any]) -> None:
    """The warning goes to the UnifiedLogger passed as ``logger``, so it lands in that rank's log file."""
    assert "API key" in examples["quick_log"], examples["quick_log"]


def test_run_dir_is_absolute(examples: dict[str, Any]) -> None:
    """``run_dir`` is absolute even though ``WandbConfig.dir`` is relative to the working directory."""
    assert os.path.isabs(examples["quick_identity"]["run_dir"]), examples["quick_identity"]["run_dir"]


def test_quick_start_lands_in_the_run(examples: dict[str, Any], row_with: Callable, png: Callable) -> None:
    """Name, tags, the metric row at step 100, the captioned image (its pixels) and the checkpoint all land."""
    run = read_run(examples["quick_run"])
    assert run.exit_code == 0 and not run.truncated
    assert (run.project, run.name, sorted(run.tags)) == ("my-sdxl-project", "experiment-1", ["sdxl", "training"])
    row = row_with(run, "metrics/loss")
    assert row["trainer/step"] == 100 and row["metrics/accuracy"] == pytest.approx(0.95)
    images = row_with(run, "sample/images")
    assert images["trainer/step"] == 100
    assert images["sample/images"]["captions"] == ["Generated sample at step 100"]
    assert png(run, "sample/images")[0, 0].tolist() == [200, 30, 30]
    [artifact] = run.artifacts
    assert artifact.name == "ckpt" and "latest" in artifact.aliases and artifact.metadata["step"] == 100
    assert artifact.files == ["model.pt"]


# -- every config field and each logging feature -----------------------------------------------------------------------
def test_configuration_and_logging_features_examples(examples: dict[str, Any], png: Callable) -> None:
    """Every run field, both metric calls, four image forms, two checkpoint versions and the config land."""
    run = read_run(examples["features_run"])
    assert "outputs/wandb/wandb/" in Path(examples["features_run"]).as_posix()
    assert run.exit_code == 0
    assert (run.project, run.name, run.notes, run.group, run.job_type) == (
        "sdxl-training", "experiment-1", "Training notes", "experiment-group", "training")
    assert sorted(run.tags) == ["sdxl", "training"]
    # metrics: prefixed with "metrics/", both calls at step 100
    rows = run.rows_with("metrics/loss/train")
    assert [r["trainer/step"] for r in rows] == [100, 100]
    assert rows[1]["metrics/loss/val"] == pytest.approx(0.6)
    assert rows[1]["metrics/learning_rate"] == pytest.approx(0.001)
    # images: PIL, torch CHW under "generated/images", numpy HWC, three with captions at step 100
    samples = run.rows_with("sample/images")
    assert [r["sample/images"]["captions"] for r in samples] == [
        ["Sample image"], ["Random noise"], ["Sample 1", "Sample 2", "Sample 3"]]
    assert all(r["trainer/step"] == 100 for r in samples)
    assert png(run, "generated/images").shape == (64, 64, 3)
    assert samples[0]["sample/images"]["height"] == 16
    assert samples[1]["sample/images"]["width"] == 64
    # model: two versions of the one artifact "ckpt", aliases and metadata kept
    assert [(a.name, a.version_index) for a in run.artifacts] == [("ckpt", 0), ("ckpt", 1)]
    first, second = run.artifacts
    assert {"latest", "best"} <= set(first.aliases)
    assert first.metadata["config"] == {"unet": "sdxl-base", "channels": 4}
    assert "step-1000" in second.aliases and second.metadata["step"] == 1000
    # config
    assert run.config["model"] == {"type": "sdxl", "version": "1.0", "params": 1e9}
    assert run.config["training"]["batch_size"] == 32 and run.config["data"]["size"] == 10000


# -- a training loop with UnifiedLogger --------------------------------------------------------------------------------
def test_unified_logger_integration_loop(examples: dict[str, Any]) -> None:
    """20 metric rows, images at steps 0 and 10, one checkpoint, a full progress bar, and closed handlers."""
    run = read_run(examples["loop_run"])
    assert run.exit_code == 0
    assert [r["trainer/step"] for r in run.rows_with("metrics/loss")] == list(range(20))
    assert [r["trainer/step"] for r in run.rows_with("sample/images")] == [0, 10]
    assert [(a.name, a.metadata["step"]) for a in run.artifacts] == [("ckpt", 0)]
    assert examples["loop_progress"]["done"] == 20 and examples["loop_progress"]["total"] == 20
    assert "Starting training..." in examples["loop_log"]
    assert len(examples["loop_metrics_lines"]) == 20
    assert json.loads(examples["loop_metrics_lines"][-1])["loss"] == 0.5
    assert examples["loop_handlers_after"] == 0


# -- docs/quickstart.md ------------------------------------------------------------------------------------------------
def test_quickstart_md_snippet_runs_and_lands(examples: dict[str, Any]) -> None:
    """The documented snippet runs unchanged: its metric row, image, checkpoint and config are in the run."""
    run = read_run(examples["docs_run"])
    assert run.exit_code == 0 and run.project == "my-sdxl-project"
    [row] = run.rows_with("metrics/loss")
    assert (row["trainer/step"], row["metrics/accuracy"]) == (100, pytest.approx(0.95))
    assert run.rows_with("sample/images")[0]["sample/images"]["captions"] == ["Generated sample at step 100"]
    assert [(a.name, a.files) for a in run.artifacts] == [("ckpt", ["model.pt"])]
    assert run.config["training"] == {"batch_size": 32, "learning_rate": 1e-4}
