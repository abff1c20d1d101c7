"""Pure packing and reduction of metric dicts: no torch.distributed here.

A ``log_metrics`` call becomes one float64 row per rank: a small header (key fingerprint, key count, an error flag)
and the values in sorted-key order. The rows of all ranks travel in ONE ``all_gather`` (collectives.py); every rank
then reduces the same matrix the same way, so mean, sum, min, max, per-rank and primary-local values all come out of
one collective, and every rank sees whether the key sets agree before it trusts a positional reduction.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from sdxl_dist_log.errors import MetricKeyMismatchError, MetricValueError

# Header fields of a packed row; the values follow. float64 holds integers below 2**53 exactly.
FINGERPRINT, KEY_COUNT, ERROR_FLAG = 0, 1, 2
HEADER_SIZE = 3
_FINGERPRINT_BITS = 52


class Reduce(str, Enum):
    """How a metric is combined over ranks."""

    MEAN = "mean"
    """Arithmetic mean over the ranks that passed the key."""
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    PER_RANK = "per_rank"
    """Not reduced: every rank's value lands under ``<key>/rank<r>``."""
    LOCAL = "local"
    """Not reduced: the primary rank's own value (or, if it lacks the key, the lowest rank's that has it)."""


@dataclass(frozen=True)
class MetricPlan:
    """The sorted keys of one call with their reduce ops, and a fingerprint that identifies both."""

    keys: tuple[str, ...]
    ops: tuple[Reduce, ...]

    @functools.cached_property
    def op_columns(self) -> dict[Reduce, np.ndarray]:
        """Column indices of each op, so a reduction is a handful of vector operations whatever the key count."""
        codes = np.array([list(Reduce).index(op) for op in self.ops], dtype=np.int64)
        return {op: np.flatnonzero(codes == i) for i, op in enumerate(Reduce) if np.any(codes == i)}

    @functools.cached_property
    def fingerprint(self) -> int:
        digest = hashlib.blake2b(
            "\0".join(f"{k}\x1f{op.value}" for k, op in zip(self.keys, self.ops)).encode(), digest_size=8
        ).digest()
        return int.from_bytes(digest, "little") >> (64 - _FINGERPRINT_BITS)


def resolve_reduce(
    keys: Sequence[str], reduce: str | Reduce | Mapping[str, str | Reduce] | None, default: str | Reduce = Reduce.MEAN
) -> tuple[Reduce, ...]:
    """Pick the reduce op of each key.

    Args:
        keys: metric keys, as the user passed them (before the prefix).
        reduce: one op for all keys, or a mapping from key or glob pattern (``"tokens/*"``) to op; exact keys win
            over patterns, and the first matching pattern wins among patterns.
        default: op for keys the mapping does not cover.

    Returns:
        One op per key.

    Raises:
        MetricValueError: an op is not one of Reduce's values (the message lists them).
    """

    def parse(op: str | Reduce, where: str) -> Reduce:
        try:
            return Reduce(op)
        except ValueError:
            allowed = ", ".join(r.value for r in Reduce)
            raise MetricValueError(f"reduce op {op!r} for {where} is not one of: {allowed}") from None

    if reduce is None or isinstance(reduce, (str, Reduce)):
        op = parse(reduce if reduce is not None else default, "all keys")
        return tuple(op for _ in keys)
    patterns = [(p, parse(op, repr(p))) for p, op in reduce.items()]
    fallback = parse(default, "the default")
    ops = []
    for key in keys:
        exact = reduce.get(key)
        if exact is not None:
            ops.append(parse(exact, repr(key)))
            continue
        ops.append(next((op for p, op in patterns if fnmatch.fnmatchcase(key, p)), fallback))
    return tuple(ops)


def _is_torch_tensor(value: object) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "numel")


def pack_values(metrics: Mapping[str, Any], keys: Sequence[str]) -> np.ndarray:
    """Turn metric values into one float64 vector, with at most one host transfer per device.

    Python numbers, bools, numpy scalars and 0-d or 1-element arrays are read directly; CPU tensors too. Tensors on
    an accelerator are stacked on their device and copied to the host in one transfer per device, so 64 CUDA
    metrics cost one synchronisation, not 64.

    Raises:
        MetricValueError: a value is not numeric or has more than one element; the message names the key.
    """
    try:
        return pack_values_deferred(metrics, keys, non_blocking=False)()
    except (MetricValueError, KeyError):  # named already; a key not in ``metrics`` is the caller's mistake
        raise
    except Exception as exc:  # an int too large for a float fails inside numpy, without the key: name it
        raise bad_value_error(metrics, keys, exc) from None


