"""The collectives of one logging call, as pure steps: which collective each rank makes, and what node leaders and
the primary compute in between. No torch here: ``collectives.py`` runs the steps over gloo, and
``sdxl_dist_log.testing.simulate`` runs the very same steps in one process for thousands of simulated ranks.

A call is a generator that yields ``Op`` values (a gather, a broadcast or an all_gather on the node's group or the
leaders' group) and receives each one's outcome. On several nodes a call is:

1. every rank sends its frame (call header + row) in one ``gather`` to its node's leader;
2. each leader folds its node's frames into one fixed-size aggregate (``node_aggregate``): min and max of every
   call-header field, and what the call's ``Stage`` combines (sums, minima, maxima, key fingerprints, error flags),
   plus a block of each rank's own values where a call needs them (``per_rank`` keys, section times);
3. leaders ``gather`` their aggregates to the primary, which folds them and decides (``decide``) one fixed-size
   result: a verdict and the stage's outcome;
4. the primary ``broadcast``s the result to the leaders, each leader to its node.

Every rank ends the call holding the same result, so every rank returns, or raises, the same thing in the same call;
rare paths (a frame too small, ranks out of step, differing keys) are chosen by that result and taken by every rank
together. On one node the same frames travel in one ``all_gather`` and every rank computes the same result locally
(the fastest pattern at a handful of ranks); where every rank sent the same call and the stage finds the rows alike
(``decide_alike``: the steady state), it does so in one pass, without building the aggregate first.

Frames and aggregates have one size per call on every rank whatever the call (gloo aborts the process on mismatched
sizes), so a rank in another call still pairs with the others and is named, as with one collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sdxl_dist_log.errors import CollectiveError, RanksOutOfStepError
from sdxl_dist_log.exchange import (
    ALL_GATHER,
    BROADCAST,
    GATHER,
    LEADERS,
    NODE,
    Op,
    Steps,
    broadcast_from_primary,
    gather_to_primary,
)
from sdxl_dist_log.framing import (
    CALL_HEADER,
    INITIAL_FRAME,
    LENGTH,
    CallInfo,
    build_frame,
    grown_frame,
    out_of_step,
)
from sdxl_dist_log.topology import Topology

# The aggregate a leader sends: its header, the stage's part, then the block of per-rank values. The minima of the
# call header's (sequence, kind, step), then the maxima of (sequence, kind, step, length), in the header's order.
A_SEQ_MIN, A_KIND_MIN, A_STEP_MIN, A_SEQ_MAX, A_KIND_MAX, A_STEP_MAX, A_LENGTH, A_WIDTH, A_RANKS, A_BROKEN = range(10)
AGG_HEADER = 10
STAGE_HEADER = 32
"""Values a stage may use before its frame-sized part, in aggregates and in results."""
# The result the primary broadcasts: its header, then the stage's part.
R_VERDICT, R_FRAME, R_WIDTH, R_RANKS = range(4)
RESULT_HEADER = 4
OK, OUT_OF_STEP, GROW, BROKEN = 0.0, 1.0, 2.0, 3.0
INITIAL_WIDTH = 8
"""Per-rank block values per rank; grows in lockstep, like the frame, when a call needs more."""


class Stage(Protocol):
    """What a kind of call computes between the collectives: pure functions of float64 rows.

    ``payloads`` are frames without their call header (padded with NaN to the frame size); aggregates and results are
    ``STAGE_HEADER + frame`` values long. A stage must never raise on rows of another kind of call (a rank out of
    step): the engine reports that instead.
    """

    def combine(self, payloads: np.ndarray, ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """A node's rows -> (its aggregate, its (rows, k) block of per-rank values; k may be 0)."""
        ...

    def decide_alike(self, payloads: np.ndarray, primary_payload: np.ndarray, width: int,
                     out: np.ndarray) -> np.ndarray | None:
        """One node's rows of one call (same header, fitting the frame): where the stage can tell in one pass that
        they agree, write into ``out`` (NaN-filled) exactly what ``finalize`` would return after ``combine``, and
        return the node's block of per-rank values (rows, at most ``width``); else None."""
        ...

    def merge(self, aggregates: np.ndarray) -> np.ndarray:
        """Several aggregates (one per row) -> one."""
        ...

    def finalize(self, aggregate: np.ndarray, block: np.ndarray, primary_payload: np.ndarray,
                 fits: bool) -> np.ndarray | None:
        """The result, from the whole job's aggregate, every rank's block row (by rank) and the primary's own row.

        ``fits`` is False when some row or block row was cut to fit; return None when the result needs the whole
        row (the engine then grows the frame or block and repeats the call).
        """
        ...


