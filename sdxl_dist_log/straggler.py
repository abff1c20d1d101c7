"""The straggler view: which rank holds the job back, per named section of the step. Pure, no torch.distributed.

In synchronous data-parallel training the slowest rank sets every rank's pace. Ranks time named sections of their
step (``WandbLogger.section``: data loading, forward/backward, optimizer ...); ``SectionTimer`` adds up each section's
time on this rank between two ``log_metrics`` calls. The totals travel inside that call's existing collectives (the
tail of the metrics row, and the per-rank block of the aggregates: no collective of their own), and the rank that
decides the call (the primary) turns them into, per section:

- ``straggler/<section>/score/rank<r>``: the rank's time / the median rank's time (1.0 = typical, 2.0 = twice as long);
- ``straggler/<section>/slowest_rank``: the rank with the most time (the lowest such rank on ties);
- ``straggler/<section>/spread``: slowest / fastest time.

``StragglerWatch`` warns when the same rank has been the slowest of a section, at a score of at least the threshold,
for ``patience`` logging intervals in a row, naming its host and GPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.errors import MetricValueError
from sdxl_dist_log.identity import CONFIG_SECTION
from sdxl_dist_log.ranks import RankInfo

SECTION_COUNT, SECTION_FINGERPRINT = 0, 1
SECTION_HEADER = 2
"""The section tail of a metrics row: how many sections, a fingerprint of their names, then their times."""


def names_fingerprint(names: Sequence[str]) -> int:
    """A 52-bit fingerprint of the section names (exact in float64); 0 for none."""
    if not names:
        return 0
    digest = hashlib.blake2b("\0".join(names).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 12


@dataclass(frozen=True)
class SectionTail:
    """What a metrics row carries of this rank's sections: ``values`` (``SECTION_HEADER`` values, then one time per
    section) and the sections' names, in the order of the times."""

    values: np.ndarray
    names: tuple[str, ...]


@dataclass
class SectionTimer:
    """This rank's time per named section since the last ``take``.

    Args:
        clock: seconds, monotonic (``time.perf_counter``; tests inject their own).
    """

    clock: Callable[[], float] = time.perf_counter
    _totals: dict[str, float] = field(default_factory=dict)
    _fingerprints: dict[tuple[str, ...], int] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self._totals[name] = self._totals.get(name, 0.0) + seconds

    def take(self) -> np.ndarray:
        """The tail this rank's next metrics row carries (``SECTION_HEADER`` values, then the times in name order),
        and start a new interval."""
        names = tuple(sorted(self._totals))
        fingerprint = self._fingerprints.get(names)
        if fingerprint is None:
            fingerprint = self._fingerprints.setdefault(names, names_fingerprint(names))
        tail = np.empty(SECTION_HEADER + len(names))
        tail[SECTION_COUNT], tail[SECTION_FINGERPRINT] = len(names), fingerprint
        tail[SECTION_HEADER:] = [self._totals[n] for n in names]
        self._totals = dict.fromkeys(names, 0.0)  # the names stay: a section not entered this interval took 0 s
        return tail

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._totals))


def straggler_keys(names: Sequence[str], times: np.ndarray) -> dict[str, float]:
    """The straggler view of one interval: per section, each rank's score, the slowest rank and the spread.

    Args:
        names: the sections, in the order of ``times``' columns.
        times: (ranks, sections) seconds, by rank.
    """
    out: dict[str, float] = {}
    for column, name in enumerate(names):
        seconds = times[:, column]
        median = float(np.median(seconds))
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = seconds / median if median > 0 else np.where(seconds > 0, np.inf, 1.0)
            fastest = float(seconds.min())
            spread = float(seconds.max()) / fastest if fastest > 0 else float("nan")
        for rank, score in enumerate(scores.tolist()):
            out[f"straggler/{name}/score/rank{rank}"] = score
        out[f"straggler/{name}/slowest_rank"] = int(np.argmax(seconds))
        out[f"straggler/{name}/spread"] = spread
    return out


class StragglerWatch:
    """Raises the alarm once a rank has stayed the slowest of a section, at a score of at least ``threshold``, for
    ``patience`` intervals in a row; once per such run of intervals.

    Args:
        threshold: the score (rank time / median) at which a rank counts as slow.
        patience: intervals in a row before the alarm.
        describe: rank -> "host h, GPU g", for the message.
    """

    def __init__(self, threshold: float, patience: int, describe: Callable[[int], str]) -> None:
        self.threshold = threshold
        self.patience = patience
        self._describe = describe
        self._runs: dict[str, tuple[int, int]] = {}  # section -> (rank, intervals in a row)

    def observe(self, names: Sequence[str], keys: Mapping[str, float]) -> list[str]:
        """Take one interval's ``straggler_keys``; returns the warnings it raises (usually none)."""
        warnings = []
        for name in names:
            rank = int(keys[f"straggler/{name}/slowest_rank"])
            score = keys[f"straggler/{name}/score/rank{rank}"]
            if score < self.threshold:
                self._runs.pop(name, None)
                continue
            previous, count = self._runs.get(name, (rank, 0))
            count = count + 1 if previous == rank else 1
            self._runs[name] = (rank, count)
            if count == self.patience:
                warnings.append(
                    f"straggler: rank {rank} ({self._describe(rank)}) has been the slowest in section {name!r} for "
                    f"{count} logging intervals in a row, {score:.2f}x the median rank's time (threshold "
                    f"{self.threshold:g}); the other ranks wait for it")
        return warnings


