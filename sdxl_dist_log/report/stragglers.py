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

from sdxl_dist_log.identity import recorded
from sdxl_dist_log.report.columns import STRAGGLER_PREFIX, Column

MIN_SPREAD = 1.05
"""An interval names its slowest rank when the slowest took at least this many times the fastest's time."""
_SCORE_RE = re.compile(r"^straggler/(?P<section>.+)/score/rank(?P<rank>\d+)$")


@dataclass
class SectionScores:
    """One timed section's straggler figures."""

    name: str
    scores: dict[int, Column] = field(default_factory=dict)
    """Each rank's score column, by rank."""
    slowest: Column | None = None
    spread: Column | None = None

    def slowest_counts(self, min_spread: float = MIN_SPREAD) -> tuple[list[tuple[int, int]], int]:
        """Who was the slowest how often: ``([(rank, intervals), ...] most often first, intervals in all)``.

        An interval names its slowest rank only when the slowest took at least ``min_spread`` times the fastest's
        time: when every rank took the same time, ``slowest_rank`` is rank 0 (the lowest on ties), which says
        nothing. The slowest rank and the spread come from their keys, else from the scores.
        """
        by_step: dict[float, tuple[int, float]] = {}  # step -> (slowest rank, spread)
        if self.slowest is not None and self.spread is not None and len(self.slowest.values):
            spreads = dict(zip(self.spread.steps.tolist(), self.spread.values.tolist()))
            for step, rank in zip(self.slowest.steps.tolist(), self.slowest.values.tolist()):
                if np.isfinite(rank) and step in spreads:
                    by_step[step] = (int(rank), spreads[step])
        else:
            scores: dict[float, list[tuple[float, int]]] = {}
            for rank, column in self.scores.items():
                for step, score in zip(column.steps.tolist(), column.values.tolist()):
                    if np.isfinite(score):
                        scores.setdefault(step, []).append((score, rank))
            for step, ranked in scores.items():
                (low, _), (high, rank) = min(ranked), max(ranked, key=lambda item: (item[0], -item[1]))
                by_step[step] = (rank, high / low if low > 0 else float("inf"))
        counts = Counter(rank for rank, spread in by_step.values() if spread >= min_spread)
        return sorted(counts.items(), key=lambda item: (-item[1], item[0])), len(by_step)

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
    ranks = recorded(config, "ranks")
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
