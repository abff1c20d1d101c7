"""The writer thread and the journaled backend (sdxl_dist_log/backends/writer.py, journaled.py) against a stand-in
W&B session: what reaches the run, in which part, when a call is refused or the service dies.

The stand-in keeps, per part, what was sent and what its "file" holds (``flush`` moves one to the other, as
wandb-core does every flush interval); the counting function reads those lists. Real W&B services are killed in
tests/backends/test_wandb_backend.py.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdxl_dist_log.backends.journaled import JournaledBackend
from sdxl_dist_log.errors import LoggingInputError
from sdxl_dist_log.journal import Journal, pending_seqs, read_attempt, read_attempts

pytestmark = pytest.mark.timeout(60)
WAIT_S = 30.0
STEP = "trainer/step"


class Part:
    def __init__(self, name: str, config: Mapping[str, Any]) -> None:
        self.name = name
        self.config = dict(config)
        self.sent: list[tuple[str, Any]] = []  # (record kind, value)
        self.file: list[tuple[str, Any]] = []
        self.summary: dict[str, Any] = {}


class FakeSession:
    """A W&B run whose service can die (``kill``), refuse values (keys "bad"), or refuse to restart."""

    run_id = "fake-run"

    def __init__(self) -> None:
        self.parts = [Part("part1", {})]
        self.dead = False
        self.restart_ok = True
        self.detached = 0
        self.gate = threading.Event()  # cleared: finish blocks (a stuck service)
        self.gate.set()

    @property
    def part(self) -> Part:
        return self.parts[-1]

    def _send(self, kind: str, value: Any) -> None:
        if self.dead:
            raise ConnectionResetError("Connection lost")
        self.part.sent.append((kind, value))

    def flush(self) -> None:
        self.part.file = list(self.part.sent)

    def kill(self) -> None:
        self.dead = True

    # the Session protocol
    def run_file(self) -> str:
        return self.part.name

    def log(self, row: Mapping[str, Any]) -> None:
        if "bad" in row:
            raise TypeError("Object of type object is not JSON serializable")
        self._send("history", dict(row))

    def log_images(self, key: str, files: Sequence[str], captions: Sequence[str | None], step: int) -> None:
        assert all(Path(f).exists() for f in files)
        self._send("history", {key: list(files), STEP: step})

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], files: Sequence[str],
                  step: int) -> None:
        assert all(Path(f).exists() for f in files)
        cells = [[files[c["image"]] if isinstance(c, dict) else c for c in row] for row in rows]
        self._send("history", {key: {"columns": list(columns), "rows": cells}, STEP: step})

    def log_artifact(self, path: str, *, name: str, type: str, aliases: Sequence[str],
                     metadata: Mapping[str, Any]) -> None:
        if not Path(path).exists():
            raise FileNotFoundError(f"[Errno 2] No such file or directory: '{path}'")
        self._send("artifact", name)

    def update_config(self, values: Mapping[str, Any]) -> None:
        if any(not isinstance(k, str) for k in values):
            raise AttributeError("'int' object has no attribute 'strip'")
        self._send("config", dict(values))

    def update_summary(self, values: Mapping[str, Any]) -> None:
        self._send("summary", dict(values))
        self.part.summary.update(values)

    def mark_preempting(self) -> None:
        self._send("preempting", True)

    def finish(self, exit_code: int) -> None:
        self.gate.wait(WAIT_S)
        self._send("exit", exit_code)
        self.flush()

    def failure(self, exc: BaseException) -> str | None:
        if self.dead or isinstance(exc, ConnectionError):
            return "wandb-core ended with signal SIGTERM"
        return None

    def reopen(self, config: Mapping[str, Any], timeout: float) -> None:
        if not self.restart_ok:
            raise TimeoutError("init timed out")
        self.parts.append(Part(f"part{len(self.parts) + 1}", config))
        self.dead = False

    def detach(self) -> None:
        self.detached += 1


def count(path: str, start: int, session: FakeSession) -> tuple[Counter[str], int]:
    part = next(p for p in session.parts if p.name == path)
    return Counter(kind for kind, _ in part.file[start:]), len(part.file)


def _backend(tmp_path: Path, session: FakeSession) -> JournaledBackend:
    """A backend over ``session``; a second one over the same ``tmp_path`` is the run's next attempt."""
    return JournaledBackend(session, Journal(tmp_path / "journal", run_id=session.run_id), step_metric=STEP,
                            logger=logging.getLogger("test_writer"),
                            count=lambda path, start: count(path, start, session), config={"lr": 0.1})


