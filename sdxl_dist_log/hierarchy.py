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
together. On one node the same frames travel in one ``all_gather`` and every rank computes the same aggregate and
result locally (the fastest pattern at a handful of ranks).

Frames and aggregates have one size per call on every rank whatever the call (gloo aborts the process on mismatched
sizes), so a rank in another call still pairs with the others and is named, as with one collective.
"""

from __future__ import annotations

import pickle
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sdxl_dist_log.errors import CollectiveError, RanksOutOfStepError
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

GATHER, BROADCAST, ALL_GATHER, SEND, RECV = "gather", "broadcast", "all_gather", "send", "recv"
NODE, LEADERS = "node", "leaders"
"""Levels an op runs on: the node's group (the whole world on one node), or the group of one leader per node."""

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


@dataclass(frozen=True, slots=True)
class Op:
    """One collective a rank makes.

    Attributes:
        kind: GATHER (the root receives every member's ``data``), BROADCAST (every member receives the root's
            ``data``; elsewhere ``data`` is a buffer of the right size), ALL_GATHER, or point to point: SEND
            (``data`` to ``root``) and RECV (into the buffer ``data``, from ``root``).
        level: NODE or LEADERS.
        data: what this rank puts in: float64 or uint8, one dimension.
        root: the root's global rank (GATHER, BROADCAST), the peer's (SEND, RECV).
        deadline: which bound the wait has: 0 the first gather, 1 the leaders' gather, 2 the broadcasts (each a
            little later than the one before, so a rank late by up to the timeout is still paired everywhere).
    """

    kind: str
    level: str
    data: np.ndarray
    root: int = -1
    deadline: int = 0


Steps = Generator[Op, Any, Any]


class Stage(Protocol):
    """What a kind of call computes between the collectives: pure functions of float64 rows.

    ``payloads`` are frames without their call header (padded with NaN to the frame size); aggregates and results are
    ``STAGE_HEADER + frame`` values long. A stage must never raise on rows of another kind of call (a rank out of
    step): the engine reports that instead.
    """

    def combine(self, payloads: np.ndarray, ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """A node's rows -> (its aggregate, its (rows, k) block of per-rank values; k may be 0)."""
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
        block: every rank's per-rank values, (ranks, width) by rank, where the result was decided (the primary; on
            one node every rank); None elsewhere.
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
        aggregate = node_aggregate(frames, node, stage, width, topology.largest_node)
        primary = frames[node.index(topology.primary), CALL_HEADER:]
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
        if outcome.verdict == GROW:
            state.frame, state.width = int(outcome.result[R_FRAME]), int(outcome.result[R_WIDTH])
            continue
        if outcome.verdict == OUT_OF_STEP:
            headers = outcome.headers
            if headers is None:
                everyone = yield from gather_to_primary(topology, sent[:CALL_HEADER].copy())
                if everyone is None:
                    everyone = np.empty((topology.world_size, CALL_HEADER))
                headers = yield from broadcast_from_primary(topology, everyone.reshape(-1))
            error = out_of_step(np.reshape(headers, (topology.world_size, CALL_HEADER)), call, topology.rank)
            raise error or RanksOutOfStepError(f"{call} on rank {topology.rank}: ranks are out of step",
                                               call=str(call))
        if outcome.verdict == BROKEN:
            raise CollectiveError(f"{call} on rank {topology.rank}: a logging collective's combine step failed on "
                                  "some rank (a defect; please report it). Logging collectives are off from here on; "
                                  "training is not affected.", call=str(call))
        return outcome


# -- rare paths: fixed-size arrays and objects to the primary and back ----------------------------------------------
def gather_to_primary(topology: Topology, data: np.ndarray) -> Steps:
    """Every rank's ``data`` (same size everywhere) as a (ranks, size) array on the primary (on one node: on every
    rank); None elsewhere. Two gathers on leaders, one elsewhere."""
    if topology.single_node:
        return (yield Op(ALL_GATHER, NODE, data))
    rows = yield Op(GATHER, NODE, data, root=topology.leader, deadline=0)
    if not topology.is_leader:
        return None
    padded = np.zeros((topology.largest_node, len(data)), dtype=data.dtype)
    padded[: len(rows)] = rows
    everyone = yield Op(GATHER, LEADERS, padded.reshape(-1), root=topology.primary, deadline=1)
    if not topology.is_primary:
        return None
    by_node = everyone.reshape(len(topology.nodes), topology.largest_node, len(data))
    out = np.empty((topology.world_size, len(data)), dtype=data.dtype)
    for node, rows in zip(topology.nodes, by_node):
        out[list(node)] = rows[: len(node)]
    return out


def broadcast_from_primary(topology: Topology, data: np.ndarray) -> Steps:
    """The primary's ``data`` on every rank (``data`` elsewhere: a buffer of the same size and dtype). On one node
    every rank already holds what the primary would send (``gather_to_primary`` gave everyone everything): no op."""
    if topology.single_node:
        return data
    if topology.is_leader:
        data = yield Op(BROADCAST, LEADERS, data, root=topology.primary, deadline=2)
    return (yield Op(BROADCAST, NODE, data, root=topology.leader, deadline=2))