def aggregate_size(frame: int, width: int, largest_node: int) -> int:
    return AGG_HEADER + STAGE_HEADER + frame + largest_node * width


def result_size(frame: int) -> int:
    return RESULT_HEADER + STAGE_HEADER + frame


def node_aggregate(frames: np.ndarray, ranks: Sequence[int], stage: Stage, width: int,
                   largest_node: int) -> np.ndarray:
    """Fold one node's frames (rows in ``ranks`` order) into the fixed-size aggregate a leader sends."""
    frame = frames.shape[1] - CALL_HEADER
    out = np.empty(aggregate_size(frame, width, largest_node))
    headers = frames[:, :CALL_HEADER]
    out[A_SEQ_MIN:A_SEQ_MAX] = headers[:, :LENGTH].min(axis=0)
    out[A_SEQ_MAX : A_LENGTH + 1] = headers.max(axis=0)
    out[A_RANKS], out[A_BROKEN] = len(ranks), 0.0
    stage_end = AGG_HEADER + STAGE_HEADER + frame
    try:
        part, block = stage.combine(frames[:, CALL_HEADER:], ranks)
        out[AGG_HEADER:stage_end] = part
        out[A_WIDTH] = block.shape[1]
        rows = out[stage_end:].reshape(largest_node, width)
        rows.fill(np.nan)
        if block.shape[1] <= width:
            rows[: len(block), : block.shape[1]] = block
    except Exception:  # rows of another call (out of step) or a defect: the verdict says so on every rank
        out[AGG_HEADER:].fill(np.nan)
        out[A_BROKEN], out[A_WIDTH] = 1.0, 0.0
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a call ends with.

    Attributes:
        result: the same array on every rank: ``RESULT_HEADER`` values, then the stage's part.
        block: every rank's per-rank values, (ranks, at most width) by rank, where the result was decided (the
            primary; on one node every rank); None elsewhere.
        headers: every rank's call header, by rank, where a single all_gather brought them (one node); else None.
    """

    result: np.ndarray
    block: np.ndarray | None
    headers: np.ndarray | None = None

    @property
    def verdict(self) -> float:
        return float(self.result[R_VERDICT])

    @property
    def stage(self) -> np.ndarray:
        return self.result[RESULT_HEADER:]


def decide(aggregates: np.ndarray, nodes: Sequence[Sequence[int]], primary_payload: np.ndarray, stage: Stage,
           frame: int, width: int) -> Outcome:
    """The result every rank receives, from every node's aggregate (rows in ``nodes`` order)."""
    out = np.empty(result_size(frame))
    out[R_FRAME], out[R_WIDTH] = frame, width
    if len(aggregates) == 1:
        header = aggregates[0, :AGG_HEADER]
    else:
        header = np.concatenate([aggregates[:, A_SEQ_MIN:A_SEQ_MAX].min(axis=0),
                                 aggregates[:, A_SEQ_MAX:A_RANKS].max(axis=0),
                                 aggregates[:, A_RANKS:AGG_HEADER].sum(axis=0)])
    seq_low, kind_low, step_low, seq_high, kind_high, step_high, longest, widest, ranks, broken = header.tolist()
    out[R_RANKS] = ranks
    # a call without a step (-1) on any rank leaves nothing to compare, as with one collective
    if not (seq_low == seq_high and kind_low == kind_high and (step_low < 0 or step_low == step_high)):
        out[R_VERDICT] = OUT_OF_STEP
        return Outcome(out, None)
    if broken:
        out[R_VERDICT] = BROKEN
        return Outcome(out, None)
    stage_end = AGG_HEADER + STAGE_HEADER + frame
    blocks = aggregates[:, stage_end:].reshape(len(nodes), -1, width)
    if len(nodes) == 1:
        block = blocks[0]
    else:
        block = np.empty((int(ranks), width))
        for node, rows in zip(nodes, blocks):
            block[list(node)] = rows[: len(node)]
    fits = longest <= frame and widest <= width
    try:
        merged = stage.merge(aggregates[:, AGG_HEADER:stage_end])
        result = stage.finalize(merged, block, primary_payload, fits)
    except Exception:  # a defect: every rank must still learn it, in this call
        out[R_VERDICT] = BROKEN
        return Outcome(out, None)
    if result is None:
        out[R_VERDICT] = GROW
        out[R_FRAME] = grown_frame(int(longest), frame)
        out[R_WIDTH] = grown_frame(int(widest), width)
        return Outcome(out, None)
    out[R_VERDICT] = OK
    out[RESULT_HEADER:] = result
    return Outcome(out, block)


