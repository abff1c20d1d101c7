"""Run directories (``sdxl_dist_log.offline.rundir``): finding runs, reading finished, cut, empty and killed ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from offline_support import KILLED_RUN, RUN_TIMEOUT_S, copy_run, subprocess_env, wandb_file, write_script

from sdxl_dist_log.offline import OfflineRun, find_run_dirs, format_run, read_run


def test_media_files_are_the_logged_images(full_run: OfflineRun, full_run_dir: Path) -> None:
    (row,) = full_run.rows_with("sample/images")
    assert sorted(row["sample/images"]["filenames"]) == full_run.media_files
    assert len(full_run.media_files) == 2
    for name in full_run.media_files:
        assert name.startswith("media/images/sample/") and name.endswith(".png")
        assert (full_run_dir / "files" / name).is_file()


# ----------------------------------------------------------------------------------------------------------------
# Cut, empty and killed runs
# ----------------------------------------------------------------------------------------------------------------


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
    run = read_run(run_dir)
    assert run.history == [] and run.record_counts == {} and not run.truncated and run.exit_code is None
    assert run.run_id and full_run_dir.name.endswith(run.run_id)  # from the directory name
    assert "no exit record" in format_run(run)


def _children(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:  # already gone: nothing left to reap
        return []


def _reap(pids: list[int], timeout: float = 10.0) -> None:
    """Wait for processes this test started (wandb-core exits when its parent dies); SIGKILL stragglers."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            proc.kill()


def _wait_for_history(root: Path, rows: int, timeout: float = RUN_TIMEOUT_S) -> None:
    """Poll the live run under ``root`` until its file holds ``rows`` history rows (wandb flushes every 0.5 s)."""
    deadline = time.monotonic() + timeout
    seen = 0
    while seen < rows:
        runs = find_run_dirs(root)
        try:
            seen = len(read_run(runs[0]).history) if runs else 0
        except ValueError:  # the run directory exists but its .wandb file not yet
            seen = 0
        if seen < rows:
            if time.monotonic() > deadline:
                pytest.fail(f"the live run under {root} showed {seen} of {rows} history rows within {timeout} s")
            time.sleep(0.05)


@pytest.mark.slow
def test_sigkilled_run_is_readable(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(write_script(tmp_path, KILLED_RUN)), str(tmp_path)],
        env=subprocess_env(tmp_path),
        stdin=subprocess.PIPE,
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
        _wait_for_history(tmp_path, 5)  # the rows are on disk: the kill below can lose nothing of them
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
