"""Tests of sdxl_dist_log.checkpoints: which log_model calls upload, from what path (checked as W&B will walk it),
with which arguments, under which artifact name."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_dist_log.checkpoints import artifact_name, checked_arguments, checked_source, wanted
from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.errors import CheckpointError


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


def test_checked_source_accepts_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "ckpt" / "sub").mkdir(parents=True)
    (tmp_path / "ckpt" / "sub" / "w.pt").write_bytes(b"w")
    (tmp_path / "ckpt" / "alias").symlink_to("sub")  # a working link to a sibling is fine
    (tmp_path / "ckpt" / "again").symlink_to(tmp_path / "ckpt" / "sub")  # the same directory twice is no loop
    assert checked_source(tmp_path / "ckpt" / "sub" / "w.pt") == str(tmp_path / "ckpt" / "sub" / "w.pt")
    assert checked_source(tmp_path / "ckpt") == str(tmp_path / "ckpt")


def _broken_link(root: Path) -> str:
    (root / "model.safetensors").symlink_to(root / "gone.safetensors")
    return "model.safetensors' is a broken symbolic link"


def _link_to_an_ancestor(root: Path) -> str:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "up").symlink_to(root)
    return "a/b/up' is a symbolic link loop"


def _link_to_itself(root: Path) -> str:
    (root / "self").symlink_to("self")
    return "self' is a symbolic link loop"


def _two_links_in_a_ring(root: Path) -> str:
    (root / "x").symlink_to("y")
    (root / "y").symlink_to("x")
    return "is a symbolic link loop"


@pytest.mark.parametrize("make", [_broken_link, _link_to_an_ancestor, _link_to_itself, _two_links_in_a_ring],
                         ids=lambda f: f.__name__.strip("_"))
def test_checked_source_names_the_link_that_would_fail_the_upload(tmp_path: Path, make) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    (root / "config.json").write_text("{}")
    named = make(root)
    with pytest.raises(CheckpointError, match=named) as caught:
        checked_source(root)
    assert "nothing was uploaded" in str(caught.value)


def test_checked_source_names_the_missing_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing.pt' does not exist"):
        checked_source(tmp_path / "missing.pt")


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (dict(path=""), "path=''"),
        (dict(path=5), "path=5"),
        (dict(aliases="latest"), "aliases='latest' must be a list"),
        (dict(aliases=["ok", ""]), "aliases[1]=''"),
        (dict(aliases=["a/b"]), "aliases[0]='a/b'"),
        (dict(aliases=[3]), "aliases[0]=3"),
        (dict(name=""), "name=''"),
        (dict(type=""), "type=''"),
        (dict(metadata={"x": object()}), "log_model metadata: 'x' is a builtins.object"),
        (dict(metadata={1: "a"}), "key 1 must be a non-empty string"),
        (dict(metadata=["a"]), "log_model metadata takes a mapping"),
    ],
)
def test_checked_arguments_name_the_bad_one(arguments: dict, named: str) -> None:
    call = dict(path="ckpt", aliases=None, name=None, type="model", metadata=None) | arguments
    with pytest.raises(CheckpointError, match=named.replace("[", r"\[").replace("]", r"\]")):
        checked_arguments(**call)


def test_checked_arguments_pass_good_ones_through() -> None:
    aliases, metadata = checked_arguments(Path("ckpt"), ("latest", "best"), "sdxl", "model", {"loss": 0.1})
    assert aliases == ["latest", "best"] and metadata == {"loss": 0.1}


@pytest.mark.parametrize(("name", "expected"), [("ckpt", "ckpt"), ("ckpt/step_1000", "ckpt-step_1000"),
                                                ("my model v2.0", "my-model-v2.0"), ("-.x.-", "x")])
def test_artifact_name(name: str, expected: str) -> None:
    assert artifact_name(name) == expected


def test_artifact_name_with_nothing_usable_is_an_error() -> None:
    with pytest.raises(CheckpointError, match="no usable characters"):
        artifact_name("///")
