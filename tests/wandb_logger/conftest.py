"""Fixtures of the WandbLogger tests: a single-process scenario and its run, one row or one image's pixels read back."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdxl_dist_log.offline import OfflineRun, read_run


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


@pytest.fixture(scope="session")
def scenario(tmp_path_factory: pytest.TempPathFactory, in_child: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """``scenario(fn, name)``: ``fn()``'s dict, run by ``in_child`` under a new folder ``name``, with ``run`` added:
    the run at its ``run_dir``, read back. One child serves every test of a module (one wandb-core start)."""

    def run(fn: Callable[[], dict[str, Any]], name: str) -> dict[str, Any]:
        out = in_child(fn, tmp_path_factory.mktemp(name))
        out["run"] = read_run(out["run_dir"])
        return out

    return run
