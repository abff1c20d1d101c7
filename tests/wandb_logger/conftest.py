"""Fixtures of the WandbLogger tests: reading one row, or one image's pixels, back from a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdxl_dist_log.offline import OfflineRun


def _row_with(run: OfflineRun, key: str, step: int | None = None) -> dict[str, Any]:
    rows = [r for r in run.rows_with(key) if step is None or r.get(run.step_metric) == step]
    assert len(rows) == 1, f"expected one row with {key!r} at step {step}, got {rows}"
    return rows[0]


def _png(run: OfflineRun, key: str, index: int = 0, step: int | None = None) -> np.ndarray:
    media = _row_with(run, key, step)[key]
    assert media["_type"] == "images/separated", media
    filename = media["filenames"][index]
    assert filename in run.media_files
    with Image.open(run.path / "files" / filename) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="session")
def row_with() -> Callable[..., dict[str, Any]]:
    """``row_with(run, key, step=None)``: the one history row holding ``key`` (at ``step``); fails unless one."""
    return _row_with


@pytest.fixture(scope="session")
def png() -> Callable[..., np.ndarray]:
    """``png(run, key, index=0, step=None)``: RGB pixels of the ``index``-th image logged under ``key``, from disk."""
    return _png
