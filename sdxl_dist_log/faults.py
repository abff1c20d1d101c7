"""What a logging fault does to training: the ``on_logging_fault`` policy, and messages that name the ranks and the fix.

Two kinds of failure reach a logging call, and they are treated differently:

- **this call's own bad argument** (a ``LoggingInputError``: a string metric, a broken checkpoint link, a bad step)
  is a bug at the call site: it is always raised, on the rank that made the call, naming the key, path or argument;
- **a logging fault** is everything else that stops a logging collective: a rank that never came (a logging call
  under a rank check, a stuck or dead rank), ranks out of step, a peer whose connection closed, another rank's bad
  argument. By default (``on_logging_fault="continue"``) it is logged once, as an error naming the ranks and the
  fix, and the call returns as if nothing was logged: training goes on. ``"raise"`` raises it instead (the
  ``CollectiveError`` or ``LoggingInputError`` the docs name for it).

Pure: no torch, no W&B; the messages are plain functions so tests can read them without a job.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sdxl_dist_log.errors import (
    CollectiveError,
    CollectiveTimeoutError,
    LoggingInputError,
    RanksOutOfStepError,
)
from sdxl_dist_log.secrets import scrub_text

_T = TypeVar("_T")

_PEER_LOST_SIGNS = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
                    "end of file", "socket closed", "connection was closed")
"""What gloo says when the other end of a connection went away (its process died or was killed)."""

RANK_CHECK_HINT = (
    "every rank must make each log_metrics/log_images call; a call under a rank check (`if "
    "accelerator.is_main_process:`, `if rank == 0:`) waits for ranks that never come: log there with "
    "`wb.main_process.log_metrics/log_images/log_table` instead, which has no collective"
)


def peer_lost(message: str) -> bool:
    """Whether a collective's error text says that a peer's connection closed (the peer process is gone)."""
    text = message.lower()
    return any(sign in text for sign in _PEER_LOST_SIGNS)


def collective_failure(text: str, limit: float) -> tuple[type[CollectiveError], str]:
    """The error type and the words for a failed wait of a logging collective, from the backend's error text.

    A timeout and a closed peer connection are one case to the caller (the ranks did not all get through the call,
    and the missing ones are named), so both give ``CollectiveTimeoutError``.

    Example:
        >>> collective_failure("[gloo] Connection closed by peer [127.0.0.1]:5555", 300)[0].__name__
        'CollectiveTimeoutError'
    """
    if "timed out" in text.lower():
        return CollectiveTimeoutError, f"timed out after {limit:g} s"
    if peer_lost(text):
        return CollectiveTimeoutError, f"failed: a peer's connection closed, its process died or was killed ({text})"
    return CollectiveError, f"failed ({text})"


def waiting_message(call: str, rank: int, missing: Sequence[int], waited: float, timeout: float) -> str:
    """The warning of a logging collective that has waited ``waited`` seconds for the ``missing`` ranks.

    Example:
        >>> waiting_message("log_images at step 0", 0, [1], 5.0, 300.0)[:76]
        'log_images at step 0 on rank 0: waiting 5 s for ranks [1] to reach this logg'
    """
    return (f"{call} on rank {rank}: waiting {waited:.0f} s for ranks {list(missing)} to reach this logging call "
            f"(it gives up after {timeout:g} s; training on this rank waits meanwhile). Likely cause: "
            f"{RANK_CHECK_HINT}. A rank that is only slow (a longer validation, a data stall) arrives by itself.")


def fault_advice(error: BaseException) -> str:
    """The fix to suggest for a logging fault, by its kind."""
    if isinstance(error, CollectiveTimeoutError):
        if peer_lost(str(error)):
            return "a rank's process died or was killed: its own log or exit code says why"
        return RANK_CHECK_HINT
    if isinstance(error, RanksOutOfStepError):
        return ("make every rank call the logging methods at the same points and pass the same step=; a call "
                "skipped or added on one rank puts it out of step")
    if isinstance(error, LoggingInputError):
        return "the named ranks raised their own error naming the bad key or argument: fix the value there"
    return "see the message above"


class FaultPolicy:
    """Applies ``on_logging_fault`` to the collective part of a logging call.

    Args:
        mode: ``WandbConfig.on_logging_fault``: "continue" (log one error per kind of fault, return the fallback) or
            "raise".
        report: logs an error message (the logger's ``error``).
    """

    def __init__(self, mode: str, report: Callable[[str], Any]) -> None:
        self.mode = mode
        self._report = report
        self.counts: Counter[str] = Counter()
        """Faults seen so far, by error type."""

    def run(self, job: Callable[[], _T], fallback: _T, own_error: BaseException | None = None) -> _T:
        """``job()``, with its logging fault handled by the policy.

        Args:
            job: the collective part of one call.
            fallback: what the call returns when a fault is let pass.
            own_error: this rank's own input error, which the caller raises right after: a fault here (the other
                ranks' view of it, or a failed collective) is then reported but never raised over it.

        Raises:
            CollectiveError, LoggingInputError: with ``mode="raise"``, the fault, unless ``own_error`` is set.
            MetricKeyMismatchError and anything else: always (they are not faults of the logging link).
        """
        try:
            return job()
        except (CollectiveError, LoggingInputError) as fault:
            if own_error is not None and isinstance(fault, LoggingInputError):
                return fallback  # the other ranks' view of this rank's own error: the caller raises the real one
            self.counts[type(fault).__name__] += 1
            if self.mode == "raise" and own_error is None:
                raise
            self._tell(fault)
            return fallback

    def _tell(self, fault: BaseException) -> None:
        kind = type(fault).__name__
        if self.counts[kind] > 1:
            return  # one error per kind: the first names the ranks and the fix; the rest are counted
        text = str(fault).rstrip()
        end = "" if text.endswith(".") else "."
        self._report(f"{kind}: {text}{end} Fix: {fault_advice(fault)}. This call logged nothing; later calls go on "
                     f"(further {kind}s are counted, not repeated). on_logging_fault='raise' raises instead.")


class Notices:
    """The logger's messages to its ``logging.Logger``: secrets scrubbed from each, a keyed warning given once."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._given: set[str] = set()

    def warn(self, message: str, once_key: str | None = None) -> None:
        if once_key is not None:
            if once_key in self._given:
                return
            self._given.add(once_key)
        self._log.warning(scrub_text(message))

    def info(self, message: str) -> None:
        self._log.info(scrub_text(message))

    def error(self, message: str) -> None:
        self._log.error(scrub_text(message))


__all__ = ["FaultPolicy", "Notices", "RANK_CHECK_HINT", "collective_failure", "fault_advice", "peer_lost",
           "waiting_message"]
