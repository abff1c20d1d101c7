"""WandbLogger.log_images: tensors of every layout and dtype reach the run with the right pixels, bad input logs
nothing, and the images of every rank reach the primary's run under one fair cap.

The pixels are read back from the PNG files of the run on disk. The conversion itself is tested without W&B in
tests/images/.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch  # imported once here so that forked children do not each pay for it
from PIL import Image

from sdxl_dist_log import WandbConfig, WandbLogger
from sdxl_dist_log.launch.local import run_ranks, values_or_raise

pytestmark = pytest.mark.timeout(300)


def _one_process() -> dict[str, Any]:
    out: dict[str, Any] = {}
    config = WandbConfig(project="images", mode="offline", dir="out", log_system_metrics=False)
    with WandbLogger(config) as wb:
        # CHW float32, fp16 and bf16 tensors, and a bf16 batch
        chw = torch.zeros(3, 8, 8)
        chw[0], chw[2] = 1.0, 0.5
        wb.log_images([chw, torch.full((3, 8, 8), 0.5, dtype=torch.float16),
                       torch.full((3, 8, 8), 0.5, dtype=torch.bfloat16),
                       torch.full((2, 3, 8, 8), 1.0, dtype=torch.bfloat16)],
                      captions=["chw", "fp16", "bf16", "bchw-0", "bchw-1"],
                      prefix="dtypes", step=1)
        # [-1, 1] floats: bands of -1, 0, +1, logged with value_range (-1, 1) and with the default (0, 1)
        bands = torch.empty(3, 9, 9)
        bands[:, 0:3], bands[:, 3:6], bands[:, 6:9] = -1.0, 0.0, 1.0
        wb.log_images([bands], prefix="pm1", step=2, value_range=(-1.0, 1.0))
        wb.log_images([bands.numpy().transpose(1, 2, 0)], prefix="default_range", step=2)
        # fewer captions than images: a clear error, nothing logged
        try:
            wb.log_images([chw, chw], captions=["only one"], prefix="bad", step=3)
        except ValueError as exc:
            out["caption_error"] = f"{type(exc).__name__}: {exc}"
        # prefix "" turns the prefix off
        wb.log_images([chw], prefix="", step=4)
        out["run_dir"] = os.path.abspath(wb.run_dir)
    return out


@pytest.fixture(scope="module")
def images(scenario: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    return scenario(_one_process, "images")


def test_chw_fp16_bf16_and_batched_tensors_land(images: dict[str, Any], row_with: Callable, png: Callable) -> None:
    """CHW tensors become HWC with the channel order kept; fp16, bf16 and a bf16 BCHW batch give the right pixels."""
    run = images["run"]
    media = row_with(run, "dtypes/images")["dtypes/images"]
    assert media["count"] == 5 and media["captions"] == ["chw", "fp16", "bf16", "bchw-0", "bchw-1"]
    assert png(run, "dtypes/images", 0)[3, 3].tolist() == [255, 0, 128]  # CHW -> HWC, channel order kept
    assert png(run, "dtypes/images", 1)[0, 0].tolist() == [128, 128, 128]  # fp16
    assert png(run, "dtypes/images", 2)[0, 0].tolist() == [128, 128, 128]  # bf16
    assert png(run, "dtypes/images", 4)[7, 7].tolist() == [255, 255, 255]  # bf16 BCHW, second image


def test_minus_one_to_one_floats_do_not_wrap(images: dict[str, Any], png: Callable) -> None:
    """[-1, 1] floats map to 0..255 with ``value_range=(-1, 1)``; with the default range negatives clamp to 0."""
    run = images["run"]
    pm1 = png(run, "pm1/images")
    assert pm1[0, 0].tolist() == [0, 0, 0]  # -1 -> 0
    assert pm1[4, 4].tolist() == [128, 128, 128]  # 0 -> mid grey
    assert pm1[8, 8].tolist() == [255, 255, 255]  # 1 -> 255
    clamped = png(run, "default_range/images")  # value_range (0, 1): negatives clamp to 0, never wrap to 1..255
    assert clamped[0, 0].tolist() == [0, 0, 0] and clamped[8, 8].tolist() == [255, 255, 255]


def test_fewer_captions_than_images_is_a_clear_error_and_logs_nothing(images: dict[str, Any]) -> None:
    """Fewer captions than images raise a ValueError that counts both, and no image or media file is written."""
    assert "1 captions for 2 images" in images["caption_error"]
    run = images["run"]
    assert "bad/images" not in run.keys()
    assert not any("/bad/" in f for f in run.media_files)


def test_empty_prefix_gives_unprefixed_keys(images: dict[str, Any], row_with: Callable) -> None:
    """``prefix=""`` logs the images under plain "images", not "/images" or "sample/images"."""
    run = images["run"]
    assert row_with(run, "images")["trainer/step"] == 4
    assert "/images" not in run.keys()


@pytest.mark.slow
def test_images_from_every_rank_reach_the_run_capped_fairly_with_rank_captions(tmp_path: Path, make_logger: Callable,
                                                                               only_run: Callable) -> None:
    """3 ranks offer 3, 1 and 5 images under a cap of 4: shares 2 + 1 + 1, each caption marked with its rank."""
    def body(rank: int) -> int:
        with make_logger(str(tmp_path), max_images_to_log=4) as wb:
            count = {0: 3, 1: 1, 2: 5}[rank]
            batch = torch.stack([torch.full((3, 8, 8), rank * 50 + i, dtype=torch.uint8) for i in range(count)])
            return wb.log_images(batch, captions=[f"r{rank}-{i}" for i in range(count)], step=7)

    counts = values_or_raise(run_ranks(body, 3, timeout=240))
    assert counts[0] == 4  # primary reports how many landed: shares 2 + 1 + 1
    run = only_run(tmp_path)
    entry = run.rows_with("sample/images")[0]["sample/images"]
    assert entry["count"] == 4
    assert entry["captions"] == ["[rank 0] r0-0", "[rank 0] r0-1", "[rank 1] r1-0", "[rank 2] r2-0"]
    pngs = sorted(p for p in run.media_files if p.endswith(".png"))
    assert len(pngs) == 4
    pixels = set()
    for name in pngs:
        with Image.open(run.path / "files" / name) as image:
            pixels.add(int(np.asarray(image)[0, 0, 0]))
    assert sorted(pixels) == [0, 1, 50, 100]  # rank 0's first two, rank 1's first, rank 2's first
