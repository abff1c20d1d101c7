"""Put the report together: read the run directories, merge the attempts, build the sections, write the page."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdxl_dist_log.identity import recorded
from sdxl_dist_log.report.attempts import MergedRun, load_runs, merge_attempts
from sdxl_dist_log.report.charts import gpus_section, metrics_section, stragglers_section, system_section
from sdxl_dist_log.report.columns import collect_columns
from sdxl_dist_log.report.downsample import MAX_GRID_COLUMNS, MAX_LINE_POINTS
from sdxl_dist_log.report.page import page_html, plotly_js
from sdxl_dist_log.report.section import Section
from sdxl_dist_log.report.tables import (
    MAX_IMAGE_STEPS,
    artifacts_section,
    config_section,
    images_section,
    run_section,
)

SECTION_IDS = ("run", "metrics", "gpus", "stragglers", "images", "system", "artifacts", "config")
"""The page's sections, in order; every report has all of them (an empty one says what the run lacks)."""


@dataclass(frozen=True)
class ReportOptions:
    """How much of a long run the page keeps (see ``sdxl_dist_log.report.downsample``)."""

    max_points: int = MAX_LINE_POINTS
    """Points per line at most: longer lines keep each bucket's lowest and highest point."""
    max_columns: int = MAX_GRID_COLUMNS
    """Time (or step) buckets per heatmap row at most."""
    max_image_steps: int = MAX_IMAGE_STEPS
    """Image logs shown at most, spread over the run."""

    def __post_init__(self) -> None:
        for name, low in (("max_points", 2), ("max_columns", 1), ("max_image_steps", 2)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"ReportOptions.{name} must be an int >= {low}, got {value!r}")


def build_sections(run: MergedRun, options: ReportOptions | None = None) -> list[Section]:
    """Every section of the report of ``run``, in :data:`SECTION_IDS` order.

    Args:
        run: the merged run (``merge_attempts``).
        options: downsampling limits; None for the defaults.

    Returns:
        The sections; their figures are plotly dicts.
    """
    options = options or ReportOptions()
    columns = collect_columns(run.rows, run.step_key)
    hostnames = recorded(run.config, "hostnames")
    return [
        run_section(run),
        metrics_section(columns, run.step_key, max_points=options.max_points),
        gpus_section(columns, hostnames if isinstance(hostnames, dict) else None, max_columns=options.max_columns),
        stragglers_section(columns, run.config, run.step_key, max_columns=options.max_columns,
                           max_points=options.max_points),
        images_section(run, max_steps=options.max_image_steps),
        system_section(columns, run.step_key, max_points=options.max_points),
        artifacts_section(run),
        config_section(run.config),
    ]


def report_html(run: MergedRun, options: ReportOptions | None = None, library_js: str | None = None) -> str:
    """The report page of ``run`` as one self-contained HTML string.

    Args:
        run: the merged run.
        options: downsampling limits; None for the defaults.
        library_js: plotly.js source; None for the plotly package's own.

    Returns:
        The page.

    Raises:
        ModuleNotFoundError: plotly is not installed and ``library_js`` is None.
    """
    last = run.last
    title = f"run {run.run_id}" + (f" · {last.name}" if last.name else "")
    subtitle = " · ".join(part for part in (last.project, last.group, last.job_type) if part)
    attempts = len(run.attempts)
    subtitle += f" · {attempts} attempt{'s' if attempts != 1 else ''}" if subtitle else f"{attempts} attempt(s)"
    library = plotly_js() if library_js is None else library_js
    return page_html(title, subtitle, build_sections(run, options), library)


def write_report(paths: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str],
                 options: ReportOptions | None = None) -> Path:
    """Read the run directories of one run (its attempts), and write its report.

    Args:
        paths: run directories, ``.wandb`` files or folders holding the runs (all of one run id).
        output: the HTML file to write (its folder is created).
        options: downsampling limits; None for the defaults.

    Returns:
        The written file.

    Raises:
        FileNotFoundError: a path does not exist.
        ValueError: a path holds no run, or the runs have several run ids.
        ModuleNotFoundError: plotly is not installed (the message says how to install it).
    """
    run = merge_attempts(load_runs(paths))
    text = report_html(run, options)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)  # a reader never sees half a report
    return out
