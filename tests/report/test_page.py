"""The page (sdxl_dist_log.report.page) and the package surface: self-contained HTML, safe JSON, lazy imports."""

from __future__ import annotations

import doctest
import importlib
import json
import re
import subprocess
import sys

import pytest

from sdxl_dist_log.report.page import page_html, plotly_js
from sdxl_dist_log.report.section import Section

MODULES = ["attempts", "build", "charts", "columns", "downsample", "figures", "page", "section", "stragglers", "tables"]


def figures_of(html: str) -> dict:
    block = re.search(r'<script type="application/json" id="report-figures">(.*?)</script>', html, re.S)
    assert block is not None
    return json.loads(block.group(1))


def test_page_has_every_section_linked_and_the_figures_as_json() -> None:
    figure = {"data": [], "layout": {}}
    sections = [Section("metrics", "Metrics", '<div class="chart" id="m-0"></div>', {"m-0": figure}),
                Section("stragglers", "Stragglers", "<p>none</p>", empty=True)]
    html = page_html("run x", "proj", sections, "window.Plotly = {};")
    assert html.startswith("<!DOCTYPE html>") and "<title>run x</title>" in html
    assert '<section id="metrics" data-section="metrics"><h2>Metrics</h2>' in html
    assert '<a href="#stragglers" class=empty>Stragglers</a>' in html
    assert figures_of(html) == {"m-0": {"data": [], "layout": {}}}
    assert html.index("window.Plotly") < html.index("report-figures") < html.index("Plotly.newPlot")


def test_text_in_the_figures_cannot_end_the_script_element() -> None:
    evil = "</script><script>alert(1)</script><!--"
    sections = [Section("m", "M", "", {"c": {"data": [{"name": evil}], "layout": {}}})]
    html = page_html("t", "s", sections, "")
    assert html.count("</script>") == 3, "the library, the data and the render script: no early end"
    assert figures_of(html)["c"]["data"][0]["name"] == evil


def test_a_library_that_cannot_be_inlined_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be inlined"):
        page_html("t", "s", [], "var s = '</script>';")


def test_the_page_requests_nothing_from_the_network() -> None:
    html = page_html("t", "s", [Section("a", "A", "<p>x</p>")], plotly_js())
    markup = re.sub(r"<script>.*?</script>", "", html, flags=re.S)  # the inlined library's own strings aside
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert "<script src" not in html and "<link" not in html


def test_plotly_js_is_the_packages_bundle() -> None:
    source = plotly_js()
    assert len(source) > 1_000_000 and "plotly.js" in source[:2000].lower()


def test_importing_the_report_package_imports_neither_plotly_nor_wandb() -> None:
    code = ("import sys, sdxl_dist_log, sdxl_dist_log.report, sdxl_dist_log.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('plotly', 'wandb', 'torch')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_modules_import_only_the_ones_listed_after_them() -> None:
    order = ["build", "page", "charts", "tables", "stragglers", "columns", "figures", "section", "attempts",
             "downsample"]  # as the package docstring lists them
    assert sorted(order) == MODULES
    for position, name in enumerate(order):
        source = importlib.util.find_spec(f"sdxl_dist_log.report.{name}").origin
        text = open(source, encoding="utf-8").read()
        imported = set(re.findall(r"^from sdxl_dist_log\.report\.(\w+) import", text, re.M))
        assert imported <= set(order[position + 1:]), f"{name} imports {imported - set(order[position + 1:])}"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(f"sdxl_dist_log.report.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
