"""Tests of sdxl_dist_log.dispatch: the Dispatcher runs jobs inline, or in order on one background thread that the
caller never waits for, and hands a job's error back to the caller's thread.

Jobs that must stay busy wait on ``threading.Event``s that the test sets, so nothing depends on how fast the machine
is: a caller that blocked where it must not would deadlock, and the test's timeout would fail it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from sdxl_dist_log.dispatch import Dispatcher

pytestmark = pytest.mark.timeout(60)

WAIT_S = 30.0
"""Bound of every wait that must succeed; only a hang reaches it."""


@pytest.fixture
def threaded() -> Iterator[Dispatcher]:
    dispatcher = Dispatcher(threaded=True)
    yield dispatcher
    assert dispatcher.close(WAIT_S)


def _blocked(dispatcher: Dispatcher) -> tuple[threading.Event, threading.Event]:
    """Submit a job that holds the worker until ``release`` is set; returns (started, release)."""
    started, release = threading.Event(), threading.Event()

    def job() -> None:
        started.set()
        assert release.wait(WAIT_S)

    dispatcher.submit(job)
    assert started.wait(WAIT_S), "the worker never started the job"
    return started, release


# -- inline -----------------------------------------------------------------------------------------------------------
def test_inline_runs_each_job_at_once_on_the_caller_s_thread() -> None:
    """Without ``threaded`` a job has run, on the calling thread, when ``submit`` returns; drain and close are
    immediate."""
    dispatcher = Dispatcher(threaded=False)
    ran: list[int] = []
    dispatcher.submit(lambda: ran.append(threading.get_ident()))
    assert ran == [threading.get_ident()]
    assert dispatcher.drain(0.0) is True and dispatcher.close(0.0) is True


def test_inline_error_is_raised_by_submit() -> None:
    """Inline, a job's exception comes out of ``submit`` itself, and nothing is left pending."""
    dispatcher = Dispatcher(threaded=False)

    def fail() -> None:
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        dispatcher.submit(fail)
    dispatcher.raise_pending()  # nothing kept


# -- threaded ---------------------------------------------------------------------------------------------------------
def test_threaded_keeps_submission_order_on_one_worker_thread(threaded: Dispatcher) -> None:
    """Jobs run in the order submitted, all on one thread that is not the caller's."""
    seen: list[tuple[int, int]] = []
    for i in range(50):
        threaded.submit(lambda i=i: seen.append((i, threading.get_ident())))
    assert threaded.drain(WAIT_S)
    assert [i for i, _ in seen] == list(range(50))
    workers = {ident for _, ident in seen}
    assert len(workers) == 1 and threading.get_ident() not in workers


def test_threaded_submit_never_blocks_the_caller(threaded: Dispatcher) -> None:
    """While the worker is held by a job, the caller still submits more and goes on; they run once it is freed."""
    _, release = _blocked(threaded)
    later: list[int] = []
    for i in range(5):
        threaded.submit(lambda i=i: later.append(i))  # would deadlock here if submit waited for the worker
    assert later == []
    release.set()
    assert threaded.drain(WAIT_S)
    assert later == [0, 1, 2, 3, 4]


def test_threaded_error_is_raised_on_the_caller_s_thread_and_later_jobs_still_run(threaded: Dispatcher) -> None:
    """A job's exception is kept and raised by the next ``raise_pending`` on the caller's thread, once; the jobs
    after it still run, and a second error before that call does not replace the first."""
    ran: list[str] = []

    def fail(message: str) -> None:
        raise RuntimeError(message)

    threaded.submit(lambda: fail("first"))
    threaded.submit(lambda: ran.append("after"))
    threaded.submit(lambda: fail("second"))
    threaded.submit(lambda: ran.append("last"))
    assert threaded.drain(WAIT_S)
    assert ran == ["after", "last"]
    with pytest.raises(RuntimeError, match="first"):
        threaded.raise_pending()
    threaded.raise_pending()  # raised once, then cleared


def test_no_error_is_raised_before_the_job_has_failed(threaded: Dispatcher) -> None:
    """``raise_pending`` raises only what has already happened: a job still running has nothing to report."""
    holding = threading.Event()

    def fail_when_released() -> None:
        holding.set()
        assert release.wait(WAIT_S)
        raise RuntimeError("late")

    release = threading.Event()
    threaded.submit(fail_when_released)
    assert holding.wait(WAIT_S)
    threaded.raise_pending()  # the job has not failed yet
    release.set()
    assert threaded.drain(WAIT_S)
    with pytest.raises(RuntimeError, match="late"):
        threaded.raise_pending()


# -- drain and close are bounded --------------------------------------------------------------------------------------
def test_drain_gives_up_at_its_timeout_while_a_job_runs(threaded: Dispatcher) -> None:
    """``drain`` returns False at its timeout while a job still runs, and True once every job ran."""
    _, release = _blocked(threaded)
    assert threaded.drain(0.05) is False
    release.set()
    assert threaded.drain(WAIT_S) is True


def test_close_gives_up_at_its_timeout_and_leaves_the_worker(threaded: Dispatcher) -> None:
    """``close`` returns False at its timeout while a job still runs; the daemon worker ends once the job does."""
    _, release = _blocked(threaded)
    worker = threaded._worker
    assert worker is not None and worker.daemon
    assert threaded.close(0.05) is False
    assert worker.is_alive()
    release.set()
    worker.join(WAIT_S)
    assert not worker.is_alive()


def test_close_runs_what_was_queued_then_stops_the_worker(threaded: Dispatcher) -> None:
    """``close`` first runs every queued job, then the worker thread ends; it returns True."""
    ran: list[int] = []
    for i in range(10):
        threaded.submit(lambda i=i: ran.append(i))
    worker = threaded._worker
    assert threaded.close(WAIT_S) is True
    assert ran == list(range(10))
    assert worker is not None and not worker.is_alive()
    assert threaded.close(0.0) is True and threaded.drain(0.0) is True  # closed: nothing left to wait for
