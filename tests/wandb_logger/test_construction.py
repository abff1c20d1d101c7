"""WandbLogger's front door: fields as keywords (Lightning's spelling), ``.run`` as the escape hatch, the one start line
that says where the run is, and bad input treated alike in every mode.

Runs with ``mode="disabled"`` stay in this process (no wandb import); offline runs are made in a forked child.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

from sdxl_dist_log import CheckpointError, ConfigError, WandbConfig, WandbLogger
from sdxl_dist_log.construction import resolve_config, start_line
from sdxl_dist_log.identity import RunIdentity

pytestmark = pytest.mark.timeout(300)

QUIET = dict(log_system_metrics=False)


# -- keywords ---------------------------------------------------------------------------------------------------
def test_keywords_are_config_fields(capsys: pytest.CaptureFixture[str]) -> None:
    with WandbLogger(project="kw", name="first", tags=["a"], mode="disabled", **QUIET) as wb:
        assert (wb.config.project, wb.config.name, wb.config.tags, wb.config.mode) == ("kw", "first", ["a"], "disabled")
    capsys.readouterr()


def test_a_mapping_and_keywords_merge() -> None:
    merged = resolve_config({"project": "p", "mode": "offline"}, {"name": "n"})
    assert (merged.project, merged.mode, merged.name) == ("p", "offline", "n")


def test_a_config_object_still_works_alone() -> None:
    config = WandbConfig(project="obj", mode="disabled")
    assert resolve_config(config, {}) is config


@pytest.mark.parametrize(
    ("config", "fields", "says"),
    [
        ({"project": "a"}, {"project": "b"}, "'project' both in config and as a keyword"),
        ({"project": "a", "mode": "offline"}, {"mode": "offline", "name": "x"}, "'mode' both"),
        (WandbConfig(project="a"), {"name": "b"}, "a WandbConfig and the keyword fields name"),
        (None, {"projekt": "a"}, "WandbConfig has no field 'projekt'; known fields: project"),
        (None, {"mode": "sometimes"}, "WandbConfig.mode='sometimes' is not allowed"),
    ],
)
def test_config_given_twice_or_wrong_names_the_field(config: Any, fields: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        WandbLogger(config, **fields)


# -- the start line -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("identity", "url", "expected"),
    [
        (RunIdentity("r1", "r1", "g", "train-env", mode="offline", run_dir="/o/offline-run-r1"), None,
         "W&B run r1 (offline) group=g job_type=train-env in /o/offline-run-r1; upload it later with: "
         "wandb sync /o/offline-run-r1"),
        (RunIdentity("r2", "r2", None, "train-single", mode="online", run_dir="/o/run-r2"),
         "https://wandb.ai/me/p/runs/r2", "W&B run r2 (online) job_type=train-single at https://wandb.ai/me/p/runs/r2"),
        (RunIdentity("r3", "r3", None, None, mode="disabled"), None, "W&B run r3 is disabled: nothing is written"),
        (RunIdentity("r4", "r4", None, None, mode="offline", run_dir="/o/r4", fallback_reason="no W&B API key"),
         None, "W&B run r4 (offline) in /o/r4; upload it later with: wandb sync /o/r4 (fell back: no W&B API key)"),
    ],
)
def test_start_line_says_mode_and_where(identity: RunIdentity, url: str | None, expected: str) -> None:
    assert start_line(identity, url) == expected


def test_a_bare_logger_still_gets_the_start_line_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """No logger, or a logging.Logger that would swallow INFO: the line goes to stderr, once."""
    quiet = logging.getLogger("test_construction.quiet")
    quiet.propagate = False
    for logger in (None, quiet):
        with WandbLogger(project="p", mode="disabled", logger=logger, **QUIET) as wb:
            pass
        err = capsys.readouterr().err
        assert err == f"sdxl_dist_log: W&B run {wb.identity.run_id} is disabled: nothing is written\n"


def test_a_logger_that_shows_info_gets_the_line_instead(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    shown = logging.getLogger("test_construction.shown")
    shown.propagate = False
    shown.setLevel(logging.INFO)
    handler = logging.StreamHandler(stream)
    shown.addHandler(handler)
    try:
        with WandbLogger(project="p", mode="disabled", logger=shown, **QUIET) as wb:
            pass
    finally:
        shown.removeHandler(handler)
    assert stream.getvalue() == f"W&B run {wb.identity.run_id} is disabled: nothing is written\n"
    assert capsys.readouterr().err == ""


# -- .run and bad input, disabled against offline -----------------------------------------------------------------
def test_disabled_has_no_run_and_rejects_a_missing_checkpoint(capsys: pytest.CaptureFixture[str]) -> None:
    with WandbLogger(project="p", mode="disabled", **QUIET) as wb:
        assert wb.run is None
        with pytest.raises(CheckpointError, match="missing.pt"):
            wb.log_model("missing.pt")
    capsys.readouterr()


def _offline() -> dict[str, Any]:
    err = io.StringIO()
    sys.stderr, real = err, sys.stderr
    out: dict[str, Any] = {}
    try:
        with WandbLogger(project="kw-offline", name="named", mode="offline", dir="out", **QUIET) as wb:
            out["run_is_wandb"] = type(wb.run).__module__.startswith("wandb")
            out["run_id"], out["identity"] = wb.run.id, wb.identity.run_id
            out["run_name"] = wb.run.name
            try:
                wb.log_model("missing.pt")
            except CheckpointError as exc:
                out["missing"] = str(exc)
            out["run_dir"] = os.path.abspath(wb.run_dir)
    finally:
        sys.stderr = real
    out["stderr"] = err.getvalue()
    return out


def test_offline_run_handle_start_line_and_missing_checkpoint(tmp_path: Any, in_child: Callable[..., Any]) -> None:
    """A plain keyword-built offline logger: ``.run`` is the wandb run, one start line names the run dir and the
    sync command, and a missing checkpoint raises as in disabled mode."""
    out = in_child(_offline, tmp_path)
    assert out["run_is_wandb"] and out["run_id"] == out["identity"] and out["run_name"] == "named"
    assert "missing.pt" in out["missing"]
    lines = out["stderr"].splitlines()
    assert lines == [f"sdxl_dist_log: W&B run {out['identity']} (offline) job_type=train-single in {out['run_dir']}; "
                     f"upload it later with: wandb sync {out['run_dir']}"]


def test_a_given_backend_has_no_start_line_pointing_at_a_run_directory(tmp_path: Any, capsys: Any) -> None:
    """``backend=NullBackend()`` (tests, benchmarks) writes no W&B run: no line may send a user to ``wandb sync``."""
    from sdxl_dist_log.backends.base import NullBackend

    with WandbLogger(mode="offline", dir=str(tmp_path), log_system_metrics=False, backend=NullBackend()) as wb:
        assert wb.log_metrics({"loss": 1.0}, step=0) == {"metrics/loss": 1.0}
        assert wb.run_dir is None
    assert "wandb sync" not in capsys.readouterr().err