def objects_to_primary(topology: Topology, obj: Any) -> Steps:
    """Every rank's picklable ``obj`` as a list by rank on the primary (on one node: on every rank); None elsewhere.

    Lengths first (so every rank pads to the same size), then the padded pickles: bytes reach the primary only, not
    every rank (an all_gather_object would send every rank's pickle to every rank).
    """
    blob = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    lengths = yield from gather_to_primary(topology, np.array([len(blob)], dtype=np.float64))
    longest = np.array([lengths.max() if lengths is not None else 0.0])
    longest = yield from broadcast_from_primary(topology, longest)
    padded = np.zeros(int(longest[0]), dtype=np.uint8)
    padded[: len(blob)] = blob
    blobs = yield from gather_to_primary(topology, padded)
    if blobs is None:
        return None
    return [pickle.loads(blobs[r, : int(n)].tobytes()) for r, n in enumerate(lengths[:, 0])]


def object_from_primary(topology: Topology, obj: Any) -> Steps:
    """The primary's picklable ``obj`` on every rank (on one node every rank passes its own, equal, value)."""
    if topology.single_node:
        return obj
    blob = np.frombuffer(pickle.dumps(obj), dtype=np.uint8) if topology.is_primary else np.empty(0, np.uint8)
    length = yield from broadcast_from_primary(topology, np.array([len(blob)], dtype=np.float64))
    data = blob.copy() if topology.is_primary else np.empty(int(length[0]), dtype=np.uint8)
    data = yield from broadcast_from_primary(topology, data)
    return pickle.loads(data.tobytes())


def decided_at_primary(topology: Topology, obj: Any, decide_fn: Any) -> Steps:
    """``decide_fn(every rank's obj by rank)``, computed where all of them are and returned on every rank.

    ``decide_fn`` should return a value that describes an expected failure rather than raise; anything it raises all
    the same reaches every rank as a ``CollectiveError`` (no rank is left waiting for the others).
    """
    everyone = yield from objects_to_primary(topology, obj)
    outcome: Any = None
    if everyone is not None:
        try:
            outcome = decide_fn(everyone)
        except Exception as exc:  # a defect where the decision is made: every rank must learn it
            outcome = _Failed(f"{type(exc).__name__}: {exc}")
    outcome = yield from object_from_primary(topology, outcome)
    if isinstance(outcome, _Failed):
        raise CollectiveError(f"rank {topology.primary} failed to decide a logging call: {outcome.reason}. Logging "
                              "collectives are off from here on; training is not affected.")
    return outcome


@dataclass(frozen=True)
class _Failed:
    reason: str


def bytes_to_primary(topology: Topology, sizes: dict[int, int], payload: np.ndarray) -> Steps:
    """The uint8 ``payload`` of every rank in ``sizes`` (rank -> its length, known to every rank) on the primary.

    Only those ranks send, point to point: to their leader, which forwards its node's payloads in one message to the
    primary. On one node: one padded ``gather`` to the primary (every rank takes part; nothing when all are empty).

    Returns:
        On the primary, rank -> payload for every rank in ``sizes``; None elsewhere.
    """
    primary, rank = topology.primary, topology.rank
    if topology.single_node:
        longest = max(sizes.values(), default=0)
        if longest == 0:
            return {r: np.empty(0, np.uint8) for r in sizes} if rank == primary else None
        padded = np.zeros(longest, dtype=np.uint8)
        padded[: len(payload)] = payload
        rows = yield Op(GATHER, NODE, padded, root=primary)
        return {r: rows[topology.node.index(r), :n] for r, n in sizes.items()} if rows is not None else None
    senders = sorted(r for r in topology.node if sizes.get(r, 0) > 0)
    if rank in senders and not topology.is_leader:
        yield Op(SEND, NODE, payload, root=topology.leader)
    if not topology.is_leader:
        return None
    received = {}
    for r in senders:
        received[r] = payload if r == rank else (yield Op(RECV, NODE, np.empty(sizes[r], np.uint8), root=r))
    if not topology.is_primary:
        if senders:
            yield Op(SEND, LEADERS, np.concatenate([received[r] for r in senders]), root=primary)
        return None
    out = {r: np.empty(0, np.uint8) for r in sizes}
    out.update(received)
    for leader, node in zip(topology.leaders, topology.nodes):
        node_senders = [r for r in node if sizes.get(r, 0) > 0]
        if leader == rank or not node_senders:
            continue
        joined = yield Op(RECV, LEADERS, np.empty(sum(sizes[r] for r in node_senders), np.uint8), root=leader)
        offsets = np.cumsum([0] + [sizes[r] for r in node_senders])
        for r, start, end in zip(node_senders, offsets[:-1], offsets[1:]):
            out[r] = joined[start:end]
    return out
