"""The primary's collector: reads what the nodes and ranks published and turns it into one row per call.

Reads never block: a key is read with ``get`` (which waits until the key exists) only after ``check`` has seen it,
and keys are never deleted. A source whose sequence number does not advance for ``stale_after`` seconds of this
collector's clock is stale: its figures are left out and the row says so; nobody waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sdxl_dist_log.system.rows import NodeReport, RankReport, StalenessTracker, assemble_row
from sdxl_dist_log.system.wire import (
    KeyValueStore,
    StoreKeys,
    decode_node_meta,
    decode_node_sample,
    decode_rank_meta,
    decode_rank_sample,
)


class Collector:
    """Which keys exist, the latest reports, staleness, and the node -> host name map.

    Args:
        store: the store to read (the collector thread's own connection).
        keys: the protocol's keys.
        num_nodes: nodes of the job.
        world_size: ranks of the job.
        stale_after: seconds of ``clock`` without a new sequence number before a source is stale.
        clock: monotonic seconds; staleness is judged on it alone.
        logger: where the debug line about each node goes.
        aggregate_only: rows carry only ``system/all/...`` aggregates and staleness keys.

    :meth:`collect` raises what the store raises (``wire.STORE_ERRORS``) and ``wire.WireError`` for a damaged
    record; the state stays usable and the next call tries again.
    """

    def __init__(
        self,
        store: KeyValueStore,
        keys: StoreKeys,
        *,
        num_nodes: int,
        world_size: int,
        stale_after: float,
        clock: Callable[[], float],
        logger: logging.Logger,
        aggregate_only: bool = False,
    ) -> None:
        self.store = store
        self.keys = keys
        self.num_nodes = max(1, num_nodes)
        self.world_size = world_size
        self.clock = clock
        self.log = logger
        self.aggregate_only = aggregate_only
        self.tracker = StalenessTracker(stale_after, clock())
        self.nodes: dict[int, NodeReport] = {}
        self.ranks: dict[int, RankReport] = {}
        self.no_cuda_ranks: set[int] = set()
        self.present: set[str] = set()
        self._hostnames: dict[int, str] = {}

    @property
    def hostnames(self) -> dict[int, str]:
        """Node rank -> host name, for the nodes whose meta record has been read (a copy: safe from any thread)."""
        return dict(self._hostnames)

    def _exists(self, key: str) -> bool:
        if key in self.present:
            return True
        if self.store.check([key]):
            self.present.add(key)
            return True
        return False

    def _get_many(self, keys: list[str]) -> list[bytes]:
        """Values of keys known to exist: one round trip when the store has multi_get."""
        multi_get = getattr(self.store, "multi_get", None)
        if multi_get is not None and keys:
            return list(multi_get(keys))
        return [self.store.get(k) for k in keys]

    def _learn_meta(self) -> None:
        for n in range(self.num_nodes):
            key = self.keys.node_meta(n)
            if n not in self.nodes and self._exists(key):
                host, gpus = decode_node_meta(self._get_many([key])[0])
                self.nodes[n] = NodeReport(n, host, gpus)
                if host:
                    self._hostnames[n] = host
                    self.log.debug("system metrics: node %d is %s (%d GPUs)", n, host, len(gpus))
        for r in range(self.world_size):
            key = self.keys.rank_meta(r)
            if r in self.ranks or r in self.no_cuda_ranks or not self._exists(key):
                continue
            meta = decode_rank_meta(self._get_many([key])[0])
            if meta.cuda_device is None:
                self.no_cuda_ranks.add(r)
            else:
                self.ranks[r] = RankReport(r, meta.node, meta.local_world_size, meta.cuda_device, meta.uuid, meta.pci)

    def collect(self) -> dict[str, float] | None:
        """The row of what is fresh now, or None while nothing has been heard and the grace period lasts."""
        self._learn_meta()
        sources: list[tuple[str, int, str]] = []
        for n in self.nodes:
            if self._exists(self.keys.node_sample(n)):
                sources.append(("node", n, self.keys.node_sample(n)))
        for r in self.ranks:
            if self._exists(self.keys.rank_sample(r)):
                sources.append(("rank", r, self.keys.rank_sample(r)))
        values = self._get_many([k for _, _, k in sources])
        now = self.clock()
        for (kind, ident, _), raw in zip(sources, values):
            if kind == "node":
                seq, _, figures, gpu_figures = decode_node_sample(raw)
                self.nodes[ident].figures = figures
                self.nodes[ident].gpu_figures = gpu_figures
            else:
                seq, _, figures = decode_rank_sample(raw)
                self.ranks[ident].figures = figures
            self.tracker.observe((kind, ident), seq, now)
        fresh: dict[int, NodeReport] = {}
        stale_nodes: list[int] = []
        for n in range(self.num_nodes):
            if self.tracker.is_stale(("node", n), now):
                stale_nodes.append(n)
            elif self.tracker.seen(("node", n)):
                fresh[n] = self.nodes[n]
        fresh_ranks: list[RankReport] = []
        stale_ranks = 0
        for r, report in sorted(self.ranks.items()):
            if not self.tracker.seen(("rank", r)):
                continue
            if self.tracker.is_stale(("rank", r), now):
                stale_ranks += 1
            else:
                fresh_ranks.append(report)
        if not fresh and not stale_nodes:
            return None  # nothing heard yet and still within the grace period
        return assemble_row(fresh, fresh_ranks, stale_nodes=stale_nodes, stale_ranks=stale_ranks,
                            multi_node=self.num_nodes > 1, aggregate_only=self.aggregate_only)
