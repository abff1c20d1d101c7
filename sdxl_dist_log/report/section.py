"""A part of the report page (:class:`Section`) and the small HTML helpers the parts share. Pure."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


@dataclass
class Section:
    """One section of the page: its anchor, heading, HTML body, and the figures its chart divs show."""

    id: str
    """The element id (``metrics``, ``gpus``, ...); the page's table of contents links to it."""
    title: str
    body: str
    """HTML; every ``<div class="chart" id=...>`` in it has its figure in ``figures``."""
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Plotly figures by the id of the div they draw into."""
    empty: bool = False
    """True when the run has nothing for this section (the body says so)."""


class ChartIds:
    """Hands out unique chart div ids within one report: ``<prefix>-0``, ``<prefix>-1``, ..."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count - 1}"


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and attributes."""
    return html.escape(str(value), quote=True)


def chart_div(chart_id: str, css: str = "chart") -> str:
    """The div a figure draws into."""
    return f'<div class="{css}" id="{esc(chart_id)}"></div>'


def note(text: str) -> str:
    """A muted paragraph (already-escaped HTML allowed)."""
    return f'<p class="note">{text}</p>'


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    """An HTML table; cells are escaped unless they are :class:`Raw`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if isinstance(cell, Raw) else esc(cell)}</td>" for cell in row)
                   + "</tr>" for row in rows)
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Raw(str):
    """A table cell that is HTML already."""


def when(seconds: float | None) -> str:
    """A wall-clock time in UTC (``2025-01-01 12:00:00 UTC``), or ``-``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """``1 h 02 min``, ``3 min 05 s``, ``12 s``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def size(count: int) -> str:
    """Bytes as ``512 B``, ``1.5 KiB``, ``3.2 MiB``, ``1.1 GiB``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
