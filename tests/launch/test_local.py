"""run_ranks' scratch folder: the ranks' TMPDIR is one folder per call, removed when the call returns, so W&B's
temporary media and artifact folders (left behind by ``os._exit``, which skips their exit handlers) go with it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from sdxl_dist_log.launch.local import run_ranks, values_or_raise

pytestmark = pytest.mark.timeout(300)


def _scratch(rank: int) -> tuple[str, bool]:
    here = tempfile.gettempdir()
    Path(tempfile.mkdtemp(prefix="left-")).joinpath("x").write_text("x")
    return here, os.environ["TMPDIR"] == here


def test_each_call_gets_a_scratch_tmpdir_that_is_removed() -> None:
    values = values_or_raise(run_ranks(_scratch, 2, backend=None, timeout=60))
    dirs = {here for here, from_env in values}
    assert all(from_env for _, from_env in values)
    assert len(dirs) == 1 and next(iter(dirs)) != tempfile.gettempdir()
    assert not os.path.exists(next(iter(dirs)))


def _wandb_scratch(rank: int) -> tuple[str, list[str]]:
    import numpy as np

    from sdxl_dist_log import WandbLogger

    Path("w.pt").write_bytes(b"weights")
    with WandbLogger(project="scratch", mode="offline", dir="out", log_system_metrics=False) as wb:
        wb.log_images([np.zeros((8, 8, 3), dtype=np.uint8)], captions=["x"], step=0)
        wb.log_model("w.pt")
    return tempfile.gettempdir(), sorted(os.listdir(tempfile.gettempdir()))


def test_wandb_temporary_folders_go_with_the_scratch_dir(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    [(scratch, inside)] = values_or_raise(run_ranks(_wandb_scratch, 1, backend=None, timeout=240))
    # W&B did use it: its service's folder, and its media folder unless this process imported wandb before the fork
    assert any(name.startswith("wandb-") or name.endswith("wandb-media") for name in inside), inside
    assert not os.path.exists(scratch)
