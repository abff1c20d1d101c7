"""The journal (sdxl_dist_log/journal.py): entries on disk in order, events, segments deleted once held,
and the pure reckoning of which entries a run's files hold.

Run files are stood in for by a counting function (the real one, ``offline.decode.count_records``, is tested with
real files in tests/offline and through tests/backends/test_wandb_backend.py).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sdxl_dist_log import journal as journal_module
from sdxl_dist_log.journal import (
    ENTRIES_PER_SEGMENT,
    Journal,
    durable_prefix,
    journal_root,
    pending_seqs,
    read_attempt,
    read_attempts,
    settle,
    step_range,
)

pytestmark = pytest.mark.timeout(60)


def _counter(files: dict[str, list[str]]):
    """A stand-in for ``count_records``: file -> the record kinds it holds, in order; offsets count records."""
    def count(path: str, start: int) -> tuple[Counter[str], int]:
        kinds = files.get(path)
        if kinds is None:
            raise OSError(f"no such file: {path}")
        return Counter(kinds[start:]), len(kinds)
    return count


@pytest.mark.parametrize(("kinds", "rows", "artifacts", "held"), [
    ([], 0, 0, 0),
    (["row", "row", "row"], 3, 0, 3),
    (["row", "row", "row"], 1, 0, 1),
    (["row", "images", "row"], 2, 0, 2),
    (["row", "artifact", "row"], 2, 0, 1),   # the artifact is not in the file: nothing after it is known held
    (["row", "artifact", "row"], 2, 1, 3),
    (["artifact", "row"], 5, 0, 0),
    (["row", "row"], 0, 4, 0),
], ids=["empty", "all", "prefix", "images-are-rows", "artifact-missing", "with-artifact", "artifact-first",
        "no-rows"])
def test_a_part_holds_the_longest_prefix_its_counts_allow(kinds: list[str], rows: int, artifacts: int,
                                                           held: int) -> None:
    assert durable_prefix(kinds, rows, artifacts) == held


def test_entries_are_lines_in_seq_order_and_events_record_what_happened(tmp_path: Path) -> None:
    """Each entry is one JSON line with its seq and kind (NaN kept, numpy values made plain); events carry time."""
    journal = Journal(journal_root(tmp_path, "run-1"), run_id="run-1", clock=lambda: 1000.0)
    assert journal.append("row", {"step": 0, "row": {"a": float("nan"), "b": np.float32(2.5)}}) == 0
    assert journal.append("row", {"step": 1, "row": {"c": np.arange(2)}}) == 1
    journal.event("signal", signal="SIGTERM", step=1)
    journal.close()
    log = read_attempt(journal.events_path)
    assert [e["event"] for e in log.events] == ["attempt", "signal"]
    assert log.first("attempt")["run_id"] == "run-1" and log.last("signal")["time"] == 1000.0
    assert sorted(log.entries) == [0, 1]
    assert log.entries[0]["row"]["b"] == 2.5 and np.isnan(log.entries[0]["row"]["a"])
    assert log.entries[1]["row"]["c"] == [0, 1]
    assert journal.root == tmp_path / "journal" / "run-1"


def test_a_torn_last_line_of_a_killed_process_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path, run_id="r")
    journal.append("row", {"step": 0, "row": {"a": 1.0}})
    journal.close()
    segment = next(tmp_path.glob("*.rows-*.jsonl"))
    segment.write_text(segment.read_text() + '{"seq":1,"kind":"row","ro')
    journal.events_path.write_text(journal.events_path.read_text() + '{"event":"sig')
    log = read_attempt(journal.events_path)
    assert sorted(log.entries) == [0] and [e["event"] for e in log.events] == ["attempt"]


def test_segments_roll_and_only_fully_held_ones_are_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries go to a new file every ENTRIES_PER_SEGMENT; ``prune`` deletes the files (and their media) whose
    entries all lie below the smallest seq still needed, never the one being written."""
    monkeypatch.setattr(journal_module, "ENTRIES_PER_SEGMENT", 2)
    journal = Journal(tmp_path, run_id="r")
    for step in range(5):
        journal.append("row", {"step": step, "row": {}})
    journal.save_media("1", [np.zeros((2, 2, 3), np.uint8)])
    journal.save_media("4", [np.zeros((2, 2, 1), np.uint8)])
    assert len(list(tmp_path.glob("*.rows-*.jsonl"))) == 3
    journal.prune(lowest_needed=3)  # entries 0..2 held: segment [0, 1] goes, [2, 3] stays (3 is needed)
    assert sorted(read_attempt(journal.events_path).entries) == [2, 3, 4]
    assert sorted(p.name for p in journal.media_dir.iterdir()) == ["4-0.png"]
    journal.prune(lowest_needed=99)
    assert sorted(read_attempt(journal.events_path).entries) == [4]  # the segment being written stays
    journal.drop_entries()
    assert read_attempt(journal.events_path).entries == {} and not journal.media_dir.exists()
    assert journal.append("row", {"step": 5, "row": {}}) == 5  # later entries start a new segment
    assert sorted(read_attempt(journal.events_path).entries) == [5]
    assert ENTRIES_PER_SEGMENT == 1000  # the module constant as shipped (monkeypatched above for this test only)


