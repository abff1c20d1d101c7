"""One ``log_metrics`` call across ranks: check the input, pack one row, reduce every rank's row in one collective.

``metrics.py`` holds the pure packing and reduction; this module runs them over ``Collectives``. A bad input on one
rank must never make that rank skip the collective (the others would wait for it until the timeout): ``prepare``
turns every input error into a flagged row that still travels, and every rank raises the same error after the
collective, naming the ranks at fault.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdxl_dist_log.collectives import Collectives
from sdxl_dist_log.errors import MetricKeyMismatchError, MetricValueError
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.metrics import (
    ERROR_FLAG,
    FINGERPRINT,
    KEY_COUNT,
    MetricPlan,
    bad_value_error,
    describe_missing,
    pack_row,
    pack_values_deferred,
    reduce_rows,
    reduce_union,
    resolve_reduce,
)

_PLAN_CACHE_SIZE = 256


@dataclass(frozen=True)
class PreparedMetrics:
    """One rank's side of a call, ready for the collective.

    Attributes:
        plan: the sorted keys and their reduce ops.
        values: gives the float64 values (waiting for a device copy when one is in flight); None when ``error``.
        error: what was wrong with this rank's input, or None.
    """

    plan: MetricPlan
    values: Callable[[], np.ndarray] | None
    error: MetricValueError | None

    def failed(self, error: MetricValueError) -> PreparedMetrics:
        """The same call, failed: the flagged row still travels so that no rank waits for this one."""
        return PreparedMetrics(self.plan, None, self.error or error)


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

    def prepare(self, metrics: Mapping[str, Any], reduce: str | Mapping[str, str] | None, *,
                non_blocking: bool) -> PreparedMetrics:
        """Check and pack this rank's values; an invalid input becomes ``error``, never an exception here.

        Args:
            non_blocking: start device-to-host copies without waiting (``values()`` waits, on whichever thread).
        """
        try:
            if not isinstance(metrics, Mapping):
                raise MetricValueError(f"metrics must be a mapping of key -> value, not {type(metrics).__name__}")
            for key in metrics:
                if not isinstance(key, str) or not key:
                    raise MetricValueError(f"metric key {key!r} is not a non-empty string")
            keys = tuple(sorted(metrics))
            plan = self._plan(keys, reduce)
            return PreparedMetrics(plan, pack_values_deferred(metrics, keys, non_blocking=non_blocking), None)
        except Exception as exc:  # any failure must still reach the collective as a flagged row
            keys = tuple(sorted({str(k) for k in metrics})) if isinstance(metrics, Mapping) else ()
            error = exc if isinstance(exc, MetricValueError) else bad_value_error(metrics, keys, exc)
            return PreparedMetrics(MetricPlan(keys, resolve_reduce(keys, None)), None, error)

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

    def reduce(self, prepared: PreparedMetrics, call: CallInfo) -> dict[str, float]:
        """Reduce this call over every rank (unprefixed keys). Collective: every rank calls it for every call.

        Raises:
            MetricValueError: some rank's input was invalid (every rank raises, naming the ranks).
            MetricKeyMismatchError: ranks passed different keys with ``strict_keys``, or different ops for a key.
            CollectiveError: the collective failed (timeout, a rank out of step or gone).
        """
        values = prepared.values() if prepared.values is not None else None
        plan = prepared.plan
        rows = self._collectives.all_gather_rows(pack_row(plan, values), call)
        if np.any(rows[:, ERROR_FLAG] != 0):
            bad = [r for r in range(len(rows)) if rows[r, ERROR_FLAG] != 0]
            own = f": {prepared.error}" if prepared.error is not None else ""
            raise MetricValueError(f"{call}: ranks {bad} passed invalid metric values{own}; nothing was logged")
        if np.all(rows[:, FINGERPRINT] == rows[0, FINGERPRINT]) and np.all(rows[:, KEY_COUNT] == rows[0, KEY_COUNT]):
            return reduce_rows(plan, rows, primary_rank=self._primary_rank)
        return self._reduce_differing_keys(plan, values, call)

    def _reduce_differing_keys(self, plan: MetricPlan, values: np.ndarray | None, call: CallInfo) -> dict[str, float]:
        mine = [(k, op.value, float(v)) for k, op, v in zip(plan.keys, plan.ops, values if values is not None else [])]
        entries = self._collectives.all_gather_object(mine, call)
        reduced, missing = reduce_union(entries, primary_rank=self._primary_rank)
        if self._strict_keys:
            raise MetricKeyMismatchError(
                f"{call}: ranks passed different metric keys (strict_keys=True): {describe_missing(missing)}", missing
            )
        self._warn(f"{call}: ranks passed different metric keys; logged the union, each key reduced over the ranks "
                   f"that passed it: {describe_missing(missing)}", f"keys:{sorted(missing)}")
        return reduced
