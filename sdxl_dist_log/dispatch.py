"""Runs the logger's collective work inline, or in order on one background thread (``async_metrics``)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable


class Dispatcher:
    """Executes jobs in submission order; with ``threaded`` they run on a worker and the caller never waits.

    A job's exception is kept and raised on the caller's thread at the next ``raise_pending`` (the logger calls it
    at the start of each logging call and in ``finish``), so training code can catch it where it logs.
    """

    def __init__(self, threaded: bool) -> None:
        self.threaded = threaded
        self._error: BaseException | None = None
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if threaded:
            self._worker = threading.Thread(target=self._run, name="sdxl-dist-log-collectives", daemon=True)
            self._worker.start()

    def submit(self, job: Callable[[], None]) -> None:
        if self._worker is None:
            job()
        else:
            self._queue.put(job)

    def raise_pending(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted job ran; False if that took longer than ``timeout`` seconds."""
        if self._worker is None or not self._worker.is_alive():  # inline, or closed: nothing is queued
            return True
        done = threading.Event()
        self._queue.put(done.set)
        return done.wait(timeout)

    def close(self, timeout: float) -> bool:
        """Drain, then stop the worker. Returns False if jobs were still running at the timeout. Idempotent."""
        if self._worker is None or not self._worker.is_alive():
            return True
        start = time.monotonic()
        drained = self.drain(timeout)
        self._queue.put(None)
        self._worker.join(max(0.0, timeout - (time.monotonic() - start)))
        return drained and not self._worker.is_alive()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                job()
            except BaseException as exc:  # kept for the caller's thread; the next jobs still run
                if self._error is None:
                    self._error = exc