def _rows(part: Part) -> list[Any]:
    return [value.get("x", value.get(STEP)) for kind, value in part.file if kind == "history"]


def _sync(backend: JournaledBackend) -> None:
    """Wait until the writer has done everything queued so far."""
    from sdxl_dist_log.backends.writer import Op, Reply

    barrier = Op("barrier", reply=Reply())
    backend.writer.put(barrier)
    assert barrier.reply.wait(WAIT_S), "the writer did not get through its queue"


def test_rows_reach_the_run_in_order_with_their_step_and_pending_values(tmp_path: Path) -> None:
    """Committed rows carry their step; ``commit=False`` values merge into the next committed row while a side row
    in between leaves them alone; a last ``commit=False`` is written at finish; the journal then holds nothing."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    backend.log_row({"x": 1.0}, step=3)
    backend.log_row({"b": 2.0}, step=4, commit=False)
    backend.log_side_row({"system/x": 9.0}, step=4)
    backend.log_row({"c": 3.0}, step=4)
    backend.log_row({"last": 1.0}, step=9, commit=False)
    backend.finish(exit_code=0, timeout=WAIT_S)
    assert [v for k, v in session.part.file if k == "history"] == [
        {"x": 1.0, STEP: 3}, {"system/x": 9.0, STEP: 4}, {"b": 2.0, "c": 3.0, STEP: 4}, {"last": 1.0, STEP: 9}]
    assert session.part.file[-1] == ("exit", 0)
    log = read_attempt(backend.journal.events_path)
    assert log.settled and log.entries == {} and log.last("closed")["state"] == "finished"


def test_images_are_journaled_as_png_files_and_logged_from_them(tmp_path: Path) -> None:
    session = FakeSession()
    backend = _backend(tmp_path, session)
    backend.log_images("sample/images", [np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 1), np.uint8)],
                       ["a", None], step=2)
    _sync(backend)
    [(kind, value)] = session.part.sent
    assert kind == "history" and value[STEP] == 2 and [Path(f).suffix for f in value["sample/images"]] == [".png"] * 2
    media = read_attempt(backend.journal.events_path).media
    assert media == {0: value["sample/images"]}


def test_a_table_with_image_cells_is_journaled_and_an_unwritten_one_is_taken_over_with_its_pngs(
        tmp_path: Path) -> None:
    """A table's image cells become PNG files in the journal; a table the run file does not hold when the process
    ends (its service died, no new one) is written by the next attempt, image cells included."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    session.kill()
    session.restart_ok = False
    backend.log_table("validation/samples", ["prompt", "image"],
                      [["a cat", np.full((4, 4, 3), 7, np.uint8)], ["a dog", None]], step=5)
    backend.finish(1, WAIT_S)
    assert session.part.file == []
    log = read_attempt(backend.journal.events_path)
    assert [e["kind"] for e in log.entries.values()] == ["table"] and len(log.media[0]) == 1

    later = FakeSession()
    taken = _backend(tmp_path, later)
    assert taken.take_over() == 1
    _sync(taken)
    [table] = [value for kind, value in later.part.sent if kind == "history"]
    assert table[STEP] == 5 and table["validation/samples"]["columns"] == ["prompt", "image"]
    (prompt, png), second = table["validation/samples"]["rows"]
    assert prompt == "a cat" and second == ["a dog", None]
    assert png != log.media[0][0] and (np.asarray(Image.open(png)) == 7).all()  # a copy in this attempt's journal
    taken.finish(0, WAIT_S)
    assert [kind for kind, _ in later.part.file] == ["history", "summary", "exit"]


