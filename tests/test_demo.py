"""The demo (sdxl_dist_log.demo.run) ends by pointing at its run's HTML report."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from sdxl_dist_log import demo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_demo_writes_the_report_beside_the_run_and_prints_its_path(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert demo.run(2, steps=4, out_dir=str(out), step_time=0.0, system_metrics_interval=0.2,
                    fake_nvml="gpus=2") == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.fullmatch(r"report: (\S+) \(open it in a browser; it needs no network\)", last)
    assert match, last
    report = Path(match.group(1))
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert report.parent == run_dir.parent and report.name == f"report-{run_dir.name.split('-')[-1]}.html"
    html = report.read_text(encoding="utf-8")
    assert all(f'<section id="{s}"' in html for s in ("run", "metrics", "gpus", "images", "artifacts"))
    assert "1 attempt" in html and "metrics/loss" in html


def test_without_plotly_the_demo_says_how_to_get_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "plotly", None)  # as if not installed
    line = demo._write_report(tmp_path / "offline-run-20250101_000000-abc", "abc")
    assert line == "report: skipped; pip install 'sdxl-dist-log[report]' to get an HTML report of the run"
    assert not list(tmp_path.glob("*.html"))
