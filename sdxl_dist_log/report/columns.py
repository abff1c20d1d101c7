"""History rows -> numeric columns, and which key belongs where in the report. Pure.

Every numeric value of every row lands in one :class:`Column` per key (its step, time and value as numpy arrays),
in one pass over the rows. Keys are then sorted into the report's parts:

* per-device system figures ``system/[node<n>/](gpu|rank)<i>/<figure>`` -> the GPU heatmaps (:func:`device_key`);
* straggler scores ``straggler/<section>/...`` -> the straggler view (the stragglers module);
* everything else -> metric charts against the step, grouped by prefix (:func:`metric_charts`): ``<key>_min`` and
  ``<key>_max`` (or ``<key>/min``, ``<key>/max`` beside ``<key>/mean``) become a band around ``<key>``, and keys that
  differ only in a ``rank<r>`` or ``node<n>`` part (per-rank reductions, per-node host figures) share one chart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdxl_dist_log.report.attempts import SUPERSEDED_KEY

STRAGGLER_PREFIX = "straggler/"
SYSTEM_GROUP = "system"
"""The group of the system figures that are not per-device (aggregates, host figures): listed after the user's."""
_DEVICE_RE = re.compile(r"^system/(?:node(?P<node>\d+)/)?(?P<kind>gpu|rank)(?P<index>\d+)/(?P<figure>.+)$")
_MEMBER_RE = re.compile(r"^(rank|node)(\d+)$")


@dataclass
class Column:
    """The numeric values of one key, in row order."""

    steps: np.ndarray
    """The row's training step (NaN where the row has none)."""
    times: np.ndarray
    """The row's ``_timestamp``, seconds since the epoch (NaN where the row has none)."""
    values: np.ndarray


def collect_columns(rows: Iterable[Mapping[str, Any]], step_key: str, superseded_key: str = SUPERSEDED_KEY
                    ) -> dict[str, Column]:
    """One :class:`Column` per key holding numbers: W&B's own ``_`` keys, the step key and media left out.

    Args:
        rows: history rows in order.
        step_key: the key of the training step.
        superseded_key: a row that holds it (true) was logged again by a later attempt of the run: only its
            per-device system figures are taken (they are plotted against wall-clock time, when they ran), its
            metrics are not (the later attempt's values of those steps are).

    Returns:
        Columns by key, keys in first-seen order.

    Example:
        >>> cols = collect_columns([{"s": 1, "a": 2.0, "_timestamp": 5.0}, {"s": 2, "a": "x"}], "s")
        >>> cols["a"].steps.tolist(), cols["a"].values.tolist(), list(cols)
        ([1.0], [2.0], ['a'])
    """
    # The hot loop of a report (millions of values in a long run): type checks instead of calls, and per key only
    # the row index and the value; steps and times are looked up by index at the end.
    raw: dict[str, tuple[list[int], list[float]]] = {}
    steps: list[float] = []
    times: list[float] = []
    nan = float("nan")
    for index, row in enumerate(rows):
        step = row.get(step_key)
        time = row.get("_timestamp")
        steps.append(step if type(step) is float or type(step) is int else nan)
        times.append(time if type(time) is float or type(time) is int else nan)
        superseded = bool(row.get(superseded_key))
        for key, value in row.items():
            kind = type(value)
            if kind is not float and kind is not int:  # bool, str, media dicts, None: not plotted
                continue
            if key[:1] == "_" or key == step_key or (superseded and _DEVICE_RE.match(key) is None):
                continue
            lists = raw.get(key)
            if lists is None:
                lists = raw[key] = ([], [])
            lists[0].append(index)
            lists[1].append(value)
    all_steps = np.array(steps, dtype=float)
    all_times = np.array(times, dtype=float)
    columns = {}
    for key, (indices, values) in raw.items():
        at = np.array(indices, dtype=np.int64)
        columns[key] = Column(all_steps[at], all_times[at], np.array(values, dtype=float))
    return columns


@dataclass(frozen=True)
class DeviceKey:
    """A per-device system key ``system/[node<n>/](gpu|rank)<i>/<figure>`` taken apart."""

    node: int | None
    """The node, None in a one-node run (no node in its keys)."""
    kind: str
    """``gpu`` (NVML index) or ``rank`` (a rank's CUDA device that NVML did not name)."""
    index: int
    figure: str

    @property
    def label(self) -> str:
        """``node3/gpu5`` (or ``gpu5`` in a one-node run): one heatmap row."""
        device = f"{self.kind}{self.index}"
        return device if self.node is None else f"node{self.node}/{device}"

    @property
    def order(self) -> tuple[int, int, int]:
        """Sort key: node, then GPUs before rank-named devices, then index."""
        return (self.node or 0, 0 if self.kind == "gpu" else 1, self.index)


