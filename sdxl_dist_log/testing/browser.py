"""Open a report in a real headless Chromium (the system's, driven by Playwright) and see what it drew.

Playwright never downloads a browser here: it launches Debian's ``chromium`` (``.ci/run`` installs it) with the
flags a sandboxed CI machine without a GPU needs, in a fresh profile. The browser test of the report and the report
benchmark use :func:`open_report`; nothing in the package proper imports this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
"""Where Debian's ``chromium`` package puts the browser."""
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")
"""No sandbox (CI runs as root), no GPU, and none of the browser's own network traffic."""
INSTALL_HINT = ("headless Chromium is needed to test the report in a browser; install Debian's package: "
                "apt-get install -y --no-install-recommends chromium (.ci/run does), and Playwright: "
                "pip install -e '.[test]'")

# What each chart div holds once plotly has drawn it: the lines' path data, heatmap images, markers.
_CHART_STATE_JS = """
() => Array.from(document.querySelectorAll("div.chart")).map((div) => {
  const svg = div.querySelector("svg.main-svg");
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const attr = (el, name) => (el.getAttribute(name) || "").length;
  const lines = Array.from(div.querySelectorAll("path.js-line")).filter((p) => attr(p, "d") > 1);
  const heat = Array.from(div.querySelectorAll("g.hm image")).filter((i) => attr(i, "href") > 100);
  const points = div.querySelectorAll("path.point").length;
  return {id: div.id, width: box.width, height: box.height, lines: lines.length, heatmaps: heat.length, points};
})
"""

# True when every chart div that overlaps the viewport has been drawn (the page marks it data-drawn).
_IN_VIEW_DRAWN_JS = """
() => document.body.dataset.rendered === "error" || Array.from(document.querySelectorAll("div.chart")).every((div) => {
  const box = div.getBoundingClientRect();
  return box.bottom <= 0 || box.top >= window.innerHeight || div.dataset.drawn === "1";
})
"""
_AT_BOTTOM_JS = "() => window.scrollY + window.innerHeight >= document.documentElement.scrollHeight - 1"


@dataclass
class ChartState:
    """What one chart div shows after rendering."""

    id: str
    width: float
    height: float
    lines: int
    """Drawn line paths with data."""
    heatmaps: int
    """Heatmap images plotly drew (it paints a heatmap into one image)."""
    points: int

    @property
    def drew(self) -> bool:
        """True when the chart has a sized SVG with a line, a heatmap or a marker in it."""
        return self.width > 0 and self.height > 0 and (self.lines + self.heatmaps + self.points) > 0


@dataclass
class PageResult:
    """A report as the browser showed it."""

    rendered: str
    """``<body data-rendered>``: ms from navigation until every chart was drawn (scrolling through the page), or
    ``"error"``."""
    first_screen_ms: float
    """``data-first-screen``: ms from navigation until the charts of the first screen were drawn."""
    plot_ms: float
    """ms the charts took to draw, summed over them (``data-plot-ms``)."""
    wall_s: float
    """Seconds from ``goto`` until every chart was drawn, scrolling a screen at a time as soon as the charts in
    view were drawn; measured outside the page."""
    cpu_s: float
    """CPU seconds the browser's processes used from ``goto`` until every chart was drawn: unlike the times, it
    barely grows when other work shares the machine."""
    sections: dict[str, str]
    """Section id -> its heading."""
    charts: list[ChartState]
    errors: list[str] = field(default_factory=list)
    """Console errors and uncaught page errors."""
    screen_waits: list[float] = field(default_factory=list)
    """Seconds each screen of the scroll-through waited for the charts in view to draw (first screen: from
    ``goto``; then from each scroll of one screen height)."""
    requests: list[str] = field(default_factory=list)
    """URLs the page requested other than itself and ``data:`` URIs (a self-contained page has none)."""


