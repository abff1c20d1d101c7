"""One ``log_metrics`` call across ranks: check the input, pack one row, reduce every rank's row in one collective.

``metrics.py`` holds the pure packing and reduction; this module runs them over ``Collectives``. A bad input on one
rank must never make that rank skip the collective (the others would wait for it until the timeout): ``prepare``
turns every input error into a flagged row that still travels, and every rank raises the same error after the
collective, naming the ranks at fault.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdxl_dist_log.collectives import Collectives
from sdxl_dist_log.errors import MetricKeyMismatchError, MetricValueError
from sdxl_dist_log.exchange import Steps, decided_at_primary
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.hierarchy import call_rounds
from sdxl_dist_log.metric_stage import DIFFERING, INVALID, V_CODE, MetricStage
from sdxl_dist_log.metrics import (
    MetricPlan,
    bad_value_error,
    describe_missing,
    pack_row,
    pack_values_deferred,
    reduce_union,
    resolve_reduce,
)
from sdxl_dist_log.straggler import SECTION_COUNT, SECTION_HEADER, SectionTail
from sdxl_dist_log.topology import Topology

NO_SECTIONS = np.zeros(SECTION_HEADER)

_PLAN_CACHE_SIZE = 256


@dataclass(frozen=True)
class PreparedMetrics:
    """One rank's side of a call, ready for the collective.

    Attributes:
        plan: the sorted keys and their reduce ops.
        values: gives the float64 values (waiting for a device copy when one is in flight); None when ``error``.
        error: what was wrong with this rank's input, or None.
        sections: this rank's section times since the last call, or None.
    """

    plan: MetricPlan
    values: Callable[[], np.ndarray] | None
    error: MetricValueError | None
    sections: SectionTail | None = None

    def failed(self, error: MetricValueError) -> PreparedMetrics:
        """The same call, failed: the flagged row still travels so that no rank waits for this one."""
        return PreparedMetrics(self.plan, None, self.error or error, self.sections)


@dataclass(frozen=True)
class ReducedCall:
    """What a ``log_metrics`` call gives every rank.

    Attributes:
        values: the reduced values, unprefixed (the same on every rank).
        section_times: (ranks, sections) times by rank, sections in name order, where the call was decided (the
            primary; on one node every rank), when every rank timed the same sections; else None.
    """

    values: dict[str, float]
    section_times: np.ndarray | None = None


class MetricReducer:
    """Reduces the metrics of one call over every rank, in one collective in the steady state.

    Args:
        collectives: the logger's collectives (the identity without a process group).
        metric_reduce: default reduce op per key or glob (``WandbConfig.metric_reduce``).
        primary_rank: whose value ``local`` keys take.
        strict_keys: raise on every rank when ranks pass different keys, instead of logging the union.
        warn: reports a differing-keys union (once per key set); called on every rank.
    """

    def __init__(self, collectives: Collectives, *, metric_reduce: Mapping[str, str], primary_rank: int,
                 strict_keys: bool, warn: Callable[[str, str], None]) -> None:
        self._collectives = collectives
        self._metric_reduce = dict(metric_reduce)
        self._primary_rank = primary_rank
        self._strict_keys = strict_keys
        self._warn = warn
        self._plans: dict[Any, MetricPlan] = {}
        self._stages: dict[int, MetricStage] = {}
        self._last_keys: tuple[tuple[Any, ...], tuple[str, ...]] = ((), ())

    def prepare(self, metrics: Mapping[str, Any], reduce: str | Mapping[str, str] | None, *,
                non_blocking: bool, sections: SectionTail | None = None) -> PreparedMetrics:
        """Check and pack this rank's values; an invalid input becomes ``error``, never an exception here.

        Args:
            non_blocking: start device-to-host copies without waiting (``values()`` waits, on whichever thread).
            sections: this rank's section times to send along (``StragglerView.take``).
        """
        prepared = self._prepare(metrics, reduce, non_blocking)
        return prepared if sections is None else dataclasses.replace(prepared, sections=sections)

    def _prepare(self, metrics: Mapping[str, Any], reduce: str | Mapping[str, str] | None,
                 non_blocking: bool) -> PreparedMetrics:
        try:
            if not isinstance(metrics, Mapping):
                raise MetricValueError(f"metrics must be a mapping of key -> value, not {type(metrics).__name__}")
            keys = self._sorted_keys(metrics)
            plan = self._plan(keys, reduce)
            return PreparedMetrics(plan, pack_values_deferred(metrics, keys, non_blocking=non_blocking), None)
        except Exception as exc:  # any failure must still reach the collective as a flagged row
            keys = tuple(sorted({str(k) for k in metrics})) if isinstance(metrics, Mapping) else ()
            error = exc if isinstance(exc, MetricValueError) else bad_value_error(metrics, keys, exc)
            return PreparedMetrics(MetricPlan(keys, resolve_reduce(keys, None)), None, error)

    def _sorted_keys(self, metrics: Mapping[str, Any]) -> tuple[str, ...]:
        """The keys, checked and sorted; a loop passing the same keys in the same order as last time skips both."""
        given = tuple(metrics)
        if given == self._last_keys[0]:
            return self._last_keys[1]
        for key in given:
            if not isinstance(key, str) or not key:
                raise MetricValueError(f"metric key {key!r} is not a non-empty string")
        keys = tuple(sorted(given))
        self._last_keys = (given, keys)
        return keys

    def _plan(self, keys: tuple[str, ...], reduce: str | Mapping[str, str] | None) -> MetricPlan:
        """The call's keys and ops; cached per key set, since training loops log the same keys every step."""
        cache_key = (keys, reduce if reduce is None or isinstance(reduce, str) else tuple(sorted(reduce.items())))
        plan = self._plans.get(cache_key)
        if plan is None:
            merged = {**self._metric_reduce, **(reduce if isinstance(reduce, Mapping) else {})}
            plan = MetricPlan(keys, resolve_reduce(keys, reduce if isinstance(reduce, str) else merged))
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[cache_key] = plan
        return plan

    def _stage(self, plan: MetricPlan, world_size: int, sections: int) -> MetricStage:
        """The call's stage, kept per plan (plans are kept per key set, so the same object comes back each step)."""
        stage = self._stages.get(id(plan))
        if stage is None or stage.plan is not plan or (stage.world_size, stage.sections) != (world_size, sections):
            if len(self._stages) >= _PLAN_CACHE_SIZE:
                self._stages.clear()
            stage = self._stages[id(plan)] = MetricStage(plan, world_size, sections)
        return stage

    def reduce(self, prepared: PreparedMetrics, call: CallInfo) -> ReducedCall:
        """Reduce this call over every rank (unprefixed keys). Collective: every rank calls it for every call.

        Raises:
            MetricValueError: some rank's input was invalid (every rank raises, naming the ranks).
            MetricKeyMismatchError: ranks passed different keys with ``strict_keys``, or different ops for a key.
            CollectiveError: the collective failed (timeout, a rank out of step or gone).
        """
        return self._collectives.run(self.steps(prepared, call), call)

    def steps(self, prepared: PreparedMetrics, call: CallInfo) -> Steps:
        """``reduce`` as the steps ``Collectives.run`` drives (a simulated job drives the same ones)."""
        values = prepared.values() if prepared.values is not None else None
        plan = prepared.plan
        topology = self._collectives.topology
        tail = prepared.sections.values if prepared.sections is not None else NO_SECTIONS
        stage = self._stage(plan, topology.world_size, int(tail[SECTION_COUNT]))
        row = pack_row(plan, values, tail)
        outcome = yield from call_rounds(topology, row, call, stage, self._collectives.state)
        result = outcome.stage
        verdict = result[V_CODE]
        if verdict == INVALID:
            named, count = stage.error_ranks(result)
            more = f" and {count - len(named)} more" if count > len(named) else ""
            own = f": {prepared.error}" if prepared.error is not None else ""
            raise MetricValueError(f"{call}: ranks {named}{more} passed invalid metric values{own}; nothing was logged")
        if verdict == DIFFERING:
            return ReducedCall((yield from self._differing_keys(plan, values, call, topology)))
        per_rank = None
        if stage.per_rank_count:
            per_rank = yield from stage.share_per_rank(topology, outcome.block)
        return ReducedCall(stage.values(result, per_rank), stage.section_times(result, outcome.block))

    def _differing_keys(self, plan: MetricPlan, values: np.ndarray | None, call: CallInfo,
                        topology: Topology) -> Steps:
        mine = [(k, op.value, float(v)) for k, op, v in zip(plan.keys, plan.ops, values if values is not None else [])]
        primary = self._primary_rank

        def union(entries: list[Any]) -> tuple[str, Any]:
            try:
                return "ok", reduce_union(entries, primary_rank=primary)
            except MetricKeyMismatchError as exc:  # ranks disagree on a key's op: every rank raises it
                return "conflict", str(exc)

        kind, outcome = yield from decided_at_primary(topology, mine, union)
        if kind == "conflict":
            raise MetricKeyMismatchError(outcome)
        reduced, missing = outcome
        if self._strict_keys:
            raise MetricKeyMismatchError(
                f"{call}: ranks passed different metric keys (strict_keys=True): {describe_missing(missing)}", missing
            )
        self._warn(f"{call}: ranks passed different metric keys; logged the union, each key reduced over the ranks "
                   f"that passed it: {describe_missing(missing)}", f"keys:{sorted(missing)}")
        return reduced
