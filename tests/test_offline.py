"""Tests of sdxl_dist_log.offline against real offline runs made by the installed wandb (in subprocesses)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdxl_dist_log import offline
from sdxl_dist_log.offline import (
    BLOCK_SIZE,
    FILE_HEADER,
    OfflineRun,
    ReadStatus,
    WandbFileError,
    chunk_crc,
    find_run_dirs,
    flatten,
    format_run,
    iter_payloads,
    read_records,
    read_run,
)

pytest.importorskip("wandb")
np = pytest.importorskip("numpy")

RUN_TIMEOUT_S = 60

# ----------------------------------------------------------------------------------------------------------------
# Helpers: a reference LevelDB-log writer and a runner for wandb scripts
# ----------------------------------------------------------------------------------------------------------------


def encode_log(payloads: list[bytes]) -> bytes:
    """Write payloads the way wandb-core does: header in block 0, chunks never cross 32 KiB blocks."""
    out = bytearray(FILE_HEADER)
    for payload in payloads:
        rest, first = payload, True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\0" * left
                left = BLOCK_SIZE
            fragment, rest = rest[: left - 7], rest[left - 7 :]
            last = not rest
            kind = 1 if first and last else 2 if first else 4 if last else 3
            out += struct.pack("<IHB", chunk_crc(kind, fragment), len(fragment), kind) + fragment
            first = False
            if last:
                break
    return bytes(out)


def payloads_of(data: bytes) -> tuple[list[bytes], ReadStatus]:
    status = ReadStatus()
    return list(iter_payloads(io.BytesIO(data), status)), status


def wandb_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp),
        WANDB_DATA_DIR=str(tmp / "_data"),
        WANDB_CACHE_DIR=str(tmp / "_cache"),
        WANDB_CONFIG_DIR=str(tmp / "_config"),
        WANDB_SILENT="true",
        WANDB_ERROR_REPORTING="false",
        WANDB_DISABLE_GIT="true",
    )
    return env


PRELUDE = """
import os, sys, time
from pathlib import Path
import numpy as np
import wandb
out = Path(sys.argv[1])
settings = wandb.Settings(x_transaction_log_flush_interval=0.5, x_disable_stats=True)
"""

FULL_RUN = """
run = wandb.init(project="proj", name="full", group="grp", job_type="train", tags=["a", "b"], notes="hello",
                 config={"lr": 0.001, "model": {"depth": 3, "attn": {"heads": 8}}, "names": ["x", "y"]},
                 dir=str(out), settings=settings)
for step in range(5):
    run.log({"metrics/loss": 1.0 / (step + 1), "nested": {"a": step}, "system/gpu0/util": 10.0 * step}, step=step)
img = np.zeros((8, 8, 3), dtype=np.uint8); img[..., 0] = 255
run.log({"sample/images": [wandb.Image(img, caption="red"), wandb.Image(img[..., ::-1].copy())]}, step=5)
(out / "weights.txt").write_text("w1")
a = wandb.Artifact("ckpt", type="model", metadata={"step": 1, "opt": {"name": "adam"}})
a.add_file(str(out / "weights.txt"))
run.log_artifact(a, aliases=["latest", "step_1"])
ckdir = out / "ckdir"; (ckdir / "inner").mkdir(parents=True)
(ckdir / "model.bin").write_bytes(b"x" * 10); (ckdir / "inner" / "opt.txt").write_text("o")
a = wandb.Artifact("ckpt", type="model", metadata={"step": 2})
a.add_dir(str(ckdir))
run.log_artifact(a, aliases=["latest", "step_2"])
b = wandb.Artifact("plain", type="dataset"); b.add_file(str(out / "weights.txt"))
run.log_artifact(b)
run.summary["best"] = 0.2
run.finish()
"""

KILLED_RUN = """
run = wandb.init(project="proj", name="killed", dir=str(out), settings=settings)
for step in range(5):
    run.log({"loss": float(step)}, step=step, commit=True)