def pack_values_deferred(
    metrics: Mapping[str, Any], keys: Sequence[str], *, non_blocking: bool = True
) -> Callable[[], np.ndarray]:
    """Like ``pack_values``, but the host copy of device values is only started here; the returned call finishes it.

    With ``non_blocking``, device values are stacked on their device and copied into pinned host memory without
    waiting, and a CUDA event marks the copy's end: the caller's thread does not synchronise with the device. The
    returned function waits for the event (on whichever thread calls it, e.g. the logger's background thread) and
    gives the float64 vector.

    Raises:
        MetricValueError: as ``pack_values``, here and not later.
    """
    uniform = _pack_uniform([metrics[k] for k in keys])
    if uniform is not None:
        return lambda: uniform
    out = np.empty(len(keys), dtype=np.float64)
    on_device: dict[Any, list[tuple[int, Any]]] = {}
    for i, key in enumerate(keys):
        value = metrics[key]
        if type(value) is float or type(value) is int:  # the common case, without the ABC checks below
            out[i] = value
            continue
        if _is_torch_tensor(value):
            if value.numel() != 1:
                raise MetricValueError(
                    f"metric {key!r} is a tensor of shape {tuple(value.shape)}; pass a scalar or 1-element tensor"
                )
            if value.is_complex():
                raise MetricValueError(f"metric {key!r} has dtype {value.dtype}, which is not a real number")
            if value.device.type == "cpu":
                out[i] = value.item()  # no device to wait for; far cheaper than a dtype conversion
            else:
                on_device.setdefault(value.device, []).append((i, value))
            continue
        if isinstance(value, np.ndarray):
            if value.size != 1:
                raise MetricValueError(f"metric {key!r} is an array of shape {value.shape}; pass a scalar")
            value = value.reshape(()).item()
        if isinstance(value, (bool, np.bool_, numbers.Real)):
            out[i] = float(value)
        else:
            raise MetricValueError(
                f"metric {key!r} has a value of type {type(value).__name__} ({value!r:.60}); "
                "pass a number, numpy scalar or 1-element tensor"
            )
    if not on_device:
        return lambda: out
    import torch

    pending = []
    for device, by_position in on_device.items():
        # one stack kernel per dtype and one conversion per group, not a conversion kernel per metric
        groups: dict[Any, list[tuple[int, Any]]] = {}
        for i, value in by_position:
            groups.setdefault(value.dtype, []).append((i, value))
        device_values = [item for group in groups.values() for item in group]
        parts = [torch.stack([v.detach().reshape(()) for _, v in group]).to(torch.float64) for group in groups.values()]
        stacked = parts[0] if len(parts) == 1 else torch.cat(parts)
        if non_blocking and device.type == "cuda":
            host = torch.empty(stacked.shape, dtype=torch.float64, pin_memory=True)
            host.copy_(stacked, non_blocking=True)
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(device))
            pending.append((device_values, host, done))
        else:
            pending.append((device_values, stacked.cpu(), None))  # the one host transfer for this device

    def resolve() -> np.ndarray:
        for device_values, host, done in pending:
            if done is not None:
                done.synchronize()
            for (i, _), x in zip(device_values, host.numpy()):
                out[i] = x
        return out

    if not non_blocking:
        resolved = resolve()
        return lambda: resolved
    return resolve


_IS_CPU = operator.attrgetter("is_cpu")


def _pack_uniform(values: list[Any]) -> np.ndarray | None:
    """The common cases in one pass, without per-value checks: all python numbers, or all CPU tensors (read with
    ``.item()``, ~0.3 µs each; one ``torch.stack`` of 0-d tensors costs more than that on the CPU). None for anything
    else, or when a value does not convert: the checked path then packs it, and names the key of a bad value."""
    if not values:
        return None
    types = set(map(type, values))
    try:
        if types <= {float, int}:
            return np.array(values, dtype=np.float64)
        if len(types) == 1 and _is_torch_tensor(values[0]) and all(map(_IS_CPU, values)):
            return np.array(list(map(type(values[0]).item, values)), dtype=np.float64)
    except (OverflowError, RuntimeError, TypeError, ValueError):  # a big int, several elements, a complex value
        return None
    return None


def pack_row(plan: MetricPlan, values: np.ndarray | None, tail: np.ndarray | None = None) -> np.ndarray:
    """Build one rank's row: header, then the values in key order, then ``tail`` (what else the call carries).

    ``values=None`` marks this rank's call as failed (a bad value): the row still travels so no rank waits, and
    every rank raises after the collective.
    """
    n = len(plan.keys)
    row = np.empty(HEADER_SIZE + n + (0 if tail is None else len(tail)), dtype=np.float64)
    row[FINGERPRINT] = plan.fingerprint
    row[KEY_COUNT] = n
    row[ERROR_FLAG] = 1.0 if values is None else 0.0
    row[HEADER_SIZE : HEADER_SIZE + n] = np.nan if values is None else values
    if tail is not None:
        row[HEADER_SIZE + n :] = tail
    return row


