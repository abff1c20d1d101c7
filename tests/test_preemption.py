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


def test_the_default_signals_are_those_of_every_documented_launcher() -> None:
    """SIGTERM (SLURM's preemption and requeue), SIGUSR1 (the usual ``--signal=USR1@N``) and SIGUSR2 (submitit's
    timeout and preemption signal)."""
    assert DEFAULT_SIGNALS == (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


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


def test_each_signal_hands_on_to_its_own_previous_handler_and_the_close_down_runs_once() -> None:
    """Two signals with different previous handlers: the first runs the close-down and goes to its own previous
    handler (ignored: the process goes on); from then on every signal goes to its previous handler alone, since the
    run is closed."""
    events: list[str] = []
    signal.signal(signal.SIGUSR1, _previous(events))
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    _chain(events).install(SIGNALS)
    signal.raise_signal(signal.SIGUSR2)
    assert events == ["ours SIGUSR2"]  # ignored before: nothing more, and the process goes on
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN
    signal.raise_signal(signal.SIGUSR1)
    assert events[1:] == ["previous SIGUSR1 frame=True"]


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


def test_signals_during_the_close_down_wait_for_it_and_are_handed_on_once_each() -> None:
    """A repeat of the signal and another preemption signal arriving while the close-down runs neither start a
    second close-down nor reach the previous handlers early: once it is done, each distinct signal goes to its
    previous handler once, in the order they came."""
    events: list[str] = []
    signal.signal(signal.SIGUSR1, _previous(events))
    signal.signal(signal.SIGUSR2, _previous(events))

    def close_down(signum: int) -> None:
        events.append("close-down starts")
        signal.raise_signal(signal.SIGUSR1)  # torchrun's forwarded copy of the same signal
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR1)
        events.append("close-down ends")

    SignalChain(close_down, logging.getLogger("test_preemption")).install(SIGNALS)
    signal.raise_signal(signal.SIGUSR1)
    assert events == ["close-down starts", "close-down ends", "previous SIGUSR1 frame=True",
                      "previous SIGUSR2 frame=True"]


def test_restore_during_the_close_down_waits_until_it_is_done() -> None:
    """The close-down restores the handlers (the logger's finish does); while it runs ours stays installed, so a
    repeated signal cannot reach the previous handler (or the default action) before the run is closed."""
    events: list[str] = []
    previous = _previous(events)
    signal.signal(signal.SIGUSR1, previous)
    chain: SignalChain

    def close_down(signum: int) -> None:
        chain.restore()
        installed = "previous" if signal.getsignal(signal.SIGUSR1) is previous else "ours"
        events.append(f"installed during close-down: {installed}")

    chain = SignalChain(close_down, logging.getLogger("test_preemption"))
    chain.install([signal.SIGUSR1])
    signal.raise_signal(signal.SIGUSR1)
    assert events == ["installed during close-down: ours", "previous SIGUSR1 frame=True"]
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_installing_twice_never_makes_ours_its_own_previous_handler() -> None:
    """``install`` twice (``handle_preemption`` called again): one close-down, then the handler from before."""
    events: list[str] = []
    signal.signal(signal.SIGUSR1, _previous(events))
    chain = _chain(events)
    chain.install([signal.SIGUSR1])
    chain.install([signal.SIGUSR1])
    signal.raise_signal(signal.SIGUSR1)
    assert events == ["ours SIGUSR1", "previous SIGUSR1 frame=True"]


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


_REPEATED = textwrap.dedent("""
    import logging, os, signal, time
    from sdxl_dist_log.preemption import SignalChain
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    def close_down(signum):
        os.kill(os.getpid(), signal.SIGTERM)  # two more SIGTERMs while the close-down runs
        os.kill(os.getpid(), signal.SIGTERM)
        print("closed down", flush=True)
    SignalChain(close_down, logging.getLogger("t")).install([signal.SIGTERM])
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    print("still alive", flush=True)
""")


def test_repeated_sigterm_with_the_default_action_ends_the_process_only_after_the_close_down() -> None:
    """Two more SIGTERMs during the close-down (SLURM's, then torchrun's forwarded one): the close-down completes,
    then the process ends by SIGTERM, as it would have without us."""
    done = subprocess.run([sys.executable, "-c", _REPEATED], capture_output=True, text=True, timeout=50)
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stdout, done.stderr)
    assert done.stdout.splitlines() == ["closed down"]


def test_without_a_previous_handler_the_signal_is_re_delivered_and_ends_the_process() -> None:
    """With SIG_DFL before, our close-down runs and then the process dies of the signal, as it would have."""
    done = subprocess.run([sys.executable, "-c", _DEFAULT_ACTION], capture_output=True, text=True, timeout=50)
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stdout, done.stderr)
    assert done.stdout.splitlines() == [f"closed down {int(signal.SIGTERM)}"]
