"""Run the steps of a logging call for every rank of a simulated job, in one process: no sockets, no torch.

The steps are the real ones (``sdxl_dist_log.hierarchy``: the same generators ``collectives.py`` runs over gloo);
only the transport is simulated. Each collective is matched when every member of its group has reached it (as gloo
pairs them), executed with numpy, and recorded per rank twice: as the collective the rank made (op, group size, the
bytes the ``CollectiveProbe`` would count) and as the messages gloo's algorithm sends for it (flat gather: every
member sends once to the root; broadcast: a binomial tree, every member but the root receives once; all_gather: a
ring). That checks message counts and bytes per rank at W = 4,096 on a laptop, and feeds the cost model
(``benchmarks/scale_model.py``).

Example:
    >>> job = SimulatedJob(Layout.regular(64, 8))  # doctest: +SKIP
    >>> steps = {r: call_steps(job.topology(r), frame(r), stage, width) for r in range(64)}  # doctest: +SKIP
    >>> outcomes = job.run(steps)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdxl_dist_log.exchange import ALL_GATHER, BROADCAST, GATHER, NODE, RECV, SEND, Op, Steps
from sdxl_dist_log.hierarchy import CallState
from sdxl_dist_log.topology import Layout, Topology


@dataclass
class SimulatedRank:
    """What a rank's ``MetricReducer`` needs of its ``Collectives`` to build its steps: where it sits, and its calls'
    shared state."""

    topology: Topology
    state: CallState = field(default_factory=CallState)


@dataclass(frozen=True)
class Collective:
    """One collective as one rank made it.

    Attributes:
        op: GATHER, BROADCAST or ALL_GATHER.
        level: NODE or LEADERS.
        group_size: members of the group.
        sent: bytes this rank put in (as ``CollectiveProbe`` counts them).
        received: bytes this rank's call filled (the root's gather list; an all_gather's output; 0 for a broadcast,
            whose tensor is both).
        messages_sent: point-to-point messages gloo sends from this rank for it.
        messages_received: likewise received.
        bytes_received: payload bytes that reach this rank over the wire (a broadcast's receivers included).
        rounds: dependent message rounds of the whole collective (gather 1, binomial broadcast ceil(log2 n),
            ring all_gather n - 1).
    """

    op: str
    level: str
    group_size: int
    sent: int
    received: int
    messages_sent: int
    messages_received: int
    bytes_received: int
    rounds: int


@dataclass
class RankRecord:
    """Everything one simulated rank did."""

    collectives: list[Collective] = field(default_factory=list)

    @property
    def messages_sent(self) -> int:
        return sum(c.messages_sent for c in self.collectives)

    @property
    def messages_received(self) -> int:
        return sum(c.messages_received for c in self.collectives)

    @property
    def bytes_received(self) -> int:
        return sum(c.bytes_received for c in self.collectives)

    def pattern(self) -> list[tuple[str, str, int]]:
        return [(c.op, c.level, c.group_size) for c in self.collectives]


def binomial_children(position: int, size: int) -> list[int]:
    """Positions (relative to the root) that ``position`` sends to in a binomial broadcast tree of ``size``."""
    children = []
    step = 1
    while step < size:
        if position < step and position + step < size:
            children.append(position + step)
        step *= 2
    return children


class SimulatedJob:
    """A job of ranks placed as ``layout`` says, whose calls run in one process.

    Attributes:
        records: per rank, what it did so far (``reset`` clears them).
    """

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._topologies = {r: layout.for_rank(r) for r in range(layout.world_size)}
        self.records: dict[int, RankRecord] = defaultdict(RankRecord)

    def topology(self, rank: int) -> Topology:
        return self._topologies[rank]

    def rank(self, rank: int) -> SimulatedRank:
        """A stand-in for ``rank``'s ``Collectives`` (pass it to a ``MetricReducer``)."""
        return SimulatedRank(self._topologies[rank])

    def reset(self) -> None:
        self.records = defaultdict(RankRecord)

    def _members(self, rank: int, level: str) -> tuple[int, ...]:
        topology = self._topologies[rank]
        return topology.node if level == NODE else topology.leaders

    def run(self, steps: Mapping[int, Steps]) -> dict[int, Any]:
        """Drive every rank's steps to the end; returns each rank's return value, or the exception it raised.

        Raises:
            RuntimeError: the ranks' collectives cannot all be matched (a rank waits for one that never comes, or
                members disagree on the op, the root or the size): what a real job would hang or abort on.
        """
        results: dict[int, Any] = {}
        waiting: dict[tuple[str, tuple[int, ...]], dict[int, Op]] = defaultdict(dict)

        def advance(rank: int, value: Any) -> None:
            try:
                op = steps[rank].send(value)
            except StopIteration as done:
                results[rank] = done.value
                return
            except Exception as exc:  # the rank raised, as it would in a real call: keep it for the caller
                results[rank] = exc
                return
            if op.kind in (SEND, RECV):  # matched by (sender, receiver): the pair is the "group"
                pair = (rank, op.root) if op.kind == SEND else (op.root, rank)
                waiting[(op.level, pair)][rank] = op
                return
            members = self._members(rank, op.level)
            if len(members) == 1:  # no collective on a group of one, as in collectives.py
                advance(rank, op.data if op.kind == BROADCAST else op.data[None])
                return
            waiting[(op.level, members)][rank] = op

        for rank in steps:
            advance(rank, None)
        while waiting:
            ready = [key for key, ops in waiting.items() if len(ops) == len(set(key[1]))]
            if not ready:
                stuck = {key[0]: sorted(ops) for key, ops in list(waiting.items())[:4]}
                raise RuntimeError(f"collectives that never complete (level: ranks waiting): {stuck}")
            for key in ready:
                ops = waiting.pop(key)
                for rank, value in self._execute(key[1], ops).items():
                    advance(rank, value)
        return results

    def _execute(self, members: tuple[int, ...], ops: dict[int, Op]) -> dict[int, Any]:
        first = ops[members[0]]
        if first.kind in (SEND, RECV):
            sender, receiver = members
            if ops[sender].kind != SEND or ops[receiver].kind != RECV or ops[sender].data.nbytes != ops[
                    receiver].data.nbytes:
                raise RuntimeError(f"ranks {sender} -> {receiver}: unmatched point-to-point messages")
            return self._execute_pair(members, ops)
        for rank, op in ops.items():
            if (op.kind, op.root, op.data.nbytes) != (first.kind, first.root, first.data.nbytes):
                raise RuntimeError(f"ranks disagree on a collective: rank {members[0]} {first.kind} root "
                                   f"{first.root} {first.data.nbytes} B, rank {rank} {op.kind} root {op.root} "
                                   f"{op.data.nbytes} B")
        n, nbytes = len(members), first.data.nbytes
        out: dict[int, Any] = {}
        if first.kind == GATHER:
            stacked = np.stack([ops[r].data for r in members])
            for r in members:
                root = r == first.root
                self._record(r, first, n, nbytes, n * nbytes if root else 0, 0 if root else 1,
                             n - 1 if root else 0, (n - 1) * nbytes if root else 0, 1)
                out[r] = stacked if root else None
        elif first.kind == BROADCAST:
            data = ops[first.root].data
            position = {r: (i - members.index(first.root)) % n for i, r in enumerate(members)}
            rounds = math.ceil(math.log2(n))
            for r in members:
                sends = len(binomial_children(position[r], n))
                root = r == first.root
                self._record(r, first, n, nbytes, 0, sends, 0 if root else 1, 0 if root else nbytes, rounds)
                out[r] = data.copy()
        elif first.kind == ALL_GATHER:
            stacked = np.stack([ops[r].data for r in members])
            for r in members:
                self._record(r, first, n, nbytes, n * nbytes, n - 1, n - 1, (n - 1) * nbytes, n - 1)
                out[r] = stacked.copy()
        else:
            raise RuntimeError(f"unknown collective {first.kind!r}")
        return out

    def _execute_pair(self, pair: tuple[int, ...], ops: dict[int, Op]) -> dict[int, Any]:
        sender, receiver = pair
        nbytes = ops[sender].data.nbytes
        self._record(sender, ops[sender], 2, nbytes, 0, 1, 0, 0, 1)
        self._record(receiver, ops[receiver], 2, 0, nbytes, 0, 1, nbytes, 1)
        return {sender: None, receiver: ops[sender].data.copy()}

    def _record(self, rank: int, op: Op, n: int, sent: int, received: int, messages_sent: int,
                messages_received: int, bytes_received: int, rounds: int) -> None:
        self.records[rank].collectives.append(Collective(op.kind, op.level, n, sent, received, messages_sent,
                                                         messages_received, bytes_received, rounds))
