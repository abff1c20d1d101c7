"""Fixtures of the ``sdxl_dist_log.offline`` tests: real offline runs, made once per session and only read after."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # offline_support.py

from offline_support import FULL_RUN, LOGGER_RUN, run_script  # noqa: E402

from sdxl_dist_log.offline import OfflineRun, find_run_dirs, read_run  # noqa: E402


@pytest.fixture(scope="session")
def full_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the installed wandb: config, 6 history rows (images in the last), 3 artifacts, a summary."""
    tmp = tmp_path_factory.mktemp("full")
    run_script(tmp, FULL_RUN)
    runs = find_run_dirs(tmp)
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="session")
def full_run(full_run_dir: Path) -> OfflineRun:
    """``full_run_dir`` read back; tests must not change it (copy the directory to alter a run)."""
    return read_run(full_run_dir)


@pytest.fixture(scope="session")
def custom_step_run(tmp_path_factory: pytest.TempPathFactory) -> OfflineRun:
    """A finished run of our WandbLogger with ``step_metric="global_step"``: 5 rows at steps 100..104."""
    tmp = tmp_path_factory.mktemp("custom_step")
    run_script(tmp, LOGGER_RUN)
    return read_run(tmp)