def device_key(key: str) -> DeviceKey | None:
    """Parse a per-device system key, or None for any other key.

    Example:
        >>> device_key("system/node3/gpu5/utilization").label, device_key("system/gpu0/temperature").figure
        ('node3/gpu5', 'temperature')
        >>> device_key("system/all/gpu/utilization/mean") is None
        True
    """
    match = _DEVICE_RE.match(key)
    if match is None:
        return None
    node = match.group("node")
    return DeviceKey(None if node is None else int(node), match.group("kind"), int(match.group("index")),
                     match.group("figure"))


@dataclass
class Trace:
    """One line of a metric chart: its key, its label in the legend, and the band around it, if any."""

    key: str
    label: str
    band: tuple[str, str] | None = None
    """The keys of its lower and upper edge."""


@dataclass
class MetricChart:
    """One chart: a title (the key, with ``*`` for the rank or node part when several share it) and its lines."""

    title: str
    traces: list[Trace] = field(default_factory=list)


def _band_of(key: str, keys: set[str]) -> tuple[str, str] | None:
    if f"{key}_min" in keys and f"{key}_max" in keys:
        return (f"{key}_min", f"{key}_max")
    return None


def _member_title(key: str) -> tuple[str, str | None]:
    """``("metrics/loss/rank*", "rank3")`` for ``metrics/loss/rank3``; the key itself and None without a member."""
    parts = key.split("/")
    for i in range(len(parts) - 1, -1, -1):
        match = _MEMBER_RE.match(parts[i])
        if match:
            return "/".join(parts[:i] + [f"{match.group(1)}*"] + parts[i + 1:]), parts[i]
    return key, None


def metric_charts(keys: Iterable[str]) -> dict[str, list[MetricChart]]:
    """Sort metric keys into charts, grouped by their first part (``metrics/loss`` -> group ``metrics``).

    Args:
        keys: the keys of numeric columns; per-device system keys and straggler keys are skipped here.

    Returns:
        Charts by group, groups and charts sorted by name (the ``system`` group last); a group ``""`` holds keys
        without a ``/``. A band's edge
        keys get no chart of their own; a ``<key>/mean`` with ``/min`` and ``/max`` is one chart ``<key>``.

    Example:
        >>> charts = metric_charts(["m/loss", "m/loss_min", "m/loss_max", "m/acc/rank0", "m/acc/rank1"])
        >>> [(c.title, [(t.label, t.band) for t in c.traces]) for c in charts["m"]]
        [('m/acc/rank*', [('rank0', None), ('rank1', None)]), ('m/loss', [('m/loss', ('m/loss_min', 'm/loss_max'))])]
    """
    wanted = {k for k in keys if device_key(k) is None and not k.startswith(STRAGGLER_PREFIX)}
    edges: set[str] = set()
    traces: list[Trace] = []
    for key in sorted(wanted):
        band = _band_of(key, wanted)
        if band is None and key.endswith("/mean") and {f"{key[:-5]}/min", f"{key[:-5]}/max"} <= wanted:
            band = (f"{key[:-5]}/min", f"{key[:-5]}/max")
        if band is not None:
            edges.update(band)
        traces.append(Trace(key, key, band))
    charts: dict[str, MetricChart] = {}
    for trace in traces:
        if trace.key in edges:
            continue
        base = trace.key[:-5] if trace.band and trace.key.endswith("/mean") else trace.key
        title, member = _member_title(base)
        chart = charts.setdefault(title, MetricChart(title))
        trace.label = member or base
        chart.traces.append(trace)
    groups: dict[str, list[MetricChart]] = {}
    for title in sorted(charts, key=lambda t: (t.split("/")[0] if "/" in t else "", t)):
        groups.setdefault(title.split("/")[0] if "/" in title else "", []).append(charts[title])
    for charts_of_group in groups.values():
        for chart in charts_of_group:
            chart.traces.sort(key=lambda t: _natural(t.label))
    return dict(sorted(groups.items(), key=lambda item: (item[0] == SYSTEM_GROUP, item[0])))


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]
