"""What a ``log_metrics`` call computes between its collectives (``hierarchy.Stage``): pure numpy, no torch.

A node leader folds its ranks' rows into one aggregate of the same size as a row plus a small header: per key the
sum (``mean``/``sum``), the minimum or the maximum, as the key's op says; the lowest and highest key fingerprint and
key count (equal iff every rank passed the same keys and ops); how many ranks flagged an invalid value, and the
lowest of them. ``per_rank`` values travel in the per-rank block. The primary folds the leaders' aggregates the same
way and finishes: means divide by the number of ranks, ``local`` keys take the primary's own value.

Sums fold each node's ranks in rank order, then the nodes in node order, where a single all_gather folds all ranks in
rank order: the same values, grouped differently (docs/distributed.md says what that changes: the last bits of a
float sum, never NaN/inf, minima, maxima, per-rank or local values).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdxl_dist_log.exchange import Steps, broadcast_from_primary
from sdxl_dist_log.hierarchy import STAGE_HEADER
from sdxl_dist_log.metrics import ERROR_FLAG, FINGERPRINT, HEADER_SIZE, KEY_COUNT, MetricPlan, Reduce
from sdxl_dist_log.straggler import SECTION_FINGERPRINT, SECTION_HEADER
from sdxl_dist_log.topology import Topology

# The stage's header, in aggregates and in the result: key fingerprints and counts (min, max), flagged ranks, the
# section names' fingerprints (min, max), the result's verdict, then the lowest flagged ranks.
S_FP_MIN, S_FP_MAX, S_KC_MIN, S_KC_MAX, S_ERRORS, S_SEC_MIN, S_SEC_MAX, V_CODE = range(8)
S_ERROR_RANKS = 8
NAMED_ERROR_RANKS = STAGE_HEADER - S_ERROR_RANKS
"""How many flagged ranks an error names (the lowest); the message counts the rest."""
VALID, INVALID, DIFFERING = 0.0, 1.0, 2.0


class MetricStage:
    """Combine, merge and finalize the rows of one ``log_metrics`` call.

    Rows are ``pack_row``'s, then a section tail (``straggler.SECTION_HEADER`` values, then one time per section):
    section times travel in the per-rank block after the ``per_rank`` values.

    Args:
        plan: this rank's keys and ops (every rank's, when their fingerprints agree: the only case the values of an
            aggregate are used in).
        world_size: ranks in the call (the divisor of means).
        sections: how many section times this rank's rows carry.
    """

    def __init__(self, plan: MetricPlan, world_size: int, sections: int = 0) -> None:
        self.plan = plan
        self.world_size = world_size
        self.sections = sections
        columns = plan.op_columns
        self._sums = np.concatenate([columns.get(Reduce.MEAN, np.empty(0, np.int64)),
                                     columns.get(Reduce.SUM, np.empty(0, np.int64))])
        self._means = columns.get(Reduce.MEAN, np.empty(0, np.int64))
        self._mins = columns.get(Reduce.MIN, np.empty(0, np.int64))
        self._maxs = columns.get(Reduce.MAX, np.empty(0, np.int64))
        self._locals = columns.get(Reduce.LOCAL, np.empty(0, np.int64))
        self._per_rank = columns.get(Reduce.PER_RANK, np.empty(0, np.int64))
        # one op for every key (the common case): whole-block operations, no column indexing
        n = len(plan.keys)
        self._only = next((op for op in (Reduce.MEAN, Reduce.SUM, Reduce.MIN, Reduce.MAX)
                           if len(columns.get(op, ())) == n), None) if n else None

    def _values(self, rows: np.ndarray, start: int = HEADER_SIZE, n: int | None = None) -> np.ndarray:
        """The ``n`` (the key count) columns of ``rows`` from ``start``; NaN where a row was cut by the frame (the
        verdict then grows the frame before any of these is used)."""
        n = len(self.plan.keys) if n is None else n
        values = rows[:, start : start + n]
        if values.shape[1] < n:
            values = np.pad(values, ((0, 0), (0, n - values.shape[1])), constant_values=np.nan)
        return values

    def combine(self, payloads: np.ndarray, ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """A node's rows -> (aggregate, block of its ranks' ``per_rank`` values)."""
        out = np.full(STAGE_HEADER + payloads.shape[1], np.nan)
        keys = payloads[:, FINGERPRINT : KEY_COUNT + 1]
        out[S_FP_MIN : S_KC_MAX + 1 : 2] = keys.min(axis=0)
        out[S_FP_MAX : S_KC_MAX + 1 : 2] = keys.max(axis=0)
        flagged = np.flatnonzero(payloads[:, ERROR_FLAG])
        out[S_ERRORS] = len(flagged)
        if len(flagged):
            named = [ranks[i] for i in flagged[:NAMED_ERROR_RANKS]]
            out[S_ERROR_RANKS : S_ERROR_RANKS + len(named)] = named
        values = self._values(payloads)
        self._fold(values, out, payloads.shape[1])
        tail = self._values(payloads, HEADER_SIZE + len(self.plan.keys), SECTION_HEADER + self.sections)
        out[S_SEC_MIN], out[S_SEC_MAX] = tail[:, SECTION_FINGERPRINT].min(), tail[:, SECTION_FINGERPRINT].max()
        if not len(self._per_rank) and not self.sections:
            return out, values[:, :0]
        return out, np.hstack([values[:, self._per_rank], tail[:, SECTION_HEADER:]])

    def merge(self, aggregates: np.ndarray) -> np.ndarray:
        """Leaders' aggregates -> the job's."""
        if len(aggregates) == 1:
            return aggregates[0]
        out = np.full(aggregates.shape[1], np.nan)
        out[[S_FP_MIN, S_KC_MIN, S_SEC_MIN]] = aggregates[:, [S_FP_MIN, S_KC_MIN, S_SEC_MIN]].min(axis=0)
        out[[S_FP_MAX, S_KC_MAX, S_SEC_MAX]] = aggregates[:, [S_FP_MAX, S_KC_MAX, S_SEC_MAX]].max(axis=0)
        out[S_ERRORS] = aggregates[:, S_ERRORS].sum()
        named = aggregates[:, S_ERROR_RANKS:STAGE_HEADER].ravel()
        named = np.sort(named[~np.isnan(named)])[:NAMED_ERROR_RANKS]
        out[S_ERROR_RANKS : S_ERROR_RANKS + len(named)] = named
        self._fold(self._values(aggregates, STAGE_HEADER), out, aggregates.shape[1] - STAGE_HEADER)
        return out

    def _fold(self, rows: np.ndarray, into: np.ndarray, room: int) -> None:
        """Fold ``rows`` (rows, keys) column by column into ``into[STAGE_HEADER:]``, at most ``room`` of them."""
        kept = min(room, rows.shape[1])
        # reduce() without an initial value keeps -0.0 and the first NaN, and folds in row order, like np.sum did
        if self._only is not None:
            fold = np.minimum if self._only is Reduce.MIN else np.maximum if self._only is Reduce.MAX else np.add
            into[STAGE_HEADER : STAGE_HEADER + kept] = fold.reduce(rows[:, :kept], axis=0)
            return
        folded = np.full(rows.shape[1], np.nan)
        if len(self._sums):
            folded[self._sums] = np.add.reduce(rows[:, self._sums], axis=0)
        if len(self._mins):
            folded[self._mins] = np.minimum.reduce(rows[:, self._mins], axis=0)
        if len(self._maxs):
            folded[self._maxs] = np.maximum.reduce(rows[:, self._maxs], axis=0)
        into[STAGE_HEADER : STAGE_HEADER + kept] = folded[:kept]

    def finalize(self, aggregate: np.ndarray, block: np.ndarray, primary_payload: np.ndarray,
                 fits: bool) -> np.ndarray | None:
        """The job's aggregate -> the result: the verdict, the named ranks, the values (``per_rank`` ones stay in the
        block, on the rank that decided)."""
        out = np.full(len(aggregate), np.nan)
        out[: STAGE_HEADER] = aggregate[: STAGE_HEADER]
        if aggregate[S_ERRORS] > 0:
            out[V_CODE] = INVALID
        elif aggregate[S_FP_MIN] != aggregate[S_FP_MAX] or aggregate[S_KC_MIN] != aggregate[S_KC_MAX]:
            out[V_CODE] = DIFFERING
        elif not fits:
            return None
        else:
            out[V_CODE] = VALID
            n = len(self.plan.keys)
            out[STAGE_HEADER : STAGE_HEADER + n] = aggregate[STAGE_HEADER : STAGE_HEADER + n]
            self._finish(out, primary_payload)
        return out

    def _finish(self, out: np.ndarray, primary_payload: np.ndarray) -> None:
        """Folded values (in ``out[STAGE_HEADER:]``) -> reduced ones: means divided, ``local`` keys the primary's."""
        values = out[STAGE_HEADER : STAGE_HEADER + len(self.plan.keys)]
        if self._only is Reduce.MEAN:
            values /= self.world_size
        elif len(self._means):
            values[self._means] = values[self._means] / self.world_size
        if len(self._locals):
            values[self._locals] = self._values(primary_payload[None])[0, self._locals]

    def decide_alike(self, payloads: np.ndarray, primary_payload: np.ndarray, width: int,
                     out: np.ndarray) -> np.ndarray | None:
        """``combine`` then ``finalize`` of one node's rows in one pass, where the rows agree (the steady state).

        Called on one node with rows of one call and one length that fit the frame (``hierarchy.decide_alike``), and
        ``out`` NaN-filled. Where every row carries the same keys and ops, the same section names and no error flag,
        and the per-rank values fit ``width``, it writes into ``out`` exactly what the general path's result holds
        (the same folds in the same order) and returns the block of per-rank values (the general path's block without
        its padding); else None.
        """
        n = len(self.plan.keys)
        # plain lists: one node holds a handful of rows, and comparing them in Python beats numpy's per-call cost
        marks = payloads[:, FINGERPRINT : ERROR_FLAG + 1].tolist()
        sections = payloads[:, HEADER_SIZE + n + SECTION_FINGERPRINT].tolist()
        fingerprint, key_count, flagged = marks[0]
        if (flagged or key_count != n or marks.count(marks[0]) != len(marks)
                or sections.count(sections[0]) != len(sections)):
            return None
        per_rank = len(self._per_rank) + self.sections
        if per_rank > width:
            return None
        out[S_FP_MIN], out[S_FP_MAX], out[S_KC_MIN], out[S_KC_MAX] = fingerprint, fingerprint, n, n
        out[S_ERRORS], out[S_SEC_MIN], out[S_SEC_MAX], out[V_CODE] = 0.0, sections[0], sections[0], VALID
        self._fold(payloads[:, HEADER_SIZE : HEADER_SIZE + n], out, payloads.shape[1])
        self._finish(out, primary_payload)
        if not per_rank:
            return payloads[:, :0]
        tail = HEADER_SIZE + n + SECTION_HEADER
        return np.hstack([payloads[:, HEADER_SIZE + self._per_rank], payloads[:, tail : tail + self.sections]])

    @property
    def per_rank_count(self) -> int:
        """Keys of the call reduced ``per_rank``."""
        return len(self._per_rank)

    def share_per_rank(self, topology: Topology, block: np.ndarray | None) -> Steps:
        """Steps that give every rank the (ranks, per_rank keys) values the deciding rank holds in ``block``."""
        n = len(self._per_rank)
        values = np.ascontiguousarray(block[:, :n]) if block is not None else np.empty((topology.world_size, n))
        shared = yield from broadcast_from_primary(topology, values.reshape(-1))
        return shared.reshape(topology.world_size, n)

    def error_ranks(self, result: np.ndarray) -> tuple[list[int], int]:
        """The flagged ranks a result names (the lowest), and how many ranks were flagged in all."""
        named = result[S_ERROR_RANKS:STAGE_HEADER]
        return [int(r) for r in named[~np.isnan(named)]], int(result[S_ERRORS])

    def section_times(self, result: np.ndarray, block: np.ndarray | None) -> np.ndarray | None:
        """(ranks, sections) times by rank, where the result was decided and every rank timed the same sections;
        else None."""
        if not self.sections or block is None or result[S_SEC_MIN] != result[S_SEC_MAX]:
            return None
        start = len(self._per_rank)
        return block[:, start : start + self.sections]

    def values(self, result: np.ndarray, per_rank: np.ndarray) -> dict[str, float]:
        """The call's reduced values, unprefixed; ``per_rank`` keys expand to ``<key>/rank<r>`` from ``per_rank``
        ((ranks, number of per_rank keys), by rank)."""
        n = len(self.plan.keys)
        out = dict(zip(self.plan.keys, result[STAGE_HEADER : STAGE_HEADER + n].tolist()))
        if not len(self._per_rank):
            return out
        for i, j in enumerate(self._per_rank):
            key = self.plan.keys[j]
            del out[key]
            for r, x in enumerate(per_rank[:, i].tolist()):
                out[f"{key}/rank{r}"] = x
        return out
