"""Tests of sdxl_dist_log.checkpoints: which log_model calls upload, from what path, under which artifact name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_dist_log.checkpoints import artifact_name, existing_source, wanted
from sdxl_dist_log.config import WandbConfig


@pytest.mark.parametrize(
    ("log_model", "log_checkpoints", "aliases", "expected"),
    [
        (True, True, [], True),
        (True, True, ["latest"], True),
        (False, True, ["final"], False),  # log_model=False: nothing at all
        (True, False, ["latest"], False),  # intermediate checkpoints off
        (True, False, ["final"], True),
        (True, False, ["best", "latest"], True),
    ],
)
def test_wanted(log_model: bool, log_checkpoints: bool, aliases: list[str], expected: bool) -> None:
    config = WandbConfig(mode="offline", log_model=log_model, log_checkpoints=log_checkpoints)
    assert wanted(config, aliases) is expected


def test_existing_source_names_the_missing_path(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"w")
    assert existing_source(tmp_path / "model.pt") == str(tmp_path / "model.pt")
    assert existing_source(tmp_path) == str(tmp_path)  # a checkpoint directory is fine
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        existing_source(tmp_path / "missing.pt")


@pytest.mark.parametrize(("name", "expected"), [("ckpt", "ckpt"), ("ckpt/step_1000", "ckpt-step_1000"),
                                                ("my model v2.0", "my-model-v2.0"), ("-.x.-", "x")])
def test_artifact_name(name: str, expected: str) -> None:
    assert artifact_name(name) == expected


def test_artifact_name_with_nothing_usable_is_an_error() -> None:
    with pytest.raises(ValueError, match="no usable characters"):
        artifact_name("///")
