"""A run across attempts and parts (``sdxl_dist_log.offline.attempts``): from the logger's journal, or from the parts
alone; step ranges, how each attempt ended, gaps. Real preempted runs are inspected in tests/launch/test_slurm.py."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest

from sdxl_dist_log.journal import Journal, journal_root
from sdxl_dist_log.offline import OfflineRun, attempts_of, format_attempts, step_gaps, tells_more


def _part(root: Path, name: str, steps: list[int], exit_code: int | None, preempting: bool = False) -> OfflineRun:
    path = root / "wandb" / f"offline-run-{name}-r1"
    path.mkdir(parents=True)
    return OfflineRun(path, run_id="r1", history=[{"trainer/step": s, "metrics/loss": 1.0} for s in steps],
                      exit_code=exit_code, preempting=preempting)


@pytest.mark.parametrize(("steps", "gaps"), [([], []), ([3], []), ([0, 1, 2, 3], []), ([0, 1, 2, 6, 7], [(3, 5)]),
                                             ([0, 10, 20, 40, 50, 90], [(30, 30), (60, 80)]), ([2, 1, 1, 0], [])])
def test_gaps_are_judged_by_the_usual_stride(steps: list[int], gaps: list[tuple[int, int]]) -> None:
    assert step_gaps(steps) == gaps


def test_without_a_journal_each_part_is_an_attempt_ended_as_its_file_says(tmp_path: Path) -> None:
    runs = [_part(tmp_path, "20260101_000000", [0, 1, 2], None), _part(tmp_path, "20260101_000100", [3, 4], 1, True),
            _part(tmp_path, "20260101_000200", [7, 8], 0)]
    assert [(a.ended, a.first_step, a.last_step) for a in attempts_of(runs)] == [
        ("killed", 0, 2), ("preempted", 3, 4), ("finished", 7, 8)]
    text = format_attempts(runs)
    assert "attempts of run r1: 3" in text and "steps 0..8 in the run: 5..6" in text


@pytest.mark.parametrize(("parts", "shown"), [
    ([([0, 1, 2], 0, False)], False),  # one attempt that finished, in one part: its summary says it all
    ([([0, 1, 2], None, False)], True),  # killed before its exit record
    ([([0, 1, 2], 1, True)], True),  # preempted
    ([([0, 1], 1, True), ([2, 3], 0, False)], True),  # two attempts
])
def test_inspect_shows_attempts_only_where_they_add_to_the_summaries(
        tmp_path: Path, parts: list[tuple[list[int], int | None, bool]], shown: bool) -> None:
    runs = [_part(tmp_path, f"2026010{i}_000000", steps, code, preempting)
            for i, (steps, code, preempting) in enumerate(parts)]
    assert tells_more(runs, attempts_of(runs)) is shown


def test_the_journal_says_which_parts_each_attempt_wrote_and_how_it_ended(tmp_path: Path) -> None:
    """Attempt 1: its service died (two parts), SIGTERM at step 4, closed 0.5 s later; attempt 2 was killed without
    a signal, and attempt 3 wrote what it left, then finished."""
    parts = [_part(tmp_path, "20260101_000000", [0, 1, 2], None), _part(tmp_path, "20260101_000010", [3, 4], 1, True),
             _part(tmp_path, "20260101_000100", [5, 6], None), _part(tmp_path, "20260101_000200", [7, 8, 9], 0)]
    root = journal_root(tmp_path, "r1")
    clock = functools.partial(next, itertools.count(100.0, 0.5))  # each event half a second after the one before
    first = Journal(root, run_id="r1", clock=clock)
    first.event("part", part=1, run_file=str(parts[0].path / "run-r1.wandb"), from_seq=0, replay=[])
    first.event("part", part=2, run_file=str(parts[1].path / "run-r1.wandb"), from_seq=3, replay=[])
    first.event("signal", signal="SIGTERM", step=4)
    first.event("closed", state="preempted", exit_code=1, upto=5, pending=0, steps=[0, 4])
    first.close()
    second = Journal(root, run_id="r1", clock=clock)
    second.event("part", part=1, run_file=str(parts[2].path / "run-r1.wandb"), from_seq=0, replay=[])
    second.append("row", {"step": 7, "row": {}})  # its last row; killed before its file held it
    second.close()
    third = Journal(root, run_id="r1", clock=clock)
    third.event("part", part=1, run_file=str(parts[3].path / "run-r1.wandb"), from_seq=0, replay=[])
    third.event("took_over", attempt=second.name, entries=1, lost=0, steps=[5, 7])
    third.event("closed", state="finished", exit_code=0, upto=3, pending=0, steps=[8, 9])
    third.close()
    attempts = attempts_of(parts)
    assert [a.name for a in attempts] == [first.name, second.name, third.name]
    assert [len(a.parts) for a in attempts] == [2, 1, 1]
    assert attempts[0].describe() == "steps 0..4, preempted by SIGTERM at step 4, run closed 0.50 s later"
    assert attempts[1].describe() == f"steps 5..7, killed; 1 entries written later by {third.name}"
    assert attempts[2].ended == "finished"
    text = format_attempts(parts).splitlines()
    assert text[0] == "attempts of run r1: 3"
    assert text[1] == f"  1. {first.name}: steps 0..4, preempted by SIGTERM at step 4, run closed 0.50 s later"
    assert text[2:4] == ["       offline-run-20260101_000000-r1: 3 rows, no exit record",
                         "       offline-run-20260101_000010-r1: 2 rows, preempting, exit 1"]
    assert text[-1] == "  steps 0..9 in the run: no gap"
