"""Tests of sdxl_dist_log.unified: per-rank files, console levels, progress arithmetic and handler lifecycle.

Ranks are given as ``RankInfo`` values, so two "ranks" live in one process without torch.distributed. LogConfig's
validation is tested in tests/test_config.py.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import psutil
import pytest

from sdxl_dist_log.config import LogConfig
from sdxl_dist_log.ranks import RankInfo
from sdxl_dist_log.unified import UnifiedLogger


def _rank(r: int, world: int = 2) -> RankInfo:
    return RankInfo(rank=r, world_size=world, local_rank=r, local_world_size=world)


class Terminal(io.StringIO):
    """A console that says it is a terminal, as an interactive stderr does: it gets the live bar."""

    def isatty(self) -> bool:
        return True


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _logger(tmp_path: Path, rank: int = 0, stream: io.StringIO | None = None, clock: Clock | None = None,
            **cfg) -> UnifiedLogger:
    cfg.setdefault("progress", False)
    return UnifiedLogger(LogConfig(log_dir=str(tmp_path / "logs"), **cfg), rank_info=_rank(rank),
                         stream=Terminal() if stream is None else stream, **({"clock": clock} if clock else {}))


def _console(log: UnifiedLogger) -> logging.Handler:
    [handler] = [h for h in log._handlers if not isinstance(h, logging.FileHandler)]
    assert handler in log.logger.handlers
    return handler


def _ours_attached(log: UnifiedLogger, handlers: list[logging.Handler]) -> list[logging.Handler]:
    """The given handlers still on the logger (pytest may attach capture handlers of its own; those don't count)."""
    return [h for h in log.logger.handlers if any(h is o for o in handlers)]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- files ------------------------------------------------------------------------------------------------------
def test_one_log_and_one_metrics_file_per_rank(tmp_path: Path) -> None:
    """Each rank writes its own text log and metrics JSONL, and only its own lines: no other file appears."""
    logs = [_logger(tmp_path, r, name="train") for r in (0, 1)]
    try:
        for step in range(3):
            for r, log in enumerate(logs):
                log.info("rank %d step %d", r, step)
                log.log_metrics({"loss": r + step / 10}, step=step)
    finally:
        for log in logs:
            log.close()
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [
        "train.rank0.log", "train.rank0.metrics.jsonl", "train.rank1.log", "train.rank1.metrics.jsonl"]
    for r, log in enumerate(logs):
        assert log.log_path == tmp_path / "logs" / f"train.rank{r}.log"
        assert log.metrics_path == tmp_path / "logs" / f"train.rank{r}.metrics.jsonl"
        lines = log.log_path.read_text().splitlines()
        steps = [line for line in lines if "step" in line and "progress" not in line]
        assert len(steps) == 3
        assert all(f"[rank {r}] INFO rank {r} step" in line for line in steps)  # no other rank's lines
        rows = _jsonl(log.metrics_path)
        assert [row["step"] for row in rows] == [0, 1, 2]
        assert [row["loss"] for row in rows] == [r + s / 10 for s in range(3)]
        assert all(isinstance(row["time"], float) for row in rows)


def test_metrics_jsonl_non_finite_as_strings(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    with _logger(tmp_path) as log:
        log.log_metrics(
            {"nan": float("nan"), "inf": float("inf"), "ninf": -float("inf"), "np": np.float32(0.5),
             "t": np.array(float("nan")), "ok": 1.5, "n": 3, "flag": True, "text": "hi", "none": None,
             "obj": object.__new__(type("Odd", (), {"__repr__": lambda self: "odd"}))},
            step=7,
        )
        path = log.metrics_path
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    [row] = _jsonl(path)
    assert row["nan"] == "nan" and row["inf"] == "inf" and row["ninf"] == "-inf" and row["t"] == "nan"
    assert row["np"] == 0.5 and row["ok"] == 1.5 and row["n"] == 3 and type(row["n"]) is int and row["flag"] is True
    assert row["text"] == "hi" and row["none"] is None and row["obj"] == "odd"
    assert row["step"] == 7


def test_metrics_jsonl_keeps_ints_and_bools_when_all_values_are_numbers(tmp_path: Path) -> None:
    """The all-numeric path reads every value in one host copy; integers and bools still come out as such."""
    np = pytest.importorskip("numpy")
    torch = pytest.importorskip("torch")
    with _logger(tmp_path) as log:
        log.log_metrics({"count": 4, "np_int": np.int64(3), "t_int": torch.tensor(5), "t_bool": torch.tensor(True),
                         "flag": False, "loss": 0.25, "t_loss": torch.tensor(0.5), "f32": np.float32(2.0)}, step=1)
    text = log.metrics_path.read_text()
    assert '"count": 4,' in text and '"np_int": 3,' in text and '"t_int": 5,' in text  # not 4.0
    [row] = _jsonl(log.metrics_path)
    assert {k: type(v).__name__ for k, v in row.items() if k not in ("time", "step")} == {
        "count": "int", "np_int": "int", "t_int": "int", "t_bool": "bool", "flag": "bool", "loss": "float",
        "t_loss": "float", "f32": "float"}


def test_metrics_file_appends_across_loggers(tmp_path: Path) -> None:
    for step in (1, 2):
        with _logger(tmp_path) as log:
            log.log_metrics({"x": step}, step=step)
    assert [row["x"] for row in _jsonl(log.metrics_path)] == [1, 2]


@pytest.mark.parametrize(("file", "metrics_file"), [(False, False), (True, False), (False, True)])
def test_files_off(tmp_path: Path, file: bool, metrics_file: bool) -> None:
    with _logger(tmp_path, file=file, metrics_file=metrics_file, console=False) as log:
        log.info("hello")
        log.log_metrics({"x": 1})
        assert len(log._handlers) == int(file)
    assert (log.log_path is not None) is file
    assert (log.metrics_path is not None) is metrics_file
    assert (tmp_path / "logs").exists() is (file or metrics_file)
    assert log._handlers == []


def test_debug_level_logs_metrics_line(tmp_path: Path) -> None:
    with _logger(tmp_path, level="debug", console=False) as log:
        log.log_metrics({"loss": 0.25}, step=4)
        log.debug("dbg")
    text = log.log_path.read_text()
    assert "DEBUG metrics step=4 {'loss': 0.25}" in text
    assert "DEBUG dbg" in text


def test_level_filters_file(tmp_path: Path) -> None:
    with _logger(tmp_path, level="WARNING", console=False) as log:
        log.info("quiet")
        log.warning("loud")
        log.error("louder")
    text = log.log_path.read_text()
    assert "quiet" not in text and "WARNING loud" in text and "ERROR louder" in text


# -- console ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rank", "all_ranks", "level", "expected"),
    [
        (0, False, "INFO", logging.INFO),
        (1, False, "INFO", logging.WARNING),
        (1, True, "INFO", logging.INFO),
        (0, False, "DEBUG", logging.DEBUG),
        (1, False, "DEBUG", logging.WARNING),
        (1, True, "DEBUG", logging.DEBUG),
        (0, False, "ERROR", logging.ERROR),
    ],
)
def test_console_level(tmp_path: Path, rank: int, all_ranks: bool, level: str, expected: int) -> None:
    with _logger(tmp_path, rank, level=level, all_ranks_console=all_ranks, file=False, metrics_file=False) as log:
        assert _console(log).level == expected
        assert log.is_primary is (rank == 0)


def test_primary_rank_one_gets_info_console(tmp_path: Path) -> None:
    with _logger(tmp_path, 1, primary_rank=1, file=False, metrics_file=False) as log:
        assert log.is_primary
        assert _console(log).level == logging.INFO
    with _logger(tmp_path, 0, primary_rank=1, file=False, metrics_file=False) as log:
        assert _console(log).level == logging.WARNING


def test_console_output_on_non_primary(tmp_path: Path) -> None:
    console = Terminal()
    with _logger(tmp_path, 1, stream=console, file=False, metrics_file=False) as log:
        log.info("not shown")
        log.warning("shown")
    err = console.getvalue()
    assert "not shown" not in err
    assert "[rank 1] WARNING shown" in err


def test_logger_does_not_propagate(tmp_path: Path) -> None:
    with _logger(tmp_path, console=False) as log:
        assert log.logger.propagate is False
        assert log.logger.name == "sdxl_dist_log.sdxl.rank0"


# -- progress ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bar", [True, False])
def test_progress_clamps_and_stats(tmp_path: Path, bar: bool) -> None:
    with _logger(tmp_path, progress=bar, console=False) as log:
        stats = log.progress_stats()  # before any start: no crash, nothing meaningful
        assert stats == {"done": 0, "total": None, "rate": None, "eta": None}
        log.start_progress(total=3, desc="train")
        assert (log._bar is not None) is bar
        assert log.progress_stats()["rate"] is None  # no step yet
        assert log.progress_stats()["eta"] is None
        log.update_progress(0)
        assert log.progress_stats()["done"] == 0
        log.update_progress(1)
        mid = log.progress_stats()
        assert mid["done"] == 1 and mid["total"] == 3
        assert mid["rate"] is not None and mid["rate"] > 0
        assert mid["eta"] is not None and mid["eta"] >= 0
        log.update_progress(5)  # past the total: clamped
        end = log.progress_stats()
        assert end["done"] == 3 and end["eta"] == 0.0
        log.update_progress(1)
        log.update_progress(0)
        assert log.progress_stats()["done"] == 3
        if bar:
            assert log._bar.n == 3
        log.close_progress()
        assert log._bar is None
    assert "progress: 3/3 steps" in log.log_path.read_text()


def test_progress_reaching_the_total_exactly_then_restarted(tmp_path: Path) -> None:
    """Steps that land exactly on the total end with eta 0; later zero or overshooting steps keep it at the total;
    restarting with total 0 or no total goes on counting; the log file records the finished bar."""
    with UnifiedLogger(LogConfig(name="prog", log_dir=str(tmp_path)), rank_info=RankInfo()) as log:
        log.start_progress(total=3)
        for _ in range(3):
            log.update_progress(1)
        log.update_progress(0)
        log.update_progress(5)
        stats = log.progress_stats()
        assert (stats["done"], stats["total"], stats["eta"]) == (3, 3, 0.0)
        log.start_progress(total=0)
        log.update_progress(1)
        log.start_progress(total=None)
        log.update_progress(2)
        assert log.progress_stats()["done"] == 2
        log.close_progress()
    assert "progress: 3/3 steps" in (tmp_path / "prog.rank0.log").read_text()


def test_progress_total_zero(tmp_path: Path) -> None:
    with _logger(tmp_path, progress=True, console=False) as log:
        log.start_progress(total=0)
        assert log.progress_stats() == {"done": 0, "total": 0, "rate": None, "eta": 0.0}
        log.update_progress(3)
        log.update_progress(0)
        assert log.progress_stats()["done"] == 0
    assert "progress: 0/0 steps, no steps" in log.log_path.read_text()


def test_progress_open_ended(tmp_path: Path) -> None:
    with _logger(tmp_path, progress=True, console=False) as log:
        log.start_progress()
        log.update_progress(10)
        stats = log.progress_stats()
        assert stats["done"] == 10 and stats["total"] is None and stats["eta"] is None


def test_update_without_start(tmp_path: Path) -> None:
    with _logger(tmp_path, console=False) as log:
        log.update_progress(2)
        assert log.progress_stats()["done"] == 2
        assert log.progress_stats()["rate"] is None


def test_progress_restart_resets(tmp_path: Path) -> None:
    with _logger(tmp_path, progress=True, console=False) as log:
        log.start_progress(total=2)
        log.update_progress(2)
        log.start_progress(total=5)
        assert log.progress_stats()["done"] == 0
        assert log.progress_stats()["total"] == 5


def test_no_bar_on_non_primary(tmp_path: Path) -> None:
    with _logger(tmp_path, 1, progress=True, console=False) as log:
        log.start_progress(total=4)
        assert log._bar is None
        log.update_progress(2)
        assert log.progress_stats()["done"] == 2


@pytest.mark.parametrize(("call", "arg"), [("start_progress", -1), ("update_progress", -1)])
def test_progress_negative_is_an_error(tmp_path: Path, call: str, arg: int) -> None:
    with _logger(tmp_path, console=False) as log:
        with pytest.raises(ValueError, match=">= 0"):
            getattr(log, call)(arg)


def test_postfix_shows_on_the_bar_and_in_the_summary(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    console = Terminal()
    with _logger(tmp_path, stream=console, progress=True) as log:
        log.start_progress(total=4, desc="train")
        log.update_progress(1)
        log.set_postfix(step_loss=torch.tensor(0.123456), lr=1e-4, epoch=2)
        assert log._bar.postfix == "step_loss=0.1235, lr=0.0001, epoch=2"
        log.set_postfix({"step_loss": 0.5})  # replaces the last values
        log.update_progress(3)
    summary = [line for line in log.log_path.read_text().splitlines() if "progress:" in line]
    assert len(summary) == 1 and "progress: 4/4 steps, " in summary[0] and summary[0].endswith(" step_loss=0.5")


def test_redirected_console_gets_one_plain_line_per_interval(tmp_path: Path) -> None:
    """Not a terminal (a file, a SLURM .out): no bar and no carriage returns, a progress line once per
    progress_interval with the postfix values, and every record on its own line."""
    console, clock = io.StringIO(), Clock()
    with _logger(tmp_path, stream=console, clock=clock, progress=True, progress_interval=10.0) as log:
        log.start_progress(total=20, desc="train")
        assert log._bar is None
        for step in range(20):
            clock.now += 2.0  # 2 s a step: a line every 5 steps
            log.set_postfix(step_loss=1.0 / (step + 1), lr=0.05)
            log.update_progress(1)
            if step == 7:
                log.warning("a warning mid-run")
    text = console.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    progress = [line.split(" INFO ", 1)[1] for line in lines if " INFO train: " in line]
    assert progress == [
        "train: 5/20 (25%), 0.50 steps/s, eta 30 s, step_loss=0.2, lr=0.05",
        "train: 10/20 (50%), 0.50 steps/s, eta 20 s, step_loss=0.1, lr=0.05",
        "train: 15/20 (75%), 0.50 steps/s, eta 10 s, step_loss=0.06667, lr=0.05",
        "train: 20/20 (100%), 0.50 steps/s, step_loss=0.05, lr=0.05",
    ]
    assert any(line.endswith("WARNING a warning mid-run") for line in lines)
    assert lines[-1].endswith("INFO progress: 20/20 steps, 0.50 steps/s, step_loss=0.05, lr=0.05")
    assert all(line.startswith("20") for line in lines)  # every line is a whole record with its timestamp


def test_no_progress_lines_from_other_ranks_or_when_off(tmp_path: Path) -> None:
    for rank, progress in ((1, True), (0, False)):
        console, clock = io.StringIO(), Clock()
        with _logger(tmp_path, rank, stream=console, clock=clock, progress=progress, progress_interval=1.0,
                     all_ranks_console=True) as log:
            log.start_progress(total=3)
            for _ in range(3):
                clock.now += 5.0
                log.update_progress(1)
        assert [line for line in console.getvalue().splitlines() if ": 1/3" in line] == []


# -- lifecycle --------------------------------------------------------------------------------------------------
def test_close_removes_and_closes_handlers(tmp_path: Path) -> None:
    log = _logger(tmp_path, progress=True)
    handlers = list(log._handlers)
    assert len(handlers) == 2
    assert _ours_attached(log, handlers) == handlers
    metrics = log._metrics_file
    log.start_progress(total=2)
    log.close()
    assert _ours_attached(log, handlers) == []
    assert log._handlers == []
    assert all(h.stream is None for h in handlers if isinstance(h, logging.FileHandler))
    assert metrics.closed
    assert log._bar is None
    log.close()  # idempotent
    log.log_metrics({"x": 1})  # after close: no file, no error
    assert _ours_attached(log, handlers) == []


def test_no_log_file_stays_open_after_an_error_exit(tmp_path: Path) -> None:
    """Leaving the context on an error logs it, and the process then holds neither the log nor the metrics file
    open (as the OS sees it); a new logger of the same name and rank gets exactly one handler, so no line is
    written twice."""
    def open_paths() -> set[str]:
        return {f.path for f in psutil.Process().open_files()}

    log = _logger(tmp_path, name="h", console=False)
    handlers = list(log.logger.handlers)
    assert {str(log.log_path), str(log.metrics_path)} <= open_paths()
    with pytest.raises(RuntimeError), log:
        log.log_metrics({"a": 1}, step=0)
        raise RuntimeError("boom")
    assert log.logger.handlers == []
    assert all(getattr(h, "stream", None) is None for h in handlers if isinstance(h, logging.FileHandler))
    assert not {str(log.log_path), str(log.metrics_path)} & open_paths()
    assert "exiting on RuntimeError: boom" in log.log_path.read_text()
    with _logger(tmp_path, name="h", console=False) as again:
        assert len(again.logger.handlers) == 1
        again.info("second")
    assert log.log_path.read_text().count("second") == 1


def test_context_manager_closes_and_logs_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with _logger(tmp_path, console=False) as log:
            handlers = list(log._handlers)
            log.info("before")
            raise RuntimeError("boom")
    assert _ours_attached(log, handlers) == []
    assert log._metrics_file is None
    text = log.log_path.read_text()
    assert "before" in text
    assert "ERROR exiting on RuntimeError: boom" in text


def test_second_logger_same_name_and_rank_after_close(tmp_path: Path) -> None:
    with _logger(tmp_path, console=False) as first:
        first.info("one")
        first_handlers = list(first._handlers)
    with _logger(tmp_path, console=False) as second:
        second.info("two")
        assert _ours_attached(second, first_handlers) == []
    assert first.logger is second.logger
    text = second.log_path.read_text()
    assert text.count("one") == 1 and text.count("two") == 1


def test_mapping_config(tmp_path: Path) -> None:
    with UnifiedLogger({"name": "m", "log_dir": str(tmp_path), "console": False}, rank_info=_rank(1)) as log:
        assert log.log_path == tmp_path / "m.rank1.log"
        assert log.config.name == "m"


def test_rank_from_environment_when_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with UnifiedLogger(LogConfig(log_dir=str(tmp_path), console=False)) as log:
        assert log.rank_info.rank == 1
        assert log.log_path == tmp_path / "sdxl.rank1.log"
