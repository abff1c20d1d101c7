"""sdxl_dist_log.testing.browser: without Chromium, the error says how to install it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxl_dist_log.testing.browser import CHROMIUM_ARGS, ChartState, chromium_path


def test_a_missing_chromium_is_an_error_that_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        chromium_path(str(tmp_path / "chromium"))
    message = str(error.value)
    assert "apt-get install -y --no-install-recommends chromium" in message and ".ci/run" in message
    not_executable = tmp_path / "chromium"
    not_executable.write_text("")
    with pytest.raises(FileNotFoundError):
        chromium_path(str(not_executable))


def test_the_browser_stays_off_the_network_and_the_gpu() -> None:
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):
        assert flag in CHROMIUM_ARGS, flag


def test_a_chart_drew_only_with_a_sized_svg_and_something_in_it() -> None:
    assert ChartState("a", 400, 200, lines=1, heatmaps=0, points=0).drew
    assert not ChartState("a", 400, 200, lines=0, heatmaps=0, points=0).drew
    assert not ChartState("a", 0, 0, lines=2, heatmaps=0, points=0).drew
