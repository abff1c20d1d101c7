"""Which ranks share a node, and who leads each node: the shape of the two-level logging collectives.

The launch tells each rank only its own node (``RankInfo.node_rank``); the groups of the two-level pattern need every
node's members. ``exchange_layout`` learns them once, at construction, through the process group's key-value store
(a handful of store operations per rank; one rank reads the full rank -> node list and publishes it compressed as
rank ranges, so a node-major launch costs ~10 bytes per node to read, not per rank). ``Layout`` and ``Topology`` are
pure values: every rank derives the same ones from the same layout, so every rank creates the same groups in the
same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sdxl_dist_log.errors import CollectiveTimeoutError


@dataclass(frozen=True, slots=True)
class Layout:
    """Every node's ranks, in node order (nodes sorted by their lowest rank; each node's ranks sorted).

    Attributes:
        nodes: one sorted tuple of global ranks per node.
        primary: the rank that owns the W&B run; it leads its own node and roots the leaders' group.
    """

    nodes: tuple[tuple[int, ...], ...]
    primary: int

    @classmethod
    def from_node_ids(cls, node_of_rank: Sequence[int], primary: int) -> Layout:
        """The layout of ranks whose node ids (any integers; equal id = same node) are ``node_of_rank[rank]``."""
        members: dict[int, list[int]] = {}
        for rank, node in enumerate(node_of_rank):
            members.setdefault(node, []).append(rank)
        nodes = sorted((tuple(sorted(m)) for m in members.values()), key=lambda m: m[0])
        return cls(tuple(nodes), primary)

    @classmethod
    def regular(cls, world_size: int, per_node: int, primary: int = 0) -> Layout:
        """Node-major placement of ``per_node`` ranks per node (the last node may hold fewer)."""
        return cls.from_node_ids([r // per_node for r in range(world_size)], primary)

    @property
    def world_size(self) -> int:
        return sum(len(n) for n in self.nodes)

    @property
    def leaders(self) -> tuple[int, ...]:
        """One rank per node, in node order: the primary on its node, else the node's lowest rank."""
        return tuple(self.primary if self.primary in node else node[0] for node in self.nodes)

    @property
    def largest_node(self) -> int:
        return max(len(n) for n in self.nodes)

    def for_rank(self, rank: int) -> Topology:
        """What ``rank`` needs of the layout to run its side of a call."""
        by_leader = sorted(zip(self.leaders, self.nodes))  # group rank order of the leaders' group
        index = next(i for i, (_, node) in enumerate(by_leader) if rank in node)
        return Topology(rank=rank, world_size=self.world_size, primary=self.primary,
                        nodes=tuple(node for _, node in by_leader), leader=by_leader[index][0],
                        leaders=tuple(leader for leader, _ in by_leader), largest_node=self.largest_node)

    def encode(self) -> str:
        """A compact text form: nodes separated by ";", each a comma list of ranks or "a-b" ranges."""
        return ";".join(",".join(_ranges(node)) for node in self.nodes)

    @classmethod
    def decode(cls, text: str, primary: int) -> Layout:
        nodes = []
        for node in text.split(";"):
            ranks: list[int] = []
            for part in node.split(","):
                low, _, high = part.partition("-")
                ranks.extend(range(int(low), int(high or low) + 1))
            nodes.append(tuple(ranks))
        return cls(tuple(nodes), primary)


def _ranges(ranks: Sequence[int]) -> list[str]:
    out: list[str] = []
    start = previous = ranks[0]
    for r in list(ranks[1:]) + [None]:
        if r is not None and r == previous + 1:
            previous = r
            continue
        out.append(str(start) if start == previous else f"{start}-{previous}")
        if r is not None:
            start = previous = r
    return out


@dataclass(frozen=True, slots=True)
class Topology:
    """One rank's view of the layout.

    Attributes:
        rank: this rank.
        world_size: all ranks.
        primary: the rank that owns the run and roots the leaders' group.
        nodes: every node's ranks (each sorted: group rank = index), ordered by their leaders' ranks.
        leader: the rank that gathers this node and roots its broadcast.
        leaders: every node's leader, sorted (group rank in the leaders' group = index).
        largest_node: ranks of the largest node (sizes the leaders' per-rank block).
    """

    rank: int
    world_size: int
    primary: int
    nodes: tuple[tuple[int, ...], ...]
    leader: int
    leaders: tuple[int, ...]
    largest_node: int

    @classmethod
    def alone(cls) -> Topology:
        """A world of one rank (no process group, or logging collectives closed): every collective is the identity."""
        return cls(rank=0, world_size=1, primary=0, nodes=((0,),), leader=0, leaders=(0,), largest_node=1)

    @property
    def node(self) -> tuple[int, ...]:
        """This rank's node's ranks."""
        return self.nodes[self.leaders.index(self.leader)]

    @property
    def single_node(self) -> bool:
        """All ranks on one node: one all_gather is the fastest pattern (no leaders' level)."""
        return len(self.leaders) == 1

    @property
    def is_leader(self) -> bool:
        return self.rank == self.leader

    @property
    def is_primary(self) -> bool:
        return self.rank == self.primary


def exchange_layout(store: Any, *, rank: int, world_size: int, node_id: int, primary: int, namespace: str,
                    timeout: float) -> Layout:
    """Learn every rank's node through ``store``, once; every rank returns the same layout.

    Each rank appends ``rank:node`` to one key and counts itself in; the last rank to arrive reads the list, publishes
    it as a compact ``Layout.encode`` and marks it done; every rank then reads that.

    Args:
        store: the process group's key-value store (``torch.distributed.Store``).
        node_id: this rank's node as the launch says (``RankInfo.node_rank``).
        namespace: a key prefix of this logger's own.
        timeout: seconds to wait for every rank to arrive.

    Raises:
        CollectiveTimeoutError: not every rank arrived within ``timeout`` (the ranks that did not are named).
    """
    key = f"{namespace}/layout"
    store.append(f"{key}/ranks", f"{rank}:{node_id},")
    if store.add(f"{key}/count", 1) == world_size:
        node_of_rank = [0] * world_size
        for entry in store.get(f"{key}/ranks").decode().split(","):
            if entry:
                r, n = entry.split(":")
                node_of_rank[int(r)] = int(n)
        store.set(f"{key}/done", Layout.from_node_ids(node_of_rank, primary).encode())
    try:
        store.wait([f"{key}/done"], timedelta(seconds=timeout))
    except Exception as exc:  # DistStoreError on timeout, or a lost store
        arrived = {int(e.split(":")[0]) for e in _safe_get(store, f"{key}/ranks").split(",") if e}
        missing = sorted(set(range(world_size)) - arrived)
        raise CollectiveTimeoutError(
            f"logger construction on rank {rank}: ranks {missing} did not build the logger within {timeout:g} s "
            f"({exc})", call="init", ranks=missing) from None
    return Layout.decode(store.get(f"{key}/done").decode(), primary)


def _safe_get(store: Any, key: str) -> str:
    try:
        return store.get(key).decode() if store.check([key]) else ""
    except Exception:  # the store's host may be gone: name nobody rather than fail differently
        return ""
