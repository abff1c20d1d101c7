"""The frame every logging collective sends: a call header, then the row, padded to one size. Pure, no torch here.

Every gathered frame starts with (sequence number, call kind, step, row length), so a rank that skipped a call is
caught in the next one instead of silently pairing its values with another call's. Frames have one size on every
rank whatever the call: gloo aborts the whole process when ranks pass different sizes, so a skipped call must never
become a size mismatch. When a row outgrows the frame, every rank sees it in the headers and grows alike.
"""

from __future__ import annotations

import numbers
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdxl_dist_log.errors import RanksOutOfStepError

SEQUENCE, KIND, STEP, LENGTH = 0, 1, 2, 3
CALL_HEADER = 4
INITIAL_FRAME = 128
"""float64 values per rank and gather; grows (in lockstep on all ranks) when a row needs more."""
CALL_KINDS = {"init": 1, "log_metrics": 2, "log_images": 3, "log_model": 4, "log_config": 5, "finish": 6}


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a collective belongs to, for matching across ranks and for error messages."""

    name: str
    step: int | None = None

    def __str__(self) -> str:
        return self.name if self.step is None else f"{self.name} at step {self.step}"

    @property
    def kind(self) -> int:
        return CALL_KINDS.get(self.name, 0)


def checked_step(step: Any, error_type: type[Exception]) -> int | None:
    """``step`` as an int, or None; anything but an int >= 0 (bools, strings, floats) raises ``error_type`` naming it.

    The step travels in every call header, so a string step such as "1350" must not slip through as a string.
    """
    if step is None:
        return None
    if type(step) is int and step >= 0:  # the common case, without the ABC check below (one per logging call)
        return step
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise error_type(f"step={step!r} ({type(step).__name__}) must be an int >= 0 or None")
    if step < 0:
        raise error_type(f"step={step!r} must be >= 0")
    return int(step)


def describe_kind(kind: int) -> str:
    """The call name of a kind number, for messages."""
    return next((name for name, k in CALL_KINDS.items() if k == kind), f"call kind {kind}")


def build_frame(row: np.ndarray, *, sequence: int, call: CallInfo, frame: int) -> np.ndarray:
    """The call header, then ``row`` NaN-padded (or cut) to ``frame`` values; the header keeps the true length."""
    send = np.empty(CALL_HEADER + frame, dtype=np.float64)
    send.fill(np.nan)  # np.full's Python wrapper costs more than the fill, on every logging call
    send[:CALL_HEADER] = (sequence, call.kind, -1 if call.step is None else call.step, len(row))
    fits = min(len(row), frame)
    send[CALL_HEADER : CALL_HEADER + fits] = row[:fits]
    return send


def grown_frame(longest: int, frame: int) -> int:
    """The frame size every rank moves to when some row has ``longest`` values: the next power of two, or unchanged."""
    return frame if longest <= frame else 1 << (longest - 1).bit_length()


def out_of_step(headers: np.ndarray, call: CallInfo, rank: int) -> RanksOutOfStepError | None:
    """The error to raise on every rank when the gathered call headers disagree, or None when all ranks are in step.

    Args:
        headers: shape (ranks, CALL_HEADER), one gathered header per rank.
        call: this rank's call.
        rank: this rank, for the message.
    """
    sequence_ok = np.all(headers[:, SEQUENCE] == headers[0, SEQUENCE])
    kinds_ok = np.all(headers[:, KIND] == headers[0, KIND])
    # gloo pairs the n-th collective of every rank, so a skipped call of the same kind keeps sequence and kind
    # aligned: only the steps can tell, when every rank passed one
    steps = headers[:, STEP]
    steps_ok = bool(np.any(steps < 0)) or bool(np.all(steps == steps[0]))
    if sequence_ok and kinds_ok and steps_ok:
        return None
    mine = headers[rank]
    calls = [(h[SEQUENCE], h[KIND], h[STEP]) for h in headers]
    majority = Counter(calls).most_common(1)[0][0]  # blame the ranks that differ from most, not from rank 0
    reference = calls.index(majority)
    odd = [r for r, c in enumerate(calls) if c != majority]
    detail = ", ".join(
        f"rank {r}: {describe_kind(int(h[KIND]))}"
        + ("" if h[STEP] < 0 else f" at step {int(h[STEP])}")
        + f" (logging call #{int(h[SEQUENCE])})"
        for r, h in enumerate(headers)
        if r == reference or r in odd
    )
    if not sequence_ok:
        reason = "ranks are at different logging calls: one skipped or added a call"
    elif not kinds_ok:
        reason = "ranks made different logging calls: one skipped or added a call"
    else:
        reason = "ranks are at different steps: one skipped or added a call"
    return RanksOutOfStepError(
        f"{call} on rank {rank} (call #{int(mine[SEQUENCE])}): {reason}; {detail}. "
        "Logging collectives are off from here on; training is not affected.",
        call=str(call),
        ranks=odd if odd else [rank],
    )
