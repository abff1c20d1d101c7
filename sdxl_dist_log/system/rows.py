"""One row from the latest reports: key naming, per-GPU and per-node keys, cluster aggregates, staleness. Pure.

See ``docs/system_metrics.md`` for the keys of the rows and the aggregates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdxl_dist_log.system.gpus import GpuIdentity, match_gpu

KEY_ROOT = "system"


def node_figure_key(figure: str, node: int, *, multi_node: bool) -> str:
    """Key of a node-wide figure: ``system/cpu/percent`` on one node, ``system/node3/cpu/percent`` on several."""
    return f"{KEY_ROOT}/node{node}/{figure}" if multi_node else f"{KEY_ROOT}/{figure}"


def entity_key(label: str, figure: str, node: int, *, multi_node: bool) -> str:
    """Key of a GPU figure: ``system/gpu0/utilization`` on one node, ``system/node3/gpu5/utilization`` on several.

    ``label`` is ``gpu{nvml_index}``, or ``rank{r}``/``gpu{cuda_index}`` for a rank whose device NVML cannot name.
    """
    return node_figure_key(f"{label}/{figure}", node, multi_node=multi_node)


def aggregate_figures(entities: Iterable[Mapping[str, float]], prefix: str) -> dict[str, float]:
    """Cluster-wide ``{prefix}/{figure}/min|mean|max`` over the entities that have each figure.

    Example:
        >>> aggregate_figures([{"u": 0.0}, {"u": 10.0}], "system/all/gpu")
        {'system/all/gpu/u/min': 0.0, 'system/all/gpu/u/mean': 5.0, 'system/all/gpu/u/max': 10.0}
    """
    columns: dict[str, list[float]] = {}
    for entity in entities:
        for figure, value in entity.items():
            if value is not None and math.isfinite(value):
                columns.setdefault(figure, []).append(float(value))
    out: dict[str, float] = {}
    for figure in sorted(columns):
        values = columns[figure]
        out[f"{prefix}/{figure}/min"] = min(values)
        out[f"{prefix}/{figure}/mean"] = math.fsum(values) / len(values)
        out[f"{prefix}/{figure}/max"] = max(values)
    return out


@dataclass
class NodeReport:
    """What the primary knows of a node: meta (once) and its latest sample."""

    node: int
    host: str | None = None
    gpus: list[GpuIdentity] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    gpu_figures: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class RankReport:
    """What the primary knows of a rank with a CUDA device: meta (once) and its latest torch.cuda sample."""

    rank: int
    node: int
    local_world_size: int = 1
    cuda_device: int | None = None
    uuid: str | None = None
    pci: str | None = None
    figures: dict[str, float] = field(default_factory=dict)


def rank_label(rank: RankReport, node: NodeReport | None) -> tuple[str, int | None]:
    """(label, NVML index) of a rank's device: ``gpu{nvml}`` by UUID/PCI match, else a fallback that cannot collide.

    Fallback: ``gpu{cuda_device}`` when the rank is alone on its node, else ``rank{r}`` (several ranks may all call
    their device ``cuda:0`` under per-rank CUDA_VISIBLE_DEVICES).
    """
    if node is not None:
        index = match_gpu(rank.uuid, rank.pci, node.gpus)
        if index is not None:
            return f"gpu{index}", index
    if rank.local_world_size <= 1 and rank.cuda_device is not None:
        return f"gpu{rank.cuda_device}", None
    return f"rank{rank.rank}", None


def assemble_row(
    nodes: Mapping[int, NodeReport],
    ranks: Iterable[RankReport],
    *,
    stale_nodes: Iterable[int] = (),
    stale_ranks: int = 0,
    multi_node: bool,
    aggregate_only: bool = False,
) -> dict[str, float]:
    """One row from the fresh reports: per-GPU and per-node keys, cluster aggregates, staleness.

    Args:
        nodes: fresh node reports (stale nodes already left out).
        ranks: fresh rank reports; those of nodes not in ``nodes`` are left out.
        stale_nodes: nodes to mark ``system/node{n}/stale = 1.0``.
        stale_ranks: count for ``system/stale_ranks``.
        multi_node: put the node in per-node keys.
        aggregate_only: emit only ``system/all/...`` and staleness keys. Otherwise aggregates appear where they
            summarize: GPU aggregates from two GPUs on, node aggregates from two nodes on.

    Returns:
        The row. GPUs of a node are restricted to those the job's ranks use when any rank's device matched one.
        Ranks sharing a GPU have their torch.cuda figures summed.
    """
    entities: dict[tuple[int, str], dict[str, float]] = {}
    used: dict[int, set[int]] = {}
    per_rank: list[tuple[int, str, dict[str, float]]] = []
    for rank in ranks:
        if rank.node not in nodes:
            continue
        label, index = rank_label(rank, nodes.get(rank.node))
        if index is not None:
            used.setdefault(rank.node, set()).add(index)
        per_rank.append((rank.node, label, rank.figures))
    for n, report in sorted(nodes.items()):
        keep = used.get(n)
        for index, figures in sorted(report.gpu_figures.items()):
            if keep is None or index in keep:
                entities[(n, f"gpu{index}")] = dict(figures)
    for n, label, figures in per_rank:
        target = entities.setdefault((n, label), {})
        for figure, value in figures.items():
            target[figure] = target.get(figure, 0.0) + value
    row: dict[str, float] = {}
    if not aggregate_only:
        for n, report in sorted(nodes.items()):
            for figure, value in report.figures.items():
                row[node_figure_key(figure, n, multi_node=multi_node)] = value
        for (n, label), figures in sorted(entities.items()):
            for figure, value in figures.items():
                row[entity_key(label, figure, n, multi_node=multi_node)] = value
    # an aggregate of one thing repeats it: summarize GPUs from two on, nodes from two on (always if it is all we log)
    if len(entities) > 1 or aggregate_only:
        row.update(aggregate_figures(entities.values(), f"{KEY_ROOT}/all/gpu"))
    if len(nodes) > 1 or aggregate_only:
        row.update(aggregate_figures((r.figures for _, r in sorted(nodes.items())), f"{KEY_ROOT}/all"))
    row[f"{KEY_ROOT}/all/gpu/count"] = float(len(entities))
    row[f"{KEY_ROOT}/all/node/count"] = float(len(nodes))
    stale = sorted(set(stale_nodes))
    for n in stale:
        row[f"{KEY_ROOT}/node{n}/stale"] = 1.0
    row[f"{KEY_ROOT}/stale_nodes"] = float(len(stale))
    row[f"{KEY_ROOT}/stale_ranks"] = float(stale_ranks)
    return row


class StalenessTracker:
    """Judges staleness by "the sequence number did not advance for ``stale_after`` seconds of my clock".

    Writers' wall clocks are never compared with the reader's, so clock skew between nodes does not matter.
    A source never seen counts as stale once ``stale_after`` has passed since ``started``.
    """

    def __init__(self, stale_after: float, started: float) -> None:
        self.stale_after = stale_after
        self.started = started
        self._last: dict[Any, tuple[int, float]] = {}

    def observe(self, source: Any, seq: int, now: float) -> None:
        """Record that ``source`` showed sequence ``seq`` at reader time ``now``."""
        last = self._last.get(source)
        if last is None or last[0] != seq:
            self._last[source] = (seq, now)

    def seen(self, source: Any) -> bool:
        return source in self._last

    def is_stale(self, source: Any, now: float) -> bool:
        last = self._last.get(source)
        since = last[1] if last is not None else self.started
        return now - since > self.stale_after
