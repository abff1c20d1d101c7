"""Shared fixtures: every test gets private W&B directories and no network, so runs land in tmp_path.

The pytest process never calls ``wandb.init``: a test that needs a real W&B run makes it in a forked child
(``in_child`` for one process, ``run_ranks`` for several ranks) or a subprocess, and reads it back with ``read_run``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.offline import OfflineRun, find_run_dirs, read_run
from sdxl_dist_log.testing.wandb_env import CLEARED, apply, wandb_environment

CHILD_TIMEOUT_S = 240.0
"""Hard bound of one single-process scenario, only there to catch a hang: on a loaded 2-core machine wandb-core alone
can take half a minute to start."""


@pytest.fixture(autouse=True)
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point W&B's run, staging, cache and config dirs into tmp_path; silence it; never call home."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in wandb_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "wandb_home"


def _run_in_child(fn: Callable[[], Any], root: Path, timeout: float = CHILD_TIMEOUT_S) -> Any:
    def body(rank: int) -> Any:
        # module-scoped fixtures run before the per-test ``wandb_env``: the child sets up its own environment
        apply(wandb_environment(root))
        work = Path(root) / "work"
        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)
        return fn()

    [value] = values_or_raise(run_ranks(body, 1, backend=None, timeout=timeout))
    return value


@pytest.fixture(scope="session")
def in_child() -> Callable[..., Any]:
    """``in_child(fn, root, timeout=...)``: ``fn()``'s (picklable) value, run in one forked child.

    The child's W&B directories are under ``root/wandb_home``, its working directory is ``root/work``, and it has no
    API key, forced mode or launcher variables. Its failure re-raises here with its traceback; a child that has not
    answered within ``timeout`` seconds is killed and the call fails.
    """
    return _run_in_child


def _make_logger(directory: str, nvml: Any = None, **overrides: Any) -> Any:
    from sdxl_dist_log import WandbConfig, WandbLogger

    settings: dict[str, Any] = dict(project="t", mode="offline", dir=directory, log_system_metrics=False,
                                    collective_timeout=60.0)
    settings.update(overrides)
    return WandbLogger(WandbConfig(**settings), nvml=nvml)


@pytest.fixture(scope="session")
def make_logger() -> Callable[..., Any]:
    """``make_logger(dir, nvml=None, **config)``: an offline WandbLogger under ``dir``, without system metrics.

    For the ranks of ``run_ranks``: each calls it at the same point. ``collective_timeout`` is 60 s unless given.
    """
    return _make_logger


def _only_run(directory: Path) -> OfflineRun:
    runs = find_run_dirs(directory)
    assert len(runs) == 1, f"expected exactly one run dir under {directory}, found {runs}"
    return read_run(runs[0])


@pytest.fixture(scope="session")
def only_run() -> Callable[[Path], OfflineRun]:
    """``only_run(dir)``: the one W&B run under ``dir``, read back (fails when there are none or several)."""
    return _only_run
