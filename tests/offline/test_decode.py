"""Records -> values (``sdxl_dist_log.offline.decode``): the protobuf layer, then every field of a real finished run."""

from __future__ import annotations

from pathlib import Path

import pytest
from offline_support import encode_log

from sdxl_dist_log.offline import FILE_HEADER, OfflineRun, WandbFileError
from sdxl_dist_log.offline.decode import read_records


def test_wrong_header_raises_on_first_read(tmp_path: Path) -> None:
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"LEVELDB" + encode_log([b"x"])[7:])
    reader = read_records(bad)  # opening is lazy
    with pytest.raises(WandbFileError, match="not a W&B"):
        list(reader)


def test_header_only_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "run-x.wandb"
    path.write_bytes(FILE_HEADER)
    reader = read_records(path)
    assert list(reader) == [] and not reader.truncated and reader.reason is None


def test_undecodable_record_stops_reading_as_truncation(tmp_path: Path) -> None:
    from wandb.proto import wandb_internal_pb2 as pb

    good = pb.Record()
    good.exit.exit_code = 3
    path = tmp_path / "run-x.wandb"
    path.write_bytes(encode_log([good.SerializeToString(), b"\xff", good.SerializeToString()]))
    reader = read_records(path)
    assert [r.exit.exit_code for r in reader] == [3]
    assert reader.truncated and "does not decode" in (reader.reason or "")


# ----------------------------------------------------------------------------------------------------------------
# A real finished run
# ----------------------------------------------------------------------------------------------------------------


def test_identity_and_exit(full_run: OfflineRun, full_run_dir: Path) -> None:
    run = full_run
    assert run.path == full_run_dir
    assert full_run_dir.name.endswith(run.run_id)
    assert (run.project, run.name, run.group, run.job_type, run.notes) == ("proj", "full", "grp", "train", "hello")
    assert run.tags == ["a", "b"]
    assert run.exit_code == 0 and run.finished
    assert not run.truncated and run.truncation_reason is None
    assert run.record_counts["run"] == 1 and run.record_counts["exit"] == 1
    assert run.record_counts["history"] == len(run.history) == 6
    assert run.wandb_version.startswith("0.")
    assert "offline" in run.telemetry["features"]
    assert run.environment.get("python")
    assert run.start_time and run.start_time > 1e9


def test_config_nested_and_unwrapped(full_run: OfflineRun) -> None:
    assert full_run.config == {"lr": 0.001, "model": {"depth": 3, "attn": {"heads": 8}}, "names": ["x", "y"]}


def test_history_rows_and_columns(full_run: OfflineRun) -> None:
    run = full_run
    assert [row["_step"] for row in run.history] == [0, 1, 2, 3, 4, 5]
    assert all("_runtime" in row and "_timestamp" in row for row in run.history)
    assert run.column("metrics/loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert run.column("nested/a") == [(s, s) for s in range(5)]
    assert run.column("system/gpu0/util")[-1] == (4, 40.0)
    assert run.column("missing") == [] and run.rows_with("missing") == []
    (image_row,) = run.rows_with("sample/images")
    assert image_row["_step"] == 5
    assert "metrics/loss" in run.keys()


def test_image_values_stay_whole(full_run: OfflineRun) -> None:
    (row,) = full_run.rows_with("sample/images")
    images = row["sample/images"]
    assert images["_type"] == "images/separated" and images["count"] == 2
    assert images["captions"][0] == "red"


def test_summary(full_run: OfflineRun) -> None:
    assert full_run.summary["best"] == 0.2
    assert full_run.summary["metrics/loss"] == 0.2
    assert full_run.summary["nested/a"] == 4
    assert full_run.summary["_step"] == 5
    assert "_wandb" not in full_run.summary


def test_artifacts_versions_aliases_metadata(full_run: OfflineRun) -> None:
    v0, v1 = full_run.artifact_versions("ckpt")
    assert (v0.type, v0.aliases, v0.metadata) == ("model", ["latest", "step_1"], {"step": 1, "opt": {"name": "adam"}})
    assert v0.files == ["weights.txt"] and v0.size == 2 and v0.local_version == "v0"
    assert (v1.aliases, v1.metadata) == (["latest", "step_2"], {"step": 2})
    assert v1.files == ["inner/opt.txt", "model.bin"] and v1.size == 11 and v1.local_version == "v1"
    assert v0.digest and v1.digest and v0.digest != v1.digest
    (plain,) = full_run.artifact_versions("plain")
    assert plain.aliases == ["latest"] and plain.metadata == {}  # wandb adds "latest" itself


def test_count_records_counts_by_kind_and_resumes_from_its_offset(full_run: OfflineRun) -> None:
    """``count_records`` of a real run: the reader's record counts, and nothing more from the offset it returned."""
    from sdxl_dist_log.offline.decode import count_records

    path = full_run.wandb_file
    counts, offset = count_records(path)
    assert dict(counts) == full_run.record_counts and offset == path.stat().st_size
    again, same = count_records(path, offset)
    assert sum(again.values()) == 0 and same == offset