def reduce_rows(plan: MetricPlan, rows: np.ndarray, *, primary_rank: int = 0) -> dict[str, float]:
    """Reduce the gathered rows of ranks whose key sets agree (same fingerprint).

    Args:
        plan: the keys and ops, identical on every rank.
        rows: shape (world_size, at least HEADER_SIZE + number of keys).
        primary_rank: whose value ``Reduce.LOCAL`` keys take.

    Returns:
        Metric key (unprefixed) -> value; ``PER_RANK`` keys expand to ``<key>/rank<r>``.
    """
    values = rows[:, HEADER_SIZE : HEADER_SIZE + len(plan.keys)]
    reduced = np.empty(len(plan.keys), dtype=np.float64)
    for op, columns in plan.op_columns.items():
        if op is not Reduce.PER_RANK:
            reduced[columns] = _reduce_columns(op, values[:, columns], min(primary_rank, len(values) - 1))
    out = dict(zip(plan.keys, reduced.tolist()))
    for j in plan.op_columns.get(Reduce.PER_RANK, ()):
        key = plan.keys[j]
        del out[key]
        for r, x in enumerate(values[:, j].tolist()):
            out[f"{key}/rank{r}"] = x
    return out


def _reduce_columns(op: Reduce, columns: np.ndarray, primary_index: int = 0) -> np.ndarray:
    if op is Reduce.MEAN:
        return np.sum(columns, axis=0) / len(columns)
    if op is Reduce.SUM:
        return np.sum(columns, axis=0)
    if op is Reduce.MIN:
        return np.min(columns, axis=0)
    if op is Reduce.MAX:
        return np.max(columns, axis=0)
    return columns[primary_index]


def _reduce_column(op: Reduce, column: np.ndarray, primary_index: int = 0) -> float:
    return float(_reduce_columns(op, column[:, None], primary_index)[0])


def reduce_union(
    entries: Sequence[Sequence[tuple[str, str, float]]], *, primary_rank: int = 0
) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Reduce when ranks passed different key sets: each key over the ranks that passed it.

    Args:
        entries: per rank, its (key, op, value) triples.
        primary_rank: whose value ``Reduce.LOCAL`` keys take when it passed the key.

    Returns:
        (values, missing): the reduced union (a mean divides by the number of ranks that passed the key), and
        key -> ranks that did not pass it.

    Raises:
        MetricKeyMismatchError: ranks disagree on the reduce op of a key (names the key, ops and ranks).
    """
    by_key: dict[str, dict[int, float]] = {}
    op_of: dict[str, dict[str, list[int]]] = {}
    for rank, triples in enumerate(entries):
        for key, op, value in triples:
            by_key.setdefault(key, {})[rank] = value
            op_of.setdefault(key, {}).setdefault(op, []).append(rank)
    for key, ops in op_of.items():
        if len(ops) > 1:
            detail = "; ".join(f"{op} on ranks {ranks}" for op, ranks in sorted(ops.items()))
            raise MetricKeyMismatchError(f"metric {key!r} has different reduce ops across ranks: {detail}")
    world = len(entries)
    out: dict[str, float] = {}
    missing: dict[str, list[int]] = {}
    for key in sorted(by_key):
        per_rank = by_key[key]
        op = Reduce(next(iter(op_of[key])))
        if len(per_rank) < world:
            missing[key] = [r for r in range(world) if r not in per_rank]
        ranks = sorted(per_rank)
        column = np.array([per_rank[r] for r in ranks], dtype=np.float64)
        if op is Reduce.PER_RANK:
            for r in ranks:
                out[f"{key}/rank{r}"] = per_rank[r]
        else:
            primary_index = ranks.index(primary_rank) if primary_rank in per_rank else 0
            out[key] = _reduce_column(op, column, primary_index=primary_index)
    return out, missing


def bad_value_error(metrics: Mapping[str, Any], keys: Sequence[str], error: Exception) -> MetricValueError:
    """The error naming the key whose value ``pack_values`` failed on with ``error`` (an int too large for a float
    fails inside numpy, without the key): each value is packed alone until one fails."""
    for key in keys:
        try:
            pack_values_deferred({key: metrics[key]}, [key], non_blocking=False)()
        except MetricValueError as named:
            return named
        except Exception as exc:  # noqa: BLE001 - whatever the value raised, the key is what the user needs
            return MetricValueError(f"metric {key!r} has no usable number ({type(exc).__name__}: {exc})")
    return MetricValueError(f"{type(error).__name__}: {error}")


def describe_missing(missing: Mapping[str, Sequence[int]], limit: int = 8) -> str:
    """A short human description of which ranks lacked which keys."""
    parts = [f"{key!r} missing on ranks {list(ranks)}" for key, ranks in list(missing.items())[:limit]]
    if len(missing) > limit:
        parts.append(f"... and {len(missing) - limit} more keys")
    return "; ".join(parts)


def apply_prefix(values: Mapping[str, float], prefix: str) -> dict[str, float]:
    """Prefix every key; "" leaves keys as they are. A prefix without a trailing "/" is joined with "/"."""
    if not prefix:
        return dict(values)
    return dict(zip(prefixed(tuple(values), prefix), values.values()))


@functools.lru_cache(maxsize=64)
def prefixed(keys: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    """``keys`` with ``prefix`` (as ``apply_prefix`` joins it); kept for the key sets a training loop repeats."""
    if not prefix:
        return keys
    joiner = "" if prefix.endswith("/") else "/"
    return tuple(f"{prefix}{joiner}{k}" for k in keys)
