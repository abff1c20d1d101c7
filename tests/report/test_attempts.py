"""Several run directories of one run id read as one run (sdxl_dist_log.report.attempts), on hand-made runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_dist_log.offline.model import OfflineArtifact, OfflineRun
from sdxl_dist_log.report.attempts import ATTEMPT_KEY, SUPERSEDED_KEY, load_runs, merge_attempts


def attempt(name: str, start: float, steps: range, **fields) -> OfflineRun:
    rows = [{"trainer/step": s, "_step": i, "_timestamp": start + i, "loss": float(s)} for i, s in enumerate(steps)]
    return OfflineRun(Path(f"/runs/offline-run-{name}-abc"), run_id="abc", start_time=start, history=rows, **fields)


def art(digest: str, aliases: list[str]) -> OfflineArtifact:
    return OfflineArtifact("ckpt", "model", aliases, {}, digest, ["model.pt"])


def test_attempts_in_start_order_and_a_resumed_attempt_replaces_the_replayed_steps() -> None:
    first = attempt("20250101_000000", 100.0, range(0, 15), preempting=True, exit_code=1,
                    config={"lr": 1.0, "sdxl_dist_log": {"world_size": 2, "hostnames": {"node0": "a"}}})
    second = attempt("20250101_010000", 200.0, range(10, 20), exit_code=0,
                     config={"sdxl_dist_log": {"hostnames": {"node1": "b"}}})
    merged = merge_attempts([second, first])  # given in any order
    assert [a.run for a in merged.attempts] == [first, second]
    assert [a.steps() for a in merged.attempts] == [(0, 14), (10, 19)]
    steps = [row["trainer/step"] for row in merged.current_rows()]
    assert steps == list(range(20)), "steps 10..14 of the preempted attempt were redone by the next one"
    assert [row[ATTEMPT_KEY] for row in merged.current_rows()] == [0] * 10 + [1] * 10
    replaced = [row["trainer/step"] for row in merged.rows if row.get(SUPERSEDED_KEY)]
    assert replaced == list(range(10, 15)) and len(merged.rows) == 25, "kept, marked: they ran at their time"
    assert merged.step_key == "trainer/step" and merged.run_id == "abc" and merged.last is second
    assert merged.config == {"lr": 1.0, "sdxl_dist_log": {"world_size": 2, "hostnames": {"node0": "a", "node1": "b"}}}
    assert merged.media_path(0, "media/images/x.png") == first.path / "files" / "media/images/x.png"


def test_artifact_versions_count_digests_across_attempts() -> None:
    first = attempt("20250101_000000", 1.0, range(2), artifacts=[art("d0", ["latest"]), art("d1", ["latest"])])
    second = attempt("20250101_010000", 9.0, range(2, 4), artifacts=[art("d1", ["latest"]), art("d2", ["final"])])
    merged = merge_attempts([first, second])
    assert [(i, a.digest, a.local_version) for i, a in merged.artifacts] == [
        (0, "d0", "v0"), (0, "d1", "v1"), (1, "d1", "v1"), (1, "d2", "v2")]
    assert second.artifacts[1].version_index == 0, "the runs read are not changed"


def test_rows_without_the_step_metric_are_joined_without_replacing() -> None:
    a = OfflineRun(Path("/r/offline-run-20250101_000000-x"), run_id="x", start_time=1.0,
                   history=[{"_step": 0, "a": 1.0}, {"_step": 1, "a": 2.0}])
    b = OfflineRun(Path("/r/offline-run-20250101_000001-x"), run_id="x", start_time=2.0,
                   history=[{"_step": 0, "a": 3.0}])
    merged = merge_attempts([a, b])
    assert merged.step_key == "_step" and [row["a"] for row in merged.rows] == [1.0, 2.0, 3.0]


def test_runs_of_different_ids_are_refused_naming_each() -> None:
    other = OfflineRun(Path("/runs/offline-run-20250101_000000-zzz"), run_id="zzz")
    with pytest.raises(ValueError, match=r"2 different runs.*abc: /runs/offline-run-20250101_000000-abc.*zzz: "):
        merge_attempts([attempt("20250101_000000", 1.0, range(1)), other])
    with pytest.raises(ValueError, match="no runs"):
        merge_attempts([])


def test_load_runs_names_the_path_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such run file or directory: .*missing"):
        load_runs([tmp_path / "missing"])
    with pytest.raises(ValueError, match=f"{tmp_path} holds no run directories"):
        load_runs([tmp_path])
    with pytest.raises(ValueError, match="no run directory given"):
        load_runs([])
