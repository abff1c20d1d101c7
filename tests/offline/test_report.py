"""The text report (``sdxl_dist_log.offline.report``) that ``sdxl-dist-log inspect`` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.cli import main
from sdxl_dist_log.offline import OfflineRun, format_run


def test_format_run(full_run: OfflineRun) -> None:
    text = format_run(full_run)
    for needle in [
        full_run.run_id,
        "group: grp",
        "job_type: train",
        "tags: a, b",
        "exit: code 0",
        "truncated: no",
        "model: {depth=3, attn.heads=8}",
        "history: 6 rows, steps 0..5",
        "metrics/loss: 5 rows, first=1 last=0.2, min=0.2 max=1",
        "sample/images: 1 rows, 2 images in 1 entries",
        "system: 1 keys in 5 rows",
        "gpu0/util: 5 rows",
        "ckpt:v0 (model) aliases [latest, step_1], 1 files, 2 bytes",
        "ckpt:v1 (model) aliases [latest, step_2], 2 files, 11 bytes",
        'metadata: {"step":1,"opt":{"name":"adam"}}',
        "media files: 2",
    ]:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert "\n  system/gpu0/util" not in text  # system keys only in their own block


def history_line(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("history:")]
    return line


def hand_made_run(config: dict[str, Any]) -> OfflineRun:
    """Three rows carrying both ``trainer/step`` (5..7) and ``global_step`` (100..102); ``_step`` 0..2."""
    rows = [{"_step": i, "trainer/step": 5 + i, "global_step": 100 + i, "loss": 1.0} for i in range(3)]
    return OfflineRun(Path("."), config=config, history=rows)


CUSTOM = {"sdxl_dist_log": {"step_metric": "global_step", "world_size": 1}}


@pytest.mark.parametrize(
    ("config", "step_key", "expected"),
    [
        (CUSTOM, None, "history: 3 rows, global_step 100..102"),  # the run's own step metric
        ({"sdxl_dist_log": {"world_size": 1}}, None, "history: 3 rows, trainer/step 5..7"),  # none recorded
        ({}, None, "history: 3 rows, trainer/step 5..7"),
        (CUSTOM, "trainer/step", "history: 3 rows, trainer/step 5..7"),  # an explicit key wins
        ({"sdxl_dist_log": {"step_metric": "absent"}}, None, "history: 3 rows, steps 0..2"),  # no row has it
    ],
)
def test_history_line_shows_the_step_metric_range(config: dict[str, Any], step_key: str | None, expected: str) -> None:
    assert history_line(format_run(hand_made_run(config), step_key)) == expected


def test_logger_run_with_a_custom_step_metric(custom_step_run: OfflineRun, capsys: pytest.CaptureFixture[str]) -> None:
    run = custom_step_run
    assert run.config["sdxl_dist_log"]["step_metric"] == "global_step" and run.step_metric == "global_step"
    assert [row["global_step"] for row in run.history] == [100, 101, 102, 103, 104]
    assert "trainer/step" not in run.keys()
    assert history_line(format_run(run)) == "history: 5 rows, global_step 100..104"
    assert main(["inspect", str(run.path)]) == 0  # what `sdxl-dist-log inspect RUN_DIR` prints
    assert history_line(capsys.readouterr().out) == "history: 5 rows, global_step 100..104"


def test_run_without_the_entry_reads_as_trainer_step(full_run: OfflineRun) -> None:
    assert "sdxl_dist_log" not in full_run.config and full_run.step_metric == "trainer/step"
