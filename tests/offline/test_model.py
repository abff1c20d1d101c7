"""The run model (``sdxl_dist_log.offline.model``): flattening keys and the run's accessors, on hand-made runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.offline.model import OfflineArtifact, OfflineRun, flatten, is_media


def test_flatten_keeps_media_whole() -> None:
    media = {"_type": "images/separated", "count": 2}
    assert flatten({"a": {"b": {"c": 1}}, "m": media, "e": {}}) == {"a/b/c": 1, "m": media}
    assert flatten({"a": {"b": 1}}, sep=".", prefix="p.") == {"p.a.b": 1}
    assert is_media(media) and not is_media({"count": 2}) and not is_media([media])


def test_column_uses_step_else_row_index() -> None:
    run = OfflineRun(Path("."), history=[{"_step": 3, "a": 1.0}, {"a": 2.0}, {"_step": "x", "a": 3.0}, {"b": 0}])
    assert run.column("a") == [(3, 1.0), (1, 2.0), (2, 3.0)]
    assert run.rows_with("b") == [{"b": 0}]
    assert run.keys() == ["_step", "a", "b"]


def test_finished_and_artifact_versions() -> None:
    def art(name: str, index: int) -> OfflineArtifact:
        return OfflineArtifact(name, "model", [], {}, f"d{index}", [], version_index=index)

    run = OfflineRun(Path("."), artifacts=[art("ckpt", 0), art("other", 0), art("ckpt", 1)])
    assert not run.finished and OfflineRun(Path("."), exit_code=1).finished
    assert [a.local_version for a in run.artifact_versions("ckpt")] == ["v0", "v1"]
    assert run.artifact_versions("missing") == []


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"sdxl_dist_log": {"step_metric": "global_step", "world_size": 2}}, "global_step"),
        ({"sdxl_dist_log": {"world_size": 2}}, "trainer/step"),  # a run of a logger that did not record it
        ({}, "trainer/step"),  # not written by the logger
        ({"sdxl_dist_log": "global_step"}, "trainer/step"),
        ({"sdxl_dist_log": {"step_metric": ""}}, "trainer/step"),
        ({"sdxl_dist_log": {"step_metric": 3}}, "trainer/step"),
        ({"step_metric": "global_step"}, "trainer/step"),  # only the logger's own entry counts
    ],
)
def test_step_metric_from_the_loggers_config_entry(config: dict[str, Any], expected: str) -> None:
    assert OfflineRun(Path("."), config=config).step_metric == expected


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({"exit_code": 0}, "finished"),
        ({"exit_code": 3}, "failed"),
        ({"exit_code": 1, "preempting": True}, "preempted"),  # the logger's handler marks, then finishes with 1
        ({"preempting": True}, "preempted"),  # marked, then killed before finishing
        ({}, "killed"),
        ({"truncated": True}, "killed"),
    ],
)
def test_end_state_from_the_records(fields: dict[str, Any], state: str) -> None:
    assert OfflineRun(Path("."), **fields).end_state == state


def test_end_time_is_the_exit_records_or_the_last_rows() -> None:
    rows = [{"_timestamp": 105.0}, {"_timestamp": 109.5}, {"a": 1}]
    assert OfflineRun(Path("."), start_time=100.0, runtime=20, history=rows).end_time == 120.0
    assert OfflineRun(Path("."), start_time=100.0, history=rows).end_time == 109.5  # killed: its last row
    assert OfflineRun(Path("."), start_time=100.0).end_time == 100.0
    assert OfflineRun(Path(".")).end_time is None