def test_a_refused_config_or_artifact_costs_that_call_only(tmp_path: Path) -> None:
    """A value W&B cannot take, and a checkpoint whose file is gone, raise LoggingInputError naming the call; the
    run goes on: the next row, config and artifact land."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    with pytest.raises(LoggingInputError, match=r"log_config\(\['1'\]\): W&B refused it: AttributeError"):
        backend.update_config({1: "a"})
    with pytest.raises(LoggingInputError, match="No such file or directory"):
        backend.log_artifact(str(tmp_path / "gone.pt"), name="ckpt", type="model", aliases=[], metadata={})
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"w")
    backend.log_row({"x": 1.0}, step=0)
    backend.update_config({"lr": 0.2})
    assert backend.log_artifact(str(checkpoint), name="ckpt", type="model", aliases=["best"], metadata={}) is True
    backend.finish(0, WAIT_S)
    assert [k for k, _ in session.part.file] == ["history", "config", "artifact", "exit"]
    log = read_attempt(backend.journal.events_path)
    assert [e["seq"] for e in log.all("skipped")] == [0] and log.settled


def test_a_refused_row_is_reported_once_and_the_next_rows_land(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    session = FakeSession()
    backend = _backend(tmp_path, session)
    for step in range(3):
        backend.log_row({"bad": object()}, step=step)
    backend.log_row({"x": 5.0}, step=3)
    backend.finish(0, WAIT_S)
    assert _rows(session.part) == [5.0]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "refused a row" in errors[0] and "logging goes on" in errors[0], errors


def test_a_dead_service_is_replaced_once_reported_and_what_its_file_lacks_is_written_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Rows 0..4 sent, 0..1 flushed, then the service dies: one warning, a new part started with the config W&B took,
    rows 2..4 written into it before row 5, and the summary counts the restart."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    backend.update_config({"batch": 8})
    with pytest.raises(LoggingInputError):
        backend.update_config({1: "a"})  # refused: never part of the config a new part starts with
    for step in range(5):
        backend.log_row({"x": float(step)}, step=step)
        if step == 1:
            _sync(backend)
            session.flush()
    _sync(backend)
    session.kill()
    backend.log_row({"x": 5.0}, step=5)
    backend.finish(0, WAIT_S)
    first, second = session.parts
    assert _rows(first) == [0.0, 1.0]
    assert _rows(second) == [2.0, 3.0, 4.0, 5.0]
    assert second.config == {"lr": 0.1, "batch": 8}
    assert second.summary == {"sdxl_dist_log/service_restarts": 1, "sdxl_dist_log/rows_written_again": 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("is gone" in w for w in warnings) == 1 and sum("continues in a new service" in w for w in warnings) == 1
    log = read_attempt(backend.journal.events_path)
    assert [e["part"] for e in log.all("part")] == [1, 2] and log.settled and session.detached >= 2


def test_a_service_that_dies_again_while_rows_are_written_again_loses_nothing(tmp_path: Path) -> None:
    """The new part dies too before anything is flushed: a third part gets everything the second lacked."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    for step in range(3):
        backend.log_row({"x": float(step)}, step=step)
    _sync(backend)
    session.kill()
    original_reopen = session.reopen

    def reopen_and_die_once(config: Mapping[str, Any], timeout: float) -> None:
        original_reopen(config, timeout)
        if len(session.parts) == 2:
            session.part.sent.append(("history", {"x": "sent, never flushed"}))
            session.dead = True

    session.reopen = reopen_and_die_once  # type: ignore[method-assign]
    backend.log_row({"x": 3.0}, step=3)
    backend.finish(0, WAIT_S)
    assert _rows(session.parts[-1]) == [0.0, 1.0, 2.0, 3.0] and len(session.parts) == 3


