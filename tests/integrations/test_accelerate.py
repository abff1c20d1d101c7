"""The Accelerate tracker with the real ``accelerate`` and 2 real ranks (gloo on CPU), in a diffusers-style loop:
``init_trackers`` and ``accelerator.log`` on the main process as diffusers writes them, ``tracker.log_all_ranks`` of
the local loss on every rank (reduced by us, one collective), validation images from every rank as ``wandb.Image``
(diffusers' code), ``save_state`` + ``log_model`` on the main process, ``end_training``. The run is read back from its
``.wandb`` file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("accelerate")

from sdxl_dist_log.launch.local import run_ranks, values_or_raise  # noqa: E402
from sdxl_dist_log.offline import find_run_dirs, read_run  # noqa: E402

pytestmark = [pytest.mark.timeout(400), pytest.mark.slow]

STEPS = 4


def _diffusers_style_training(out: str, rank: int) -> dict[str, Any]:
    import numpy as np
    import torch
    from accelerate import Accelerator
    from PIL import Image

    from sdxl_dist_log.integrations.accelerate import SdxlTracker
    from sdxl_dist_log.testing.probe import CollectiveProbe

    os.chdir(out)
    tracker = SdxlTracker("accel", mode="offline", dir="runs", log_system_metrics=False, collective_timeout=60.0)
    accelerator = Accelerator(log_with=[tracker], cpu=True)
    torch.manual_seed(rank)
    unet = torch.nn.Linear(8, 1)
    unet = accelerator.prepare(unet)
    if accelerator.is_main_process:  # as diffusers' scripts write it
        accelerator.init_trackers("accel", config={"learning_rate": 0.1, "hub_token": "hf_secret"})
    seen: dict[str, Any] = {"distributed": accelerator.num_processes, "calls": []}
    _ = tracker.wandb_logger  # every rank: the logger starts here (Accelerate starts trackers on the main process only)
    global_step = 0
    with CollectiveProbe() as probe:
        for _ in range(STEPS):
            loss = unet(torch.randn(4, 8)).pow(2).mean()
            accelerator.backward(loss)
            global_step += 1
            probe.reset()
            tracker.log_all_ranks({"train_loss": loss.detach(), "rank_value": float(rank), "seen": 1},
                                  step=global_step)
            seen["calls"].append(dict(probe.api))
            probe.reset()
            accelerator.log({"main_only": 7.0 + rank}, step=global_step)  # main process only, as it is
            seen["main_only_calls"] = dict(probe.api)
            if global_step == 2:  # diffusers' checkpointing block, main process only: no collective in it
                if accelerator.is_main_process:
                    save_path = os.path.join("ckpt", f"checkpoint-{global_step}")
                    accelerator.save_state(save_path)
                    seen["uploaded"] = accelerator.get_tracker("wandb").log_model(save_path, aliases=["latest"])
        # validation on every rank (each its own prompts), logged the way diffusers' log_validation does
        import wandb

        images = [Image.fromarray(np.full((16, 16, 3), 60 * rank + 40 * i, dtype=np.uint8)) for i in range(2)]
        tracker.log_all_ranks({"validation": [wandb.Image(image, caption=f"{i}: prompt of rank {rank}")
                                              for i, image in enumerate(images)]}, step=global_step)
        if accelerator.is_main_process:  # diffusers' log_validation with Accelerate's tracker: main process only
            accelerator.log({"main_validation": [wandb.Image(images[0], caption="main 0")], "val_score": 0.25})
    seen["run"] = accelerator.get_tracker("wandb", unwrap=True) is not None if accelerator.is_main_process else None
    seen["run_dir"] = tracker.wandb_logger.run_dir if accelerator.is_main_process else None
    tracker.finish()  # every rank; end_training finishes trackers on the main process only
    accelerator.end_training()
    return seen


def test_a_diffusers_style_loop_logs_reduced_metrics_every_ranks_images_and_checkpoints(tmp_path: Path) -> None:
    import functools

    results = values_or_raise(run_ranks(functools.partial(_diffusers_style_training, str(tmp_path)), 2,
                                        backend=None, timeout=300))
    assert [r["distributed"] for r in results] == [2, 2]
    for r in results:  # every rank-aware call is one all_gather on the logger's group; accelerator.log none
        assert r["calls"] == [{"all_gather_single": 1}] * STEPS
        assert r["main_only_calls"] == {}
    assert results[0]["uploaded"] is True and results[0]["run"] is True
    [run_dir] = find_run_dirs(tmp_path / "runs")
    run = read_run(run_dir)
    rows = run.rows_with("train_loss")
    assert [r[run.step_metric] for r in rows] == [1, 2, 3, 4]
    assert all(r["rank_value"] == 0.5 and r["seen"] == 1 for r in rows)  # the mean over both ranks
    main_only = run.rows_with("main_only")
    assert [(r[run.step_metric], r["main_only"]) for r in main_only] == [(s, 7.0) for s in range(1, STEPS + 1)]
    [validation] = run.rows_with("validation/images")
    captions = validation["validation/images"]["captions"]
    assert sorted(captions) == ["[rank 0] 0: prompt of rank 0", "[rank 0] 1: prompt of rank 0",
                                "[rank 1] 0: prompt of rank 1", "[rank 1] 1: prompt of rank 1"]
    [main_validation] = run.rows_with("main_validation/images")  # no step: the last one
    assert main_validation[run.step_metric] == STEPS
    assert [(r[run.step_metric], r["val_score"]) for r in run.rows_with("val_score")] == [(STEPS, 0.25)]
    assert main_validation["main_validation/images"]["captions"] == ["main 0"]
    [artifact] = run.artifacts
    assert artifact.name == "ckpt" and "latest" in artifact.aliases and artifact.files
    assert run.config["learning_rate"] == 0.1 and run.config["hub_token"] != "hf_secret"
    assert run.exit_code == 0
