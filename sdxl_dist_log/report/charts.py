"""The chart sections of the report: metrics and system figures against the step, GPU heatmaps, stragglers. Pure.

Each function takes the run's columns (``columns.collect_columns``) and returns a :class:`Section` whose figures
are plotly dicts; a run without the data gets a section that says so, never a missing heading.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sdxl_dist_log.report.columns import SYSTEM_GROUP, Column, DeviceKey, MetricChart, device_key, metric_charts
from sdxl_dist_log.report.downsample import (
    MAX_GRID_COLUMNS,
    MAX_LINE_POINTS,
    finite,
    grid,
    grid_edges,
    minmax_points,
)
from sdxl_dist_log.report.figures import PALETTE, aligned, chart_layout, heatmap, line_traces, numbers
from sdxl_dist_log.report.section import ChartIds, Raw, Section, chart_div, esc, note, table
from sdxl_dist_log.report.stragglers import MIN_SPREAD, SectionScores, rank_places, straggler_sections

SCORE_COLORS = [[0.0, "#4393c3"], [0.5, "#f7f7f7"], [0.75, "#f4a582"], [1.0, "#b2182b"]]
"""Straggler scores: white at 1.0 (typical; the scale is centred there), blue faster, red slower."""
GPU_AGGREGATES = "system/all/gpu/"
"""Prefix of the cluster-wide GPU aggregates (``system/all/gpu/utilization/mean`` ...)."""
MAX_TRACES = 64
"""Lines per chart at most (a per-rank key of a 1,000-rank job): the first ones by rank or node are drawn."""


def metrics_section(columns: Mapping[str, Column], step_key: str, *, max_points: int = MAX_LINE_POINTS) -> Section:
    """Every metric against the step, one chart per key (bands and per-rank keys folded in), grouped by prefix;
    the ``system/`` figures other than per-GPU ones are in :func:`system_section`.

    Args:
        columns: the run's numeric columns.
        step_key: the x axis (the run's step metric).
        max_points: most points per line.

    Returns:
        The ``metrics`` section.
    """
    groups = {g: charts for g, charts in metric_charts(columns).items() if g != SYSTEM_GROUP}
    figures, body = _line_charts(groups, columns, step_key, ChartIds("metric"), max_points)
    if not figures:
        return Section("metrics", "Metrics", note("This run logged no numeric metrics."), empty=True)
    summary = note(f"{len(figures)} charts against <code>{esc(step_key)}</code>; shaded: the "
                   "<code>_min</code>/<code>_max</code> band of a key; lines of more than "
                   f"{max_points} points keep each stretch's lowest and highest value.")
    return Section("metrics", "Metrics", summary + body, figures)


def system_section(columns: Mapping[str, Column], step_key: str, *, max_points: int = MAX_LINE_POINTS) -> Section:
    """The system figures that are not per GPU: node figures (one line per node), staleness counts, and the
    cluster-wide GPU aggregates (a band from min to max around the mean) when the run has no per-GPU rows
    (``system_metrics_aggregate_only``); against the step, like the metrics.

    With per-GPU rows the ``system/all/gpu/...`` aggregates are left out: the GPU heatmaps show every value they
    summarise, and 15 more banded charts would double what the browser draws.

    Args:
        columns: the run's numeric columns.
        step_key: the x axis.
        max_points: most points per line.

    Returns:
        The ``system`` section.
    """
    per_gpu = any(device_key(key) is not None for key in columns)
    groups = {g: [c for c in charts if not (per_gpu and c.title.startswith(GPU_AGGREGATES))]
              for g, charts in metric_charts(columns).items() if g == SYSTEM_GROUP}
    figures, body = _line_charts(groups, columns, step_key, ChartIds("system"), max_points, headings=False)
    if not figures:
        return Section("system", "System", note("This run has no node or cluster-wide system figures."), empty=True)
    text = note("<code>node*</code>: one line per node; <code>system/all/...</code>: over every node (band: min to "
                "max, line: mean)" + ("; per-GPU figures are in the GPU heatmaps." if per_gpu else "."))
    return Section("system", "System", text + body, figures)


def _fit_y_axis(layout: dict, values: list[float]) -> None:
    """Big numbers as 85.9G, not 85899345920 (bytes, byte rates); a constant line with its value on the axis
    (plotly centres a flat line on 0 with ticks -1..1, which reads as 0 for a learning rate of 0.01)."""
    if not values:
        return
    low, high = min(values), max(values)
    if max(abs(low), abs(high)) >= 1e4:
        layout["yaxis"]["tickformat"] = ".4~s"
    if low == high:
        pad = abs(low) * 0.5 or 1.0
        layout["yaxis"]["range"] = [low - pad, high + pad]


def _line_charts(groups: Mapping[str, list[MetricChart]], columns: Mapping[str, Column], step_key: str,
                 ids: ChartIds, max_points: int, headings: bool = True) -> tuple[dict[str, dict], str]:
    figures = {}
    parts = []
    for group, charts in groups.items():
        divs = []
        for chart in charts:
            data = []
            notes = []
            shown = chart.traces[:MAX_TRACES]
            for i, trace in enumerate(shown):
                column = columns[trace.key]
                band = None
                if trace.band is not None:
                    low, high = columns[trace.band[0]], columns[trace.band[1]]
                    band = aligned(low.steps, low.values, high.steps, high.values)
                traces, dropped = line_traces(trace.label, column.steps, column.values, PALETTE[i % len(PALETTE)],
                                              band, max_points)
                data += traces
                if dropped:
                    notes.append(f"{trace.label}: {dropped} NaN/inf not drawn")
            if len(chart.traces) > len(shown):
                notes.append(f"first {len(shown)} of {len(chart.traces)} lines")
            title = chart.title + (f" ({'; '.join(notes)})" if notes else "")
            layout = chart_layout(title, step_key, legend=len(shown) > 1)
            _fit_y_axis(layout, [y for t in data for y in t["y"] if y is not None])
            chart_id = ids()
            figures[chart_id] = {"data": data, "layout": layout}
            divs.append(chart_div(chart_id))
        heading = f'<h3>{esc(group or "(no prefix)")}</h3>' if headings else ""
        parts.append(f'{heading}<div class="grid">{"".join(divs)}</div>')
    return figures, "".join(parts)


@dataclass(frozen=True)
class Panel:
    """One GPU heatmap: its title, the figures it shows (the first one a run has), and which value is worst."""

    title: str
    figures: tuple[tuple[str, str, float], ...]
    """``(figure, unit, scale)``: the key suffix, its unit after scaling, and the factor values are divided by."""
    worst: str
    """``"min"`` or ``"max"``: the value a heatmap cell keeps of its bucket."""


GPU_PANELS = (
    Panel("GPU utilization", (("utilization", "%", 1.0),), "min"),
    Panel("GPU memory", (("memory_percent", "%", 1.0), ("memory_used", "GiB", 2**30),
                         ("memory_reserved", "GiB", 2**30), ("memory_allocated", "GiB", 2**30)), "max"),
    Panel("GPU temperature", (("temperature", "°C", 1.0),), "max"),
    Panel("GPU power", (("power_watts", "W", 1.0),), "max"),
    Panel("SM clock", (("sm_clock_mhz", "MHz", 1.0),), "min"),
    Panel("clock throttled (1 = power/thermal slowdown)", (("clock_throttled", "", 1.0),), "max"),
)
"""The heatmaps, in page order. A cell keeps the worst value of its time bucket: the lowest utilization and clock,
the highest memory, temperature, power and throttle flag, so a stall or a spike shorter than a bucket still shows."""


def _step_of(times: np.ndarray) -> float | None:
    unique = np.unique(times[np.isfinite(times)])
    return float(np.median(np.diff(unique))) if len(unique) > 1 else None


def gpus_section(columns: Mapping[str, Column], hostnames: Mapping[str, str] | None = None, *,
                 max_columns: int = MAX_GRID_COLUMNS) -> Section:
    """Heatmaps of every GPU of every node over wall-clock time, one row per node/GPU, one panel per figure.

    Args:
        columns: the run's numeric columns.
        hostnames: ``{"node0": "host-a", ...}`` (the config's ``sdxl_dist_log.hostnames``) to label rows.
        max_columns: most time buckets per row.

    Returns:
        The ``gpus`` section.
    """
    devices: dict[str, dict[tuple[int, int, int], Column]] = {}  # figure -> device (DeviceKey.order) -> column
    named: dict[tuple[int, int, int], DeviceKey] = {}
    for key, column in columns.items():
        parsed = device_key(key)
        if parsed is not None:
            devices.setdefault(parsed.figure, {})[parsed.order] = column
            named.setdefault(parsed.order, parsed)
    if not devices:
        return Section("gpus", "GPUs", note("This run has no per-GPU system rows (<code>system/[node&lt;n&gt;/]gpu"
                                            "&lt;i&gt;/...</code>): system metrics were off or no GPU was seen."),
                       empty=True)
    rows = sorted(named)
    labels = [_device_label(named[dev], hostnames or {}) for dev in rows]
    all_times = np.concatenate([c.times for by_device in devices.values() for c in by_device.values()])
    finite = all_times[np.isfinite(all_times)]
    if not len(finite):
        return Section("gpus", "GPUs", note("The GPU rows carry no timestamps."), empty=True)
    some = next(iter(next(iter(devices.values())).values()))
    edges = grid_edges(float(finite.min()), float(finite.max()), max_columns, _step_of(some.times))
    ids = ChartIds("gpu")
    figures = {}
    divs = []
    for panel in GPU_PANELS:
        chosen = next(((name, unit, scale) for name, unit, scale in panel.figures if name in devices), None)
        if chosen is None:
            continue
        name, unit, scale = chosen
        by_device = devices[name]
        matrix = []
        for dev in rows:
            column = by_device.get(dev)
            matrix.append(grid(column.times, column.values / scale, edges, panel.worst) if column is not None
                          else np.full(len(edges) - 1, np.nan))
        chart_id = ids()
        figures[chart_id] = heatmap(f"{panel.title}: {name} ({'lowest' if panel.worst == 'min' else 'highest'} "
                                    "per bucket)", labels, edges * 1000.0, matrix, unit=unit, date=True,
                                    x_title="wall-clock time")
        divs.append(chart_div(chart_id, "chart wide"))
    if not figures:
        return Section("gpus", "GPUs", note("The per-GPU rows hold none of the figures shown here: "
                                            + esc(", ".join(sorted(devices)))), empty=True)
    width = (edges[1] - edges[0]) if len(edges) > 1 else 0.0
    text = note(f"{len(rows)} GPUs, {len(edges) - 1} time buckets of {width:.3g} s; each cell keeps the worst "
                "value of its bucket (lowest utilization and clock, highest memory, temperature, power).")
    return Section("gpus", "GPUs", text + "".join(divs), figures)


def _device_label(dev: DeviceKey, hostnames: Mapping[str, str]) -> str:
    host = hostnames.get(f"node{dev.node if dev.node is not None else 0}")
    return f"{dev.label} ({host})" if host and dev.node is not None else dev.label


def stragglers_section(columns: Mapping[str, Column], config: Mapping[str, object], step_key: str, *,
                       max_columns: int = MAX_GRID_COLUMNS, max_points: int = MAX_LINE_POINTS) -> Section:
    """Straggler scores per rank over the steps: who was slowest in each timed section, a heatmap per section.

    Args:
        columns: the run's numeric columns.
        config: the run's config (``sdxl_dist_log.ranks`` names each rank's host and GPU).
        step_key: the x axis.
        max_columns: most step buckets per heatmap row.
        max_points: most points of the spread line.

    Returns:
        The ``stragglers`` section.
    """
    sections = straggler_sections(columns)
    if not sections:
        return Section("stragglers", "Stragglers", note(
            "This run logged no straggler scores (<code>straggler/&lt;section&gt;/score/rank&lt;r&gt;</code>): the "
            "training loop timed no sections."), empty=True)
    places = rank_places(config)
    ids = ChartIds("straggler")
    figures = {}
    rows = []
    divs = []
    for section in sections:
        rows.append(_summary_row(section, places))
        ranks = sorted(section.scores)
        if ranks:
            steps = np.concatenate([section.scores[r].steps for r in ranks])
            known = steps[np.isfinite(steps)]
            if len(known):
                edges = grid_edges(float(known.min()), float(known.max()), max_columns,
                                   _step_of(section.scores[ranks[0]].steps))
                matrix = [grid(section.scores[r].steps, section.scores[r].values, edges, "max") for r in ranks]
                labels = [f"rank {r}" + (f" ({places[r]})" if r in places else "") for r in ranks]
                chart_id = ids()
                figures[chart_id] = heatmap(f"{section.name}: time / median of ranks (1.0 = typical; highest per "
                                            "bucket)", labels, edges, matrix, x_title=step_key, zmid=1.0,
                                            colorscale=SCORE_COLORS, unit="x median")
                divs.append(chart_div(chart_id, "chart wide"))
        if section.spread is not None:
            xs, ys, _ = finite(section.spread.steps, section.spread.values)
            xs, ys = minmax_points(xs, ys, max_points)
            chart_id = ids()
            figures[chart_id] = {
                "data": [{"type": "scatter", "mode": "lines", "name": "spread", "x": numbers(xs), "y": numbers(ys),
                          "line": {"width": 1.5, "color": PALETTE[3]}}],
                "layout": chart_layout(f"{section.name}: spread (slowest / fastest rank)", step_key, legend=False),
            }
            divs.append(chart_div(chart_id))
    headers = ["section", "slowest most often", "where", "intervals slowest", "its median score", "highest spread"]
    body = table(headers, rows) + '<div class="grid">' + "".join(divs) + "</div>"
    return Section("stragglers", "Stragglers", body, figures)


def _summary_row(section: SectionScores, places: Mapping[int, str]) -> list[object]:
    counts, intervals = section.slowest_counts()
    spread = "-"
    if section.spread is not None and np.isfinite(section.spread.values).any():
        spread = f"{np.nanmax(section.spread.values):.3g}"
    if not counts:
        return [section.name, f"none (every interval within {MIN_SPREAD:g}x)", "-", f"0 of {intervals}", "-", spread]
    rank, times = counts[0]
    median = section.median_score(rank)
    return [section.name, Raw(f"<b>rank {rank}</b>"), places.get(rank, "-"), f"{times} of {intervals}",
            "-" if median is None else f"{median:.3g}", spread]