class RankDirectory:
    """Where each rank runs (host, GPU), published once per rank through the store and read where it is needed.

    Args:
        store: the process group's key-value store.
        namespace: the logger's key prefix.
        world_size: ranks in the job.
    """

    def __init__(self, store: Any, namespace: str, world_size: int) -> None:
        self._store = store
        self._prefix = f"{namespace}/rank"
        self._world_size = world_size
        self._known: dict[int, dict[str, Any]] = {}

    def publish(self, rank: int, record: Mapping[str, Any]) -> None:
        """Make this rank's record known: through the store, or directly in a world of one."""
        if self._world_size == 1:
            self._known = {rank: dict(record)}
            return
        self._store.set(f"{self._prefix}/{rank}", json.dumps(dict(record)))

    def everyone(self) -> dict[int, dict[str, Any]]:
        """Every rank's record (they published at construction, before any call); read once. What is known so far
        when the store cannot be read (its host gone): naming hosts is not worth failing a logging call for."""
        if len(self._known) < self._world_size:
            keys = [f"{self._prefix}/{r}" for r in range(self._world_size)]
            try:
                raw = self._store.multi_get(keys) if hasattr(self._store, "multi_get") else [self._store.get(k)
                                                                                           for k in keys]
                self._known = {r: json.loads(value) for r, value in enumerate(raw)}
            except Exception:  # DistStoreError, a lost connection, a record cut short
                return dict(self._known)
        return self._known

    def describe(self, rank: int) -> str:
        record = self.everyone().get(rank, {})
        gpu = record.get("gpu")
        return f"host {record.get('host', '?')}, " + ("no GPU" if gpu is None else f"GPU {gpu}")


def current_gpu() -> int | None:
    """This process's CUDA device, if it already uses one (never initializes CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return int(torch.cuda.current_device())


class StragglerView:
    """This rank's side of the straggler view: its section timer, and on the primary the keys and the alarm.

    Args:
        timer: this rank's section times.
        directory: every rank's host and GPU (this rank publishes its own here when ``publish`` is given).
        watch: the alarm (used on the rank that decides calls).
        record_ranks: called once with ``{rank: {"host", "gpu"}}`` for the run config.
        warn: receives each alarm.

    Attributes:
        primary: this rank adds the straggler keys to its rows (the rank that owns the run).
    """

    def __init__(self, timer: SectionTimer, directory: RankDirectory, watch: StragglerWatch,
                 record_ranks: Callable[[dict[str, Any]], None], warn: Callable[[str], None]) -> None:
        self.timer = timer
        self._directory = directory
        self._watch = watch
        self._record_ranks = record_ranks
        self._warn = warn
        self._recorded = False
        self.primary = True

    @classmethod
    def start(cls, collectives: Any, rank: RankInfo, config: WandbConfig, *, primary: bool,
              clock: Callable[[], float] | None, merge_config: Callable[[dict[str, Any]], None],
              warn: Callable[[str], None]) -> StragglerView:
        """Publish where this rank runs (host, current GPU) through the store of ``collectives`` (a
        ``Collectives``) and start timing sections; ``primary``: this rank adds the straggler keys to its rows;
        ``merge_config`` merges into the run config (the ranks go under ``sdxl_dist_log.ranks``)."""
        directory = RankDirectory(collectives.store, collectives.namespace, collectives.topology.world_size)
        directory.publish(rank.rank if collectives.active else 0, {"host": rank.hostname, "gpu": current_gpu()})
        watch = StragglerWatch(config.straggler_threshold, config.straggler_patience, directory.describe)
        view = cls(SectionTimer(clock or time.perf_counter), directory, watch,
                   lambda ranks: merge_config({CONFIG_SECTION: {"ranks": ranks}}), warn)
        view.primary = primary
        return view

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Add the time spent inside to section ``name`` (``WandbLogger.section``).

        Raises:
            MetricValueError: ``name`` is not a non-empty string without "/".
        """
        if not isinstance(name, str) or not name or "/" in name:
            raise MetricValueError(f"section name {name!r} must be a non-empty string without '/'")
        start = self.timer.clock()
        try:
            yield
        finally:
            self.timer.add(name, self.timer.clock() - start)

    def take(self) -> SectionTail | None:
        """This interval's section times, for the next metrics row; None before any section was timed."""
        names = self.timer.names
        return SectionTail(self.timer.take(), names) if names else None

    def row(self, logged: dict[str, float], tail: SectionTail | None, times: np.ndarray | None) -> dict[str, float]:
        """The row to log: ``logged``, plus (on the primary) the straggler keys when every rank's times are here."""
        if not self.primary or times is None or tail is None:
            return logged
        return {**logged, **self.keys(tail.names, times)}

    def keys(self, names: Sequence[str], times: np.ndarray) -> dict[str, float]:
        """One interval's keys (``straggler_keys``); records the ranks once and raises any alarm."""
        keys = straggler_keys(names, times)
        if not self._recorded:
            self._record_ranks({str(r): record for r, record in self._directory.everyone().items()})
            self._recorded = True
        for warning in self._watch.observe(names, keys):
            self._warn(warning)
        return keys
