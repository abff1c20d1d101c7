"""Tests of sdxl_dist_log.system.guard: a failing call costs itself only, and is reported once per name."""

from __future__ import annotations

import logging

import pytest

from sdxl_dist_log.system.guard import Guard


def _fail() -> None:
    raise RuntimeError("boom")


def test_a_disabled_row_is_not_called_again_on_that_unit_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    guard = Guard(logging.getLogger("t.guard"), "gpu")
    calls: list[int] = []

    def on(unit: int) -> None:
        calls.append(unit)
        if unit == 1:
            _fail()

    assert [guard.run("power", lambda u=u: on(u), unit=u) for u in (0, 1, 2)] == [True, False, True]
    assert [guard.run("power", lambda u=u: on(u), unit=u) for u in (0, 1, 2)] == [True, False, True]
    assert calls == [0, 1, 2, 0, 2]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["system metrics: 'power' disabled on gpu 1 (RuntimeError: boom); other figures go on"]


def test_a_retried_step_is_tried_every_time_and_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    guard = Guard(logging.getLogger("t.guard"), disable=False)
    assert [guard.run("sink", _fail) for _ in range(3)] == [False, False, False]
    assert guard.run("sink", lambda: None)
    guard.report("collect", ValueError("bad record"))
    guard.report("collect", ValueError("bad record"))
    assert [r.getMessage() for r in caplog.records] == [
        "system metrics: sink failed (RuntimeError: boom); goes on next interval",
        "system metrics: collect failed (ValueError: bad record); goes on next interval",
    ]


def test_what_is_not_an_exception_still_stops_the_call() -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Guard(logging.getLogger("t.guard")).run("row", interrupt)
