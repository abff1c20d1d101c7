"""A run's report: one self-contained HTML file (``sdxl-dist-log report RUN_DIR...``) that opens with no network.

It shows every metric against the step, a heatmap of every GPU of every node, the straggler scores per rank, image
samples, artifacts, the config, and the attempts of a requeued run on one timeline. Modules, each importing only
the ones listed after it:

* ``build``: :func:`write_report`, :func:`report_html`, :func:`build_sections`, :class:`ReportOptions`;
* ``page``: the HTML page, plotly.js inlined (the only importer of plotly, when a page is written);
* ``charts``: the chart sections (metrics, GPUs, stragglers); ``tables``: run and attempts, images, artifacts,
  config;
* ``stragglers``, ``columns``: what the run's keys mean; ``figures``: plotly figure dicts; ``section``: HTML helpers;
* ``attempts``: several run directories of one run id -> :class:`MergedRun`; ``downsample``: fewer points, extremes
  kept.

plotly is an optional dependency (``pip install 'sdxl-dist-log[report]'``); everything but writing the page works
without it, and importing this package imports neither plotly nor wandb.

Example:
    >>> from sdxl_dist_log.report import write_report
    >>> write_report(["outputs/demo/wandb"], "report.html")  # doctest: +SKIP
    PosixPath('report.html')
"""

from __future__ import annotations

from sdxl_dist_log.report.attempts import Attempt, MergedRun, load_runs, merge_attempts
from sdxl_dist_log.report.build import SECTION_IDS, ReportOptions, build_sections, report_html, write_report

__all__ = [
    "SECTION_IDS",
    "Attempt",
    "MergedRun",
    "ReportOptions",
    "build_sections",
    "load_runs",
    "merge_attempts",
    "report_html",
    "write_report",
]