print("logged", flush=True)
time.sleep(60)
"""


def run_script(tmp: Path, body: str) -> None:
    script = tmp / "make_run.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp)],
        env=wandb_env(tmp),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def full_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("full")
    run_script(tmp, FULL_RUN)
    runs = find_run_dirs(tmp)
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def full_run(full_run_dir: Path) -> OfflineRun:
    return read_run(full_run_dir)


def wandb_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("*.wandb")
    return path


# ----------------------------------------------------------------------------------------------------------------
# The log format, on synthetic data
# ----------------------------------------------------------------------------------------------------------------


def test_chunk_crc_is_zlib_crc32_over_type_then_data() -> None:
    import zlib

    assert chunk_crc(1, b"abc") == zlib.crc32(b"\x01abc")


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [0],
        [10, 20, 30],
        [BLOCK_SIZE - 14],  # fills block 0 exactly
        [BLOCK_SIZE - 7 - 7 - 7],  # leaves exactly 7 bytes: an empty FIRST chunk, then the rest
        [BLOCK_SIZE - 7 - 7 - 3],  # leaves 3 bytes of padding
        [100_000, 5, 70_000],  # FIRST, MIDDLE..., LAST across blocks
    ],
)
def test_payloads_roundtrip_across_blocks(sizes: list[int]) -> None:
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    got, status = payloads_of(encode_log(payloads))
    assert got == payloads
    assert not status.truncated and status.reason is None


def test_every_cut_yields_a_prefix_and_flags_truncation() -> None:
    payloads = [b"a" * 50, b"b" * 40_000, b"c" * 30]
    data = encode_log(payloads)
    ends = {len(encode_log(payloads[:k])) for k in range(len(payloads) + 1)}
    for cut in list(range(0, 80)) + list(range(BLOCK_SIZE - 20, BLOCK_SIZE + 20)) + list(range(len(data) - 40, len(data))):
        got, status = payloads_of(data[:cut])
        assert got == payloads[: len(got)], cut
        if cut in ends:
            assert not status.truncated, cut
        elif cut >= len(FILE_HEADER):
            assert status.truncated and status.reason, cut
            assert status.good_offset <= cut


def test_corrupt_byte_stops_at_the_damaged_record() -> None:
    payloads = [b"one", b"two", b"three"]
    data = bytearray(encode_log(payloads))
    data[len(encode_log(payloads[:1])) + 8] ^= 0xFF  # first data byte of record 2
    got, status = payloads_of(bytes(data))
    assert got == [b"one"]
    assert status.truncated and "CRC" in (status.reason or "")


def test_zero_filled_tail_is_truncation() -> None:
    got, status = payloads_of(encode_log([b"x"]) + b"\0" * 100)
    assert got == [b"x"] and status.truncated and "zero" in (status.reason or "")


def test_header_only_is_empty_and_not_truncated() -> None:
    assert payloads_of(FILE_HEADER) == ([], ReadStatus(False, None, len(FILE_HEADER)))


@pytest.mark.parametrize("n", [0, 3, 6])
def test_partial_header_is_truncated(n: int) -> None:
    got, status = payloads_of(FILE_HEADER[:n])
    assert got == [] and status.truncated


def test_wrong_header_raises(tmp_path: Path) -> None:
    bad = tmp_path / "run-x.wandb"
    bad.write_bytes(b"LEVELDB" + encode_log([b"x"])[7:])
    with pytest.raises(WandbFileError, match="not a W&B"):
        list(read_records(bad))


def test_flatten_keeps_media_whole() -> None:
    media = {"_type": "images/separated", "count": 2}
    assert flatten({"a": {"b": {"c": 1}}, "m": media, "e": {}}) == {"a/b/c": 1, "m": media}


def test_importing_offline_does_not_import_wandb() -> None:
    code = "import sys, sdxl_dist_log.offline; assert 'wandb' not in sys.modules, 'wandb imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=RUN_TIMEOUT_S)


# ----------------------------------------------------------------------------------------------------------------
# A real finished run
# ----------------------------------------------------------------------------------------------------------------


def test_real_file_matches_the_reference_writer(full_run_dir: Path) -> None:
    data = wandb_file(full_run_dir).read_bytes()
    payloads, status = payloads_of(data)
    assert not status.truncated and status.good_offset == len(data)
    assert encode_log(payloads) == data  # same framing and CRC, byte for byte


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


def test_images_and_media_files(full_run: OfflineRun, full_run_dir: Path) -> None:
    (row,) = full_run.rows_with("sample/images")
    images = row["sample/images"]
    assert images["_type"] == "images/separated" and images["count"] == 2
    assert images["captions"][0] == "red"
    assert sorted(images["filenames"]) == full_run.media_files
    for name in full_run.media_files:
        assert name.startswith("media/images/sample/") and name.endswith(".png")
        assert (full_run_dir / "files" / name).is_file()


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


# ----------------------------------------------------------------------------------------------------------------
# Cut, empty and killed runs
# ----------------------------------------------------------------------------------------------------------------


def copy_run(src: Path, parent: Path, name: str | None = None) -> Path:
    dst = parent / (name or src.name)
    shutil.copytree(src, dst)
    return dst


def test_truncated_file_reads_prefix(full_run: OfflineRun, full_run_dir: Path, tmp_path: Path) -> None:
    run_dir = copy_run(full_run_dir, tmp_path)
    path = wandb_file(run_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])  # cuts into the exit record (or just before it)
    run = read_run(path)
    assert run.truncated and run.truncation_reason
    assert run.exit_code is None
    assert run.run_id == full_run.run_id and run.config == full_run.config
    assert sum(run.record_counts.values()) < sum(full_run.record_counts.values())
    assert "truncated: yes" in format_run(run) and "no exit record: live or killed" in format_run(run)
    half = len(data) // 2
    path.write_bytes(data[:half])
    run = read_run(run_dir)
    assert run.truncated and 0 < len(run.history) <= len(full_run.history)
    assert run.history == full_run.history[: len(run.history)]


def test_header_only_file(full_run_dir: Path, tmp_path: Path) -> None:
    run_dir = copy_run(full_run_dir, tmp_path)
    path = wandb_file(run_dir)
    path.write_bytes(path.read_bytes()[:7])
    reader = read_records(path)
    assert list(reader) == [] and not reader.truncated
    run = read_run(run_dir)
    assert run.history == [] and run.record_counts == {} and not run.truncated and run.exit_code is None
    assert run.run_id  # from the directory name
    assert "no exit record" in format_run(run)


def _children(pid: int) -> list[int]:
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except Exception:
        return []


def _reap(pids: list[int], timeout: float = 10.0) -> None:
    """Wait for processes this test started (wandb-core exits when its parent dies); SIGKILL stragglers."""
    import psutil

    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_sigkilled_run_is_readable(tmp_path: Path) -> None:
    pytest.importorskip("psutil")
    script = tmp_path / "make_run.py"
    script.write_text(PRELUDE + textwrap.dedent(KILLED_RUN))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        env=wandb_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    children: list[int] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "logged"
        time.sleep(1.5)  # three flush intervals of 0.5 s
        children = _children(proc.pid)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=RUN_TIMEOUT_S)
        _reap(children)
    run = read_run(tmp_path)
    assert run.exit_code is None and not run.finished
    assert run.name == "killed"
    assert run.column("loss") == [(s, float(s)) for s in range(5)]
    assert "no exit record: live or killed" in format_run(run)


# ----------------------------------------------------------------------------------------------------------------
# Finding runs
# ----------------------------------------------------------------------------------------------------------------


def test_read_run_accepts_dir_file_root_and_wandb_dir(full_run: OfflineRun, full_run_dir: Path) -> None:
    root = full_run_dir.parent.parent
    for path in [full_run_dir, wandb_file(full_run_dir), root, root / "wandb"]:
        assert read_run(path).run_id == full_run.run_id, path
    assert find_run_dirs(root) == find_run_dirs(root / "wandb") == [full_run_dir]
    assert find_run_dirs(full_run_dir) == [full_run_dir]


def test_several_or_no_runs_raise_naming_them(full_run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no run directories"):
        read_run(tmp_path)
    older = copy_run(full_run_dir, tmp_path / "wandb", "offline-run-20200101_000000-older")
    newer = copy_run(full_run_dir, tmp_path / "wandb", "run-20300101_000000-newer")
    (tmp_path / "wandb" / "latest-run").symlink_to(newer)
    assert find_run_dirs(tmp_path) == [older, newer]
    with pytest.raises(ValueError, match="2 run directories") as info:
        read_run(tmp_path)
    assert str(older) in str(info.value) and str(newer) in str(info.value)
    with pytest.raises(FileNotFoundError):
        read_run(tmp_path / "nope")


def test_run_dir_without_wandb_file(tmp_path: Path) -> None:
    run_dir = tmp_path / "offline-run-20250101_000000-abc"
    run_dir.mkdir()
    with pytest.raises(ValueError, match="no .wandb file"):
        read_run(run_dir)


def test_module_exports() -> None:
    for name in offline.__all__:
        assert hasattr(offline, name), name
