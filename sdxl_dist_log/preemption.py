"""Signals that announce a preemption: run the logger's close-down first, then hand the signal on.

A cluster preempts a job by signalling it (SLURM: SIGTERM on ``scontrol requeue``/``scancel``, or the signal of
``--signal``; submitit: SIGUSR2 for a timeout or a preemption). The handler installed here calls one callback (the
logger marks the run preempting and closes it within a bound), then gives the signal to whoever handled it before
(submitit's checkpoint-and-requeue handler, a training framework's own), or, when nobody did, lets the default action
end the process as it would have.

The same signal often arrives more than once (SLURM signals every process of the step and torchrun forwards the
signal to its workers as well, a few milliseconds apart). A signal that arrives while the close-down runs changes
nothing: it is remembered and handed on once the close-down is done, so the first close-down always completes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
"""SLURM's preemption/requeue signal, the one sbatch templates commonly ask for with ``--signal=USR1@N``, and
submitit's timeout/preemption signal."""
CLOSE_ON_SIGNAL_S = 20.0
"""The most a close-down on a signal may take (less when ``WandbConfig.finish_timeout`` is less): inside SLURM's
default KillWait (30 s), and leaving submitit's handler, which runs after it, time to checkpoint and requeue."""


class SignalChain:
    """Runs ``on_signal(signum)`` on the given signals, then the handler each signal had before.

    Args:
        on_signal: the close-down; its exceptions are logged, never raised into the interrupted code.
        logger: where a failing close-down is reported.
    """

    def __init__(self, on_signal: Callable[[int], None], logger: logging.Logger) -> None:
        self._on_signal = on_signal
        self._log = logger
        self._previous: dict[int, Any] = {}
        self._handling = False
        self._arrived: list[int] = []

    def install(self, signals: Sequence[int]) -> None:
        """Handle ``signals`` from now on. Call from the main thread (Python delivers signals only there)."""
        for sig in signals:
            if sig not in self._previous:  # installing twice must not make ours its own "previous"
                self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back where ours is still installed. A no-op off the main thread, and while a
        close-down runs (the handler puts them back itself when it is done, so a repeated signal cannot reach the
        default action before the run is closed)."""
        if threading.current_thread() is not threading.main_thread() or self._handling:
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._handling:  # a repeat, or another preemption signal, while closing down: hand it on afterwards
            if signum not in self._arrived:
                self._arrived.append(signum)
            return
        self._handling, self._arrived = True, [signum]
        previous = dict(self._previous)
        try:
            self._on_signal(signum)
        except Exception as exc:  # the process is being stopped: report, and still hand the signal on
            self._log.error("closing down on %s failed: %s", signal.Signals(signum).name, exc)
        finally:
            self._handling = False
        self.restore()
        for sig in self._arrived:
            _hand_on(sig, previous.get(sig), frame)


def _hand_on(signum: int, previous: Any, frame: FrameType | None) -> None:
    """Give ``signum`` to the handler it had before ours: call it, ignore the signal, or let it end the process."""
    if callable(previous):
        previous(signum, frame)
    elif previous in (signal.SIG_DFL, None):
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
