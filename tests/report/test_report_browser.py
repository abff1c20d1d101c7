"""The report of a real 2-rank run, opened in a real headless Chromium: every section there, every chart drawn.

The page draws a chart as it comes near the viewport; ``open_report`` scrolls through it a screen at a time, as a
reader would, so every chart has drawn by the time the charts are checked.

The run is made as on a cluster: two processes (gloo), offline W&B, simulated GPUs (``FakeNvml(gpus=2)``), images
from every rank, a checkpoint artifact, and the straggler view's sections timed on an injected clock (rank 1 made
slow in its data loading from step 6 on). Chromium is Debian's package, driven by Playwright; without it the
test fails and says how to install it (``.ci/run`` installs it).

``SDXL_REPORT_SCREENSHOT=docs/img/report.png`` also writes a small copy of the screenshot there, for the docs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.report import SECTION_IDS, write_report
from sdxl_dist_log.testing.browser import INSTALL_HINT, open_report

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

STEPS = 12
TITLES = {"run": "Run and attempts", "metrics": "Metrics", "gpus": "GPUs", "stragglers": "Stragglers",
          "images": "Images", "system": "System", "artifacts": "Artifacts", "config": "Config"}


class _Clock:
    """The sections' clock, moved by the test: rank 1's data loading "takes" 3x as long from step 6 on."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _train(out: str, rank: int) -> bool:
    import time

    import torch

    from sdxl_dist_log import WandbConfig, WandbLogger
    from sdxl_dist_log.testing.fake_nvml import FakeNvml

    config = WandbConfig(project="report", mode="offline", dir=out, system_metrics_interval=0.2,
                         collective_timeout=30.0, max_images_to_log=4, config={"lr": 0.01},
                         metric_reduce={"loss_min": "min", "loss_max": "max"})
    clock = _Clock()
    with WandbLogger(config, nvml=FakeNvml(gpus=2), clock=clock) as wb:
        for step in range(STEPS):
            with wb.section("data"):
                clock.now += 0.03 if rank == 1 and step >= 6 else 0.01
            with wb.section("step"):
                clock.now += 0.05
            loss = (1.0 + 0.3 * rank) / (step + 1)
            wb.log_metrics({"loss": loss, "loss_min": loss, "loss_max": loss, "lr": 0.01}, step=step)
            if step % 4 == 0:
                wb.log_images(torch.rand(2, 3, 48, 48), captions=[f"step {step} sample {i}" for i in range(2)],
                              step=step)
            time.sleep(0.1)  # real time for the system sampler (its own thread and clock) to land rows
        path = Path(out) / "step_12.pt"
        if rank == 0:
            torch.save({"w": torch.zeros(4)}, path)
        wb.log_model(path, metadata={"step": STEPS}, aliases=["latest", "final"])
        return wb.is_primary


def test_report_of_a_two_rank_run_draws_every_section_in_chromium(tmp_path: Path) -> None:
    import functools

    out = tmp_path / "run"
    out.mkdir()
    assert values_or_raise(run_ranks(functools.partial(_train, str(out)), 2, timeout=150)) == [True, False]
    report = write_report([out], tmp_path / "report.html")
    figures = json.loads(re.search(r'id="report-figures">(.*?)</script>', report.read_text(encoding="utf-8"),
                                   re.S).group(1))

    screenshot = tmp_path / "report.png"
    try:
        page = open_report(report, screenshot=screenshot)
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        pytest.fail(f"{exc}\n({INSTALL_HINT})")

    assert page.errors == [], page.errors
    assert page.requests == [], f"a self-contained page requests nothing: {page.requests}"
    assert page.rendered.isdigit(), f"the charts did not all draw: data-rendered={page.rendered!r}"
    assert len(page.screen_waits) >= 3, "charts draw as they come near the viewport: read a screen at a time"
    assert page.sections == {s: TITLES[s] for s in SECTION_IDS}
    assert sorted(c.id for c in page.charts) == sorted(figures), "every figure has its div, every div a figure"
    blank = [c for c in page.charts if not c.drew]
    assert not blank, f"charts that drew nothing: {blank}"
    by_kind: dict[str, list] = {}
    for chart in page.charts:
        by_kind.setdefault(chart.id.rsplit("-", 1)[0], []).append(chart)
    assert all(c.heatmaps == 1 for c in by_kind["gpu"]) and len(by_kind["gpu"]) >= 4
    assert [c.heatmaps for c in by_kind["straggler"]] == [1, 0, 1, 0], "data and step: a heatmap and a spread line"
    assert all(c.lines == 1 for c in by_kind["straggler"][1::2])
    assert "<b>rank 1</b>" in report.read_text(encoding="utf-8"), "the slow rank is named in the summary"
    assert all(c.lines >= 1 for c in by_kind["metric"] + by_kind["system"]) and by_kind["attempts"][0].points >= 1
    assert screenshot.stat().st_size > 50_000

    docs_copy = os.environ.get("SDXL_REPORT_SCREENSHOT")
    if docs_copy:
        _save_small(screenshot, Path(docs_copy))


def _save_small(src: Path, dst: Path, width: int = 900, max_height: int = 1680) -> None:
    """A docs-sized copy: scaled to ``width``, cut at ``max_height``, 256 colours."""
    from PIL import Image

    with Image.open(src) as image:
        scaled = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        scaled = scaled.crop((0, 0, width, min(scaled.height, max_height)))
        dst.parent.mkdir(parents=True, exist_ok=True)
        scaled.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
