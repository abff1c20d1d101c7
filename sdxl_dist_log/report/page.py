"""The report as one self-contained HTML file: plotly.js inlined, figures as one JSON block, no external request.

This is the only module of the report that imports plotly (for its bundled ``plotly.min.js``), when a page is
written; :func:`page_html` takes the library's source as an argument, so the page structure is testable without it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from sdxl_dist_log.report.section import Section, esc

INSTALL_HINT = "the report needs plotly: pip install 'sdxl-dist-log[report]'"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#cfd8dc}nav{margin-top:8px}nav a{color:#80cbc4;margin-right:14px;text-decoration:none}
nav a.empty{color:#78909c}main{padding:8px 24px 40px}
section{background:#fff;border:1px solid #e0e0e0;border-radius:6px;margin:16px 0;padding:8px 16px 16px}
h2{font-size:17px;margin:8px 0}h3{font-size:14px;margin:16px 0 4px;color:#455a64}h4{font-size:13px;margin:10px 0 4px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:8px}
.chart{min-height:120px}.chart.wide{grid-column:1/-1}.note{color:#607d8b;font-size:12.5px;margin:4px 0}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border-bottom:1px solid #eee;padding:3px 10px 3px 0;
text-align:left;vertical-align:top}th{color:#546e7a;font-weight:600}table.ident td:first-child{color:#546e7a}
td code{font-size:11.5px;word-break:break-all}pre{background:#f5f5f5;padding:10px;overflow:auto;max-height:480px;
font-size:12px}.strip{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;width:168px}
figure img{width:160px;height:auto;image-rendering:pixelated;border:1px solid #ddd;display:block}
figcaption{font-size:11.5px;color:#455a64}.rank{background:#263238;color:#fff;border-radius:3px;padding:0 4px;
margin-right:4px;font-size:10.5px}.alias{background:#e0f2f1;border-radius:3px;padding:0 5px;margin-right:4px}
.missing{width:160px;height:60px;background:#fff3e0;font-size:11px;padding:4px;box-sizing:border-box}
.end-finished{color:#2e7d32}.end-preempted{color:#ef6c00}.end-killed,.end-failed{color:#c62828}
"""

# Draws each figure when its div comes within a screen of the viewport (an IntersectionObserver), one at a time in
# page order, letting the browser paint between them: the page is usable once the first screen is drawn, and a
# chart further down is drawn as the reader scrolls towards it, not before (each costs 80-350 ms of main thread).
# A div is sized to its figure's height before drawing, so the page does not move as charts appear. Sets on
# <body>: data-first-screen, the ms since navigation when every chart of the first screen was drawn; data-rendered,
# the ms since navigation when every chart of the page was (only after a scroll through it), or "error";
# data-plot-ms, the ms spent drawing, summed over the charts drawn. Each chart div gets data-drawn="1" once drawn.
# The browser test and the benchmark scroll through the page and read them.
RENDER_JS = """
(function () {
  var figures = JSON.parse(document.getElementById("report-figures").textContent);
  var ids = Object.keys(figures);
  var config = {displaylogo: false, responsive: true};
  var body = document.body.dataset;
  var queued = {}, queue = [], busy = false, drawn = 0, plotMs = 0, firstScreen = [];
  function fail(err) {
    console.error("report: a chart failed to draw: " + err);
    body.rendered = "error";
  }
  function done(id) {
    document.getElementById(id).dataset.drawn = "1";
    drawn += 1;
    body.plotMs = String(Math.round(plotMs));
    firstScreen = firstScreen.filter(function (other) { return other !== id; });
    if (body.firstScreen === undefined && firstScreen.length === 0) {
      body.firstScreen = String(Math.round(performance.now()));
    }
    if (drawn === ids.length) {
      body.rendered = String(Math.round(performance.now()));
    }
  }
  function pump() {
    if (busy || queue.length === 0) { return; }
    queue.sort(function (a, b) { return ids.indexOf(a) - ids.indexOf(b); });
    var id = queue.shift(), figure = figures[id], t0 = performance.now();
    busy = true;
    Plotly.newPlot(id, figure.data, figure.layout, config).then(function () {
      plotMs += performance.now() - t0;
      done(id);
      busy = false;
      setTimeout(pump, 0);
    }, fail);
  }
  function want(id) {
    if (!queued[id]) { queued[id] = true; queue.push(id); }
  }
  ids.forEach(function (id) {
    var height = figures[id].layout && figures[id].layout.height;
    if (height) { document.getElementById(id).style.minHeight = height + "px"; }
  });
  ids.forEach(function (id) {
    if (document.getElementById(id).getBoundingClientRect().top < window.innerHeight) { firstScreen.push(id); }
  });
  if (firstScreen.length === 0) { body.firstScreen = String(Math.round(performance.now())); }
  if (ids.length === 0) { body.plotMs = "0"; body.rendered = String(Math.round(performance.now())); return; }
  if (!("IntersectionObserver" in window)) { ids.forEach(want); pump(); return; }
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      if (entry.isIntersecting) { observer.unobserve(entry.target); want(entry.target.id); }
    });
    pump();
  }, {rootMargin: "100% 0px"});
  ids.forEach(function (id) { observer.observe(document.getElementById(id)); });
})();
"""


def plotly_js() -> str:
    """The source of the ``plotly.min.js`` that the plotly package ships.

    Raises:
        ModuleNotFoundError: plotly is not installed (the message says how to install it).
    """
    try:
        from plotly.offline import get_plotlyjs
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(INSTALL_HINT) from exc
    return get_plotlyjs()


def _json_script_safe(text: str) -> str:
    # Inside <script>, "</script" would end the element early; in JSON strings "<\/" means the same as "</".
    return text.replace("</", "<\\/").replace("<!--", "<\\u0021--")


def _check_library(text: str) -> str:
    # JS source cannot be rewritten safely (a regex literal would change); plotly.min.js has no such sequence.
    if re.search(r"</script|<!--", text, re.IGNORECASE):
        raise ValueError("the plotting library's source contains '</script' or '<!--' and cannot be inlined")
    return text


def page_html(title: str, subtitle: str, sections: Sequence[Section], library_js: str) -> str:
    """The whole page as one string.

    Args:
        title: the page title and heading.
        subtitle: the line under the heading (plain text).
        sections: the parts, in page order.
        library_js: the plotting library's source, inlined (:func:`plotly_js`).

    Returns:
        HTML that requests nothing from the network.
    """
    figures: dict[str, Any] = {}
    for section in sections:
        figures.update(section.figures)
    nav = "".join(f'<a href="#{esc(s.id)}"{" class=empty" if s.empty else ""}>{esc(s.title)}</a>' for s in sections)
    body = "".join(
        f'<section id="{esc(s.id)}" data-section="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>'
        for s in sections
    )
    data = json.dumps(figures, separators=(",", ":"), allow_nan=False)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p><nav>{nav}</nav></header><main>{body}</main>"
        f"<script>{_check_library(library_js)}</script>"
        f'<script type="application/json" id="report-figures">{_json_script_safe(data)}</script>'
        f"<script>{RENDER_JS}</script></body></html>\n"
    )