def test_when_no_service_can_be_had_rows_stay_in_the_journal_for_the_next_attempt(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The restart fails: one error, training goes on (calls return), and every row not in a file is pending in the
    journal; a next attempt of the run writes them first, then its own."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    backend.log_row({"x": 0.0}, step=0)
    _sync(backend)
    session.flush()
    backend.log_row({"x": 1.0}, step=1)
    _sync(backend)
    session.kill()
    session.restart_ok = False
    backend.log_row({"x": 2.0}, step=2)
    backend.log_row({"x": 3.0}, step=3)
    backend.update_config({"lr": 0.5})  # returns: the writer answers that nothing was written
    backend.finish(1, WAIT_S)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "training goes on" in errors[0] and "journal" in errors[0], errors
    log = read_attempt(backend.journal.events_path)
    assert not log.settled and log.last("closed")["state"] == "lost"
    assert pending_seqs(log, lambda p, s: count(p, s, session)) == [1, 2, 3]

    later = FakeSession()
    taken = _backend(tmp_path, later)
    assert taken.take_over() == 3
    taken.log_row({"x": 4.0}, step=4)
    taken.finish(0, WAIT_S)
    assert _rows(later.part) == [1.0, 2.0, 3.0, 4.0]
    assert later.part.summary == {"sdxl_dist_log/rows_from_earlier_attempts": 3}
    assert all(a.settled for a in read_attempts(tmp_path / "journal"))


def test_preemption_marks_the_run_and_rows_after_the_close_wait_for_the_next_attempt(tmp_path: Path) -> None:
    """``mark_preempting`` journals the signal at once; the close marks the part and ends it; rows logged after
    (submitit ignores SIGTERM and trains on) are journaled, not sent, and the next attempt writes them."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    backend.log_row({"x": 0.0}, step=0)
    backend.mark_preempting("SIGTERM")
    backend.finish(1, WAIT_S)
    backend.log_row({"x": 1.0}, step=1)
    assert [k for k, _ in session.part.file] == ["history", "preempting", "exit"]
    log = read_attempt(backend.journal.events_path)
    assert log.last("signal")["signal"] == "SIGTERM" and log.last("signal")["step"] == 0
    assert log.last("closed")["state"] == "preempted" and not log.settled
    later = FakeSession()
    assert _backend(tmp_path, later).take_over() == 1


def test_finish_returns_within_its_timeout_when_the_service_hangs(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    session = FakeSession()
    backend = _backend(tmp_path, session)
    session.gate.clear()
    try:
        backend.finish(0, timeout=0.2)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("did not finish within" in m for m in warnings), warnings
    finally:
        session.gate.set()


def test_finish_while_another_thread_logs_still_writes_the_pending_values(tmp_path: Path) -> None:
    """A system sampler thread inside ``log_side_row`` holds the lock a moment: ``finish`` on the training thread
    waits for it and still writes the values of the last ``commit=False`` call."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    backend.log_row({"x": 0.0}, step=0, commit=False)
    holding, release = threading.Event(), threading.Event()

    def sampler() -> None:
        with backend._front:  # what log_side_row holds while it journals a row
            holding.set()
            release.wait(WAIT_S)

    thread = threading.Thread(target=sampler)
    thread.start()
    assert holding.wait(WAIT_S)
    finisher = threading.Thread(target=backend.finish, args=(0, WAIT_S))
    finisher.start()
    finisher.join(0.5)  # time to reach the lock the sampler holds (a finish that does not wait is done by now)
    release.set()
    finisher.join(WAIT_S)
    thread.join(WAIT_S)
    assert not finisher.is_alive()
    assert [k for k, _ in session.part.file][:1] == ["history"]
    assert session.part.file[0][1]["x"] == 0.0


def test_finish_during_an_interrupted_logging_call_does_not_wait_for_its_lock(tmp_path: Path) -> None:
    """A signal handler may interrupt ``log_row`` on the same thread: ``finish`` then closes without the pending
    values (the interrupted call journals its row when it resumes) instead of deadlocking on the lock."""
    session = FakeSession()
    backend = _backend(tmp_path, session)
    backend.log_row({"x": 0.0}, step=0, commit=False)
    with backend._front:  # what the interrupted call holds
        backend.mark_preempting("SIGTERM")
        backend.finish(1, WAIT_S)
    assert [k for k, _ in session.part.file] == ["preempting", "exit"]
