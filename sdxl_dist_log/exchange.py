"""Exchanges between the ranks and the primary, as steps: the vocabulary of every logging call's collectives (``Op``)
and the fixed-size arrays, objects and bytes that travel to the primary and back on a call's rare paths.

A step function is a generator that yields ``Op`` values and receives each one's outcome; ``collectives.py`` runs
them over gloo, ``sdxl_dist_log.testing.simulate`` in one process. On several nodes everything to the primary goes
through the node leaders (a gather to the leader, then the leaders' gather to the primary) and everything from it
comes back the same way (two broadcasts), so no group spans every rank; on one node a single collective does it.
No torch here.
"""

from __future__ import annotations

import pickle
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdxl_dist_log.errors import CollectiveError
from sdxl_dist_log.topology import Topology

GATHER, BROADCAST, ALL_GATHER, SEND, RECV = "gather", "broadcast", "all_gather", "send", "recv"
NODE, LEADERS = "node", "leaders"
"""Levels an op runs on: the node's group (the whole world on one node), or the group of one leader per node."""


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
