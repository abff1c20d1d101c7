"""The straggler view's data: per-section scores of every rank over the steps, and who was slowest. Pure.

The logger writes, per timed section of the step (``data``, ``forward_backward``, ...):

* ``straggler/<section>/score/rank<r>``: rank r's section time divided by the median over ranks (1.0 = typical,
  2.0 = twice as slow as the typical rank);
* ``straggler/<section>/slowest_rank``: the rank with the longest time;
* ``straggler/<section>/spread``: slowest time / fastest time.

The run's config may name each rank's place: ``config["sdxl_dist_log"]["ranks"]`` maps a rank (``"3"`` or
``"rank3"``) to ``{"host": ..., "gpu": ...}``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdxl_dist_log.identity import CONFIG_SECTION
from sdxl_dist_log.report.columns import STRAGGLER_PREFIX, Column

_SCORE_RE = re.compile(r"^straggler/(?P<section>.+)/score/rank(?P<rank>\d+)$")


@dataclass
class SectionScores:
    """One timed section's straggler figures."""

    name: str
    scores: dict[int, Column] = field(default_factory=dict)
    """Each rank's score column, by rank."""
    slowest: Column | None = None
    spread: Column | None = None

    def slowest_counts(self) -> list[tuple[int, int]]:
        """``(rank, times it was the slowest)``, most often first: from ``slowest_rank``, else from the scores."""
        if self.slowest is not None and len(self.slowest.values):
            counts = Counter(int(v) for v in self.slowest.values if np.isfinite(v))
        else:
            counts = Counter()
            by_step: dict[float, tuple[float, int]] = {}
            for rank, column in self.scores.items():
                for step, score in zip(column.steps, column.values):
                    if np.isfinite(score) and (step not in by_step or score > by_step[step][0]):
                        by_step[step] = (score, rank)
            counts.update(rank for _, rank in by_step.values())
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    def median_score(self, rank: int) -> float | None:
        """The rank's median score over the run, or None without scores."""
        column = self.scores.get(rank)
        if column is None:
            return None
        values = column.values[np.isfinite(column.values)]
        return float(np.median(values)) if len(values) else None


def straggler_sections(columns: Mapping[str, Column]) -> list[SectionScores]:
    """The sections that have straggler keys, sorted by name; empty when the run has none.

    Example:
        >>> col = Column(np.array([1.0]), np.array([0.0]), np.array([1.2]))
        >>> [(s.name, sorted(s.scores)) for s in straggler_sections({"straggler/data/score/rank1": col})]
        [('data', [1])]
    """
    sections: dict[str, SectionScores] = {}
    for key, column in columns.items():
        if not key.startswith(STRAGGLER_PREFIX):
            continue
        match = _SCORE_RE.match(key)
        if match:
            sections.setdefault(match["section"], SectionScores(match["section"])).scores[int(match["rank"])] = column
            continue
        section, _, figure = key[len(STRAGGLER_PREFIX):].rpartition("/")
        if section and figure in ("slowest_rank", "spread"):
            setattr(sections.setdefault(section, SectionScores(section)), "slowest" if figure == "slowest_rank"
                    else "spread", column)
    return [sections[name] for name in sorted(sections)]


def rank_places(config: Mapping[str, Any]) -> dict[int, str]:
    """Each rank's place as ``host/gpuN`` (or the part known), from the config's ``sdxl_dist_log.ranks`` entry.

    Example:
        >>> rank_places({"sdxl_dist_log": {"ranks": {"0": {"host": "n1", "gpu": 3}, "rank1": {"host": "n2"}}}})
        {0: 'n1/gpu3', 1: 'n2'}
    """
    entry = config.get(CONFIG_SECTION)
    ranks = entry.get("ranks") if isinstance(entry, Mapping) else None
    if isinstance(ranks, list):
        ranks = dict(enumerate(ranks))
    if not isinstance(ranks, Mapping):
        return {}
    places: dict[int, str] = {}
    for rank, where in ranks.items():
        match = re.fullmatch(r"(?:rank)?(\d+)", str(rank))
        if match is None or not isinstance(where, Mapping):
            continue
        host = where.get("host")
        gpu = where.get("gpu")
        parts = [str(host)] if host not in (None, "") else []
        if gpu not in (None, ""):
            parts.append(f"gpu{gpu}" if isinstance(gpu, int) or str(gpu).isdigit() else str(gpu))
        if parts:
            places[int(match.group(1))] = "/".join(parts)
    return places