def decide_alike(frames: np.ndarray, primary_payload: np.ndarray, stage: Stage, frame: int,
                 width: int) -> Outcome | None:
    """``decide`` of one node's frames in one pass where every rank sent the same call header and the stage finds
    the rows alike (``Stage.decide_alike``): the steady state of a training loop, without building an aggregate
    first. None where anything differs: the general path then decides (and names what differs)."""
    headers = frames[:, :CALL_HEADER].tolist()  # a handful of rows: plain lists compare faster than numpy calls
    if headers[0][LENGTH] > frame or headers.count(headers[0]) != len(headers):
        return None
    out = np.empty(result_size(frame))
    out.fill(np.nan)  # np.full's Python wrapper costs more than the fill, on every logging call
    try:
        block = stage.decide_alike(frames[:, CALL_HEADER:], primary_payload, width, out[RESULT_HEADER:])
    except Exception:  # the general path decides and, for a defect, tells every rank
        return None
    if block is None:
        return None
    out[R_VERDICT], out[R_FRAME], out[R_WIDTH], out[R_RANKS] = OK, frame, width, len(frames)
    return Outcome(out, block)


def call_steps(topology: Topology, sent: np.ndarray, stage: Stage, width: int) -> Steps:
    """One rank's side of one attempt of a call; returns its ``Outcome``.

    Args:
        sent: this rank's frame (``framing.build_frame``).
        width: the current per-rank block width.
    """
    frame = len(sent) - CALL_HEADER
    node = topology.node
    if topology.single_node:
        frames = yield Op(ALL_GATHER, NODE, sent)
        primary = frames[node.index(topology.primary), CALL_HEADER:]
        decided = decide_alike(frames, primary, stage, frame, width)
        if decided is None:
            aggregate = node_aggregate(frames, node, stage, width, topology.largest_node)
            decided = decide(aggregate[None], (node,), primary, stage, frame, width)
        return Outcome(decided.result, decided.block, frames[:, :CALL_HEADER])
    frames = yield Op(GATHER, NODE, sent, root=topology.leader, deadline=0)
    result, block = np.empty(result_size(frame)), None
    if topology.is_leader:
        aggregate = node_aggregate(frames, node, stage, width, topology.largest_node)
        aggregates = yield Op(GATHER, LEADERS, aggregate, root=topology.primary, deadline=1)
        if topology.is_primary:
            decided = decide(aggregates, topology.nodes, sent[CALL_HEADER:], stage, frame, width)
            result, block = decided.result, decided.block
        result = yield Op(BROADCAST, LEADERS, result, root=topology.primary, deadline=2)
    result = yield Op(BROADCAST, NODE, result, root=topology.leader, deadline=2)
    return Outcome(result, block)


@dataclass
class CallState:
    """What every rank of a logger keeps alike between calls: the call count and the sizes grown so far."""

    sequence: int = 0
    frame: int = INITIAL_FRAME
    width: int = INITIAL_WIDTH


def call_rounds(topology: Topology, row: np.ndarray, call: CallInfo, stage: Stage, state: CallState) -> Steps:
    """A whole call: ``call_steps``, again with a grown frame or block while the result asks for it.

    Returns:
        The ``Outcome`` (verdict OK), the same result on every rank.

    Raises:
        RanksOutOfStepError: ranks are in different logging calls (every rank's header is shared to name them as a
            single all_gather would: one more gather and broadcast on several nodes).
        CollectiveError: a stage failed on some rank (a defect): every rank raises.
    """
    while True:
        state.sequence += 1
        sent = build_frame(row, sequence=state.sequence, call=call, frame=state.frame)
        outcome = yield from call_steps(topology, sent, stage, state.width)
        verdict = outcome.verdict
        if verdict == OK:
            return outcome
        if verdict == GROW:
            state.frame, state.width = int(outcome.result[R_FRAME]), int(outcome.result[R_WIDTH])
            continue
        if verdict == OUT_OF_STEP:
            headers = outcome.headers
            if headers is None:
                everyone = yield from gather_to_primary(topology, sent[:CALL_HEADER].copy())
                if everyone is None:
                    everyone = np.empty((topology.world_size, CALL_HEADER))
                headers = yield from broadcast_from_primary(topology, everyone.reshape(-1))
            error = out_of_step(np.reshape(headers, (topology.world_size, CALL_HEADER)), call, topology.rank)
            raise error or RanksOutOfStepError(f"{call} on rank {topology.rank}: ranks are out of step",
                                               call=str(call))
        # BROKEN (or a verdict this version does not know): every rank holds the same one and raises alike
        raise CollectiveError(f"{call} on rank {topology.rank}: a logging collective's combine step failed on "
                              "some rank (a defect; please report it). Logging collectives are off from here on; "
                              "training is not affected.", call=str(call))