def _browser_cpu_s() -> float:
    """User + system CPU seconds of this process's Chromium descendants (Playwright's driver starts them)."""
    import psutil

    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            if "chrom" in child.name():
                times = child.cpu_times()
                total += times.user + times.system
        except psutil.Error:  # a helper process that ended in between
            continue
    return total


def chromium_path(path: str = CHROMIUM) -> str:
    """The Chromium executable, or an error that says how to install it.

    Raises:
        FileNotFoundError: no executable at ``path`` (the message is :data:`INSTALL_HINT`).
    """
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise FileNotFoundError(f"{path} not found: {INSTALL_HINT}")
    return path


def open_report(html: str | os.PathLike[str], *, screenshot: str | os.PathLike[str] | None = None,
                timeout_s: float = 60.0, width: int = 1400, height: int = 900) -> PageResult:
    """Open ``html`` in headless Chromium, scroll through it until every chart is drawn, and report what it shows.

    The page draws a chart as it comes near the viewport, so this reads it as a reader would: it waits for the
    charts of the first screen, then scrolls one screen height at a time, each time as soon as the charts in view
    are drawn, until the page says every chart is (``data-rendered``).

    Args:
        html: the report file.
        screenshot: write a full-page PNG here, or None.
        timeout_s: the most seconds to wait for the charts (and for each browser step).
        width: viewport width in pixels.
        height: viewport height in pixels.

    Returns:
        What the page drew, its errors and its requests.

    Raises:
        FileNotFoundError: Chromium is not installed (the message says how to install it).
        ModuleNotFoundError: Playwright is not installed (ditto).
    """
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(INSTALL_HINT) from exc
    url = Path(html).resolve().as_uri()
    profile = tempfile.mkdtemp(prefix="sdxl-report-chromium-")
    errors: list[str] = []
    requests: list[str] = []
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=executable, args=list(CHROMIUM_ARGS), headless=True,
                viewport={"width": width, "height": height}, timeout=timeout_s * 1000,
            )
            try:
                page = context.new_page()
                page.set_default_timeout(timeout_s * 1000)
                page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
                page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
                page.on("request", lambda req: requests.append(req.url)
                        if req.url != url and not req.url.startswith("data:") else None)
                cpu_before = _browser_cpu_s()
                start = time.perf_counter()
                page.goto(url)
                waits = [_wait_in_view(page, start)]
                while page.evaluate("() => document.body.dataset.rendered === undefined"):
                    if page.evaluate(_AT_BOTTOM_JS):  # the charts left are drawing: the last screen's margin
                        page.wait_for_function("document.body.dataset.rendered !== undefined")
                        break
                    page.evaluate("window.scrollBy(0, window.innerHeight)")
                    waits.append(_wait_in_view(page, time.perf_counter()))
                wall_s = time.perf_counter() - start
                cpu_s = _browser_cpu_s() - cpu_before
                state: dict[str, Any] = page.evaluate(
                    "() => ({rendered: document.body.dataset.rendered, plot: document.body.dataset.plotMs,"
                    " first: document.body.dataset.firstScreen,"
                    " sections: Object.fromEntries(Array.from(document.querySelectorAll('section[data-section]'))"
                    ".map((s) => [s.id, s.querySelector('h2').textContent]))})")
                charts = [ChartState(**c) for c in page.evaluate(_CHART_STATE_JS)]
                if screenshot is not None:
                    page.screenshot(path=str(screenshot), full_page=True)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return PageResult(rendered=state["rendered"], first_screen_ms=float(state["first"] or "nan"),
                      plot_ms=float(state["plot"] or "nan"), wall_s=wall_s, cpu_s=cpu_s, screen_waits=waits,
                      sections=state["sections"], charts=charts, errors=errors, requests=requests)


def _wait_in_view(page: Any, since: float) -> float:
    """Wait until the charts in the viewport are drawn; the seconds since ``since``."""
    page.wait_for_function(_IN_VIEW_DRAWN_JS)
    return time.perf_counter() - since
