"""Shared fixtures: every test gets private W&B directories and no network, so runs land in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_dist_log.testing.wandb_env import CLEARED, wandb_environment


@pytest.fixture(autouse=True)
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point W&B's run, staging, cache and config dirs into tmp_path; silence it; never call home."""
    for name in CLEARED:
        monkeypatch.delenv(name, raising=False)
    for name, value in wandb_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "wandb_home"
