"""Signals that announce a preemption: run the logger's close-down first, then hand the signal on.

A cluster preempts a job by signalling it (SLURM: SIGTERM, or the signal of ``--signal``; submitit: SIGUSR2 for a
timeout or preemption). The handler installed here calls one callback (the logger marks the run preempting, flushes
and finishes it within a bound), then gives the signal to whoever handled it before (submitit's checkpoint-and-requeue
handler, a training framework's own), or, when nobody did, lets the default action end the process as it would have.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

DEFAULT_SIGNALS: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)
"""SLURM's preemption/requeue signal, and the one sbatch templates commonly ask for with ``--signal=B:USR1@N``."""


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

    def install(self, signals: Sequence[int]) -> None:
        """Handle ``signals`` from now on. Call from the main thread (Python delivers signals only there)."""
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back where ours is still installed. A no-op off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum)  # the close-down restores and forgets the handlers
        try:
            self._on_signal(signum)
        except Exception as exc:  # the process is being stopped: report, and still hand the signal on
            self._log.error("closing down on %s failed: %s", signal.Signals(signum).name, exc)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            os.kill(os.getpid(), signum)