def _attempt(tmp_path: Path, events: list[dict], entries: list[dict]) -> Path:
    journal = Journal(tmp_path, run_id="r")
    for entry in entries:
        journal.append(entry.pop("kind"), entry)
    for event in events:
        journal.event(event.pop("event"), **event)
    journal.close()
    return journal.events_path


def test_pending_are_the_entries_no_part_file_holds(tmp_path: Path) -> None:
    """Part 1 was sent 0..3 and its file holds 0..1 (the service died); part 2 was sent 2, 3 again, then 4 and 5,
    and holds 2..4; 6 was logged after the close (training went on). Pending: 5 and 6."""
    entries = [{"kind": "row", "step": s, "row": {"x": s}} for s in range(7)]
    events = [{"event": "part", "part": 1, "run_file": "f1", "from_seq": 0, "replay": []},
              {"event": "part", "part": 2, "run_file": "f2", "from_seq": 4, "replay": [2, 3]},
              {"event": "closed", "state": "preempted", "upto": 6, "pending": 1}]
    log = read_attempt(_attempt(tmp_path, events, entries))
    count = _counter({"f1": ["run", "history", "summary", "history"], "f2": ["history"] * 3})
    assert pending_seqs(log, count) == [5, 6]
    assert not log.settled
    assert step_range(log) == (0, 6)


def test_confirmed_counts_let_a_reader_resume_after_pruned_entries(tmp_path: Path) -> None:
    """A part confirmed to hold its first 3 entries (rows 0..2, counted up to offset 3) whose entries were deleted:
    only what follows is counted and checked."""
    entries = [{"kind": "row", "step": s, "row": {}} for s in range(3, 6)]
    journal = Journal(tmp_path, run_id="r")
    journal.next_seq = 3  # 0..2 were in a deleted segment
    for entry in entries:
        journal.append(entry.pop("kind"), entry)
    journal.event("part", part=1, run_file="f1", from_seq=0, replay=[])
    journal.event("confirmed", part=1, ops=3, rows=3, artifacts=0, offset=3, file_rows=3, file_artifacts=0,
                  steps=[0, 2])
    journal.close()
    log = read_attempt(journal.events_path)
    count = _counter({"f1": ["history"] * 3 + ["summary", "history"]})  # one more row written since
    assert pending_seqs(log, count) == [4, 5]
    assert step_range(log) == (0, 5)


def test_an_unreadable_part_file_holds_nothing_and_skipped_entries_are_never_pending(tmp_path: Path) -> None:
    entries = [{"kind": "row", "step": s, "row": {}} for s in range(3)]
    events = [{"event": "part", "part": 1, "run_file": "gone", "from_seq": 0, "replay": []},
              {"event": "skipped", "seq": 1, "reason": "TypeError"}]
    log = read_attempt(_attempt(tmp_path, events, entries))
    assert pending_seqs(log, _counter({})) == [0, 2]


def test_a_closed_attempt_whose_files_hold_everything_is_settled_and_settle_marks_the_others(tmp_path: Path) -> None:
    done = read_attempt(_attempt(tmp_path, [{"event": "closed", "state": "finished", "upto": 0, "pending": 0}], []))
    assert done.settled
    killed = read_attempt(_attempt(tmp_path, [], [{"kind": "row", "step": 0, "row": {}}]))
    assert not killed.settled
    settle(killed, by="later")
    again = read_attempt(killed.events_path)
    assert again.settled and again.entries == {} and again.last("settled")["by"] == "later"
    assert [a.name for a in read_attempts(tmp_path)] == sorted(a.name for a in (done, killed))
    assert read_attempts(tmp_path / "missing") == []
    assert all(json.loads(line) for line in killed.events_path.read_text().splitlines())
