"""Tests of sdxl_dist_log.preemption: SignalChain runs our close-down first, then whatever handled the signal before.

In-process cases use SIGUSR1/SIGUSR2, with the handlers saved and put back around each test; Python runs a signal's
handler on the main thread right after ``signal.raise_signal`` returns. The default action (the process ends) is
tested in a subprocess.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from types import FrameType

import pytest

from sdxl_dist_log.preemption import DEFAULT_SIGNALS, SignalChain

pytestmark = pytest.mark.timeout(60)

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


@pytest.fixture(autouse=True)
def saved_handlers() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _chain(events: list[str], fail: bool = False) -> SignalChain:
    def close_down(signum: int) -> None:
        events.append(f"ours {signal.Signals(signum).name}")
        if fail:
            raise RuntimeError("disk full")

    return SignalChain(close_down, logging.getLogger("test_preemption"))


def _previous(events: list[str]):
    def handler(signum: int, frame: FrameType | None) -> None:
        events.append(f"previous {signal.Signals(signum).name} frame={frame is not None}")

    return handler


def test_the_default_signals_are_slurm_s() -> None:
    """SIGTERM (SLURM's preemption and requeue) and SIGUSR1 (the usual ``--signal=B:USR1@N``)."""
    assert DEFAULT_SIGNALS == (signal.SIGTERM, signal.SIGUSR1)


def test_our_callback_runs_then_the_previous_python_handler() -> None:
    """On the signal: our close-down first, then the handler installed before, with the signal and the frame;
    afterwards the previous handler is back in place, so a second signal goes to it alone."""
    events: list[str] = []
    previous = _previous(events)
    signal.signal(signal.SIGUSR1, previous)
    _chain(events).install([signal.SIGUSR1])
    signal.raise_signal(signal.SIGUSR1)
    assert events == ["ours SIGUSR1", "previous SIGUSR1 frame=True"]
    assert signal.getsignal(signal.SIGUSR1) is previous
    signal.raise_signal(signal.SIGUSR1)
    assert events[2:] == ["previous SIGUSR1 frame=True"]


def test_each_signal_hands_on_to_its_own_previous_handler() -> None:
    """Two signals with different previous handlers: each goes to its own."""
    events: list[str] = []
    signal.signal(signal.SIGUSR1, _previous(events))
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    _chain(events).install(SIGNALS)
    signal.raise_signal(signal.SIGUSR2)
    assert events == ["ours SIGUSR2"]  # ignored before: nothing more, and the process goes on
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    signal.raise_signal(signal.SIGUSR1)
    assert events[1:] == ["ours SIGUSR1", "previous SIGUSR1 frame=True"]


def test_a_failing_callback_still_hands_the_signal_on(caplog: pytest.LogCaptureFixture) -> None:
    """A close-down that raises is reported as one error naming the signal, never raised into the interrupted code,
    and the previous handler still runs."""
    events: list[str] = []
    signal.signal(signal.SIGUSR1, _previous(events))
    _chain(events, fail=True).install([signal.SIGUSR1])
    signal.raise_signal(signal.SIGUSR1)
    assert events == ["ours SIGUSR1", "previous SIGUSR1 frame=True"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["closing down on SIGUSR1 failed: disk full"]


def test_restore_puts_the_previous_handlers_back() -> None:
    """``restore`` reinstalls each previous handler where ours is still the one installed; it is idempotent."""
    events: list[str] = []
    previous = _previous(events)
    signal.signal(signal.SIGUSR1, previous)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    chain = _chain(events)
    chain.install(SIGNALS)
    assert signal.getsignal(signal.SIGUSR1) is not previous
    chain.restore()
    assert signal.getsignal(signal.SIGUSR1) is previous and signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    chain.restore()
    signal.raise_signal(signal.SIGUSR1)
    assert events == ["previous SIGUSR1 frame=True"]  # ours is gone


def test_restore_leaves_a_handler_installed_after_ours() -> None:
    """A handler someone installed after ours (a framework's own) is not replaced by ``restore``."""
    events: list[str] = []
    chain = _chain(events)
    chain.install([signal.SIGUSR1])
    later = _previous(events)
    signal.signal(signal.SIGUSR1, later)
    chain.restore()
    assert signal.getsignal(signal.SIGUSR1) is later


def test_restore_off_the_main_thread_is_a_no_op() -> None:
    """Python changes handlers only on the main thread: ``restore`` from another thread leaves ours in place."""
    events: list[str] = []
    chain = _chain(events)
    chain.install([signal.SIGUSR1])
    ours = signal.getsignal(signal.SIGUSR1)
    failures: list[BaseException] = []

    def restore() -> None:
        try:
            chain.restore()
        except BaseException as exc:  # reported to the test's thread
            failures.append(exc)

    worker = threading.Thread(target=restore)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and failures == []
    assert signal.getsignal(signal.SIGUSR1) == ours
    chain.restore()  # and the main thread can still restore later
    assert signal.getsignal(signal.SIGUSR1) != ours


_DEFAULT_ACTION = textwrap.dedent("""
    import logging, os, signal, threading
    from sdxl_dist_log.preemption import SignalChain
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    chain = SignalChain(lambda signum: print("closed down", signum, flush=True), logging.getLogger("t"))
    chain.install([signal.SIGTERM])
    os.kill(os.getpid(), signal.SIGTERM)
    threading.Event().wait(30)  # the re-delivered SIGTERM ends the process before this returns
    print("still alive", flush=True)
""")


def test_without_a_previous_handler_the_signal_is_re_delivered_and_ends_the_process() -> None:
    """With SIG_DFL before, our close-down runs and then the process dies of the signal, as it would have."""
    done = subprocess.run([sys.executable, "-c", _DEFAULT_ACTION], capture_output=True, text=True, timeout=50)
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stdout, done.stderr)
    assert done.stdout.splitlines() == [f"closed down {int(signal.SIGTERM)}"]
