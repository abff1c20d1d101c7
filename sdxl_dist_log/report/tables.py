"""The report's sections that are mostly tables: the run and its attempts, images, artifacts, config.

Pure but for :func:`images_section`, which reads the image files of the run to embed thumbnails.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Mapping
from typing import Any

from sdxl_dist_log.offline.model import OfflineRun, is_media
from sdxl_dist_log.report.attempts import ATTEMPT_KEY, MergedRun
from sdxl_dist_log.report.figures import timeline
from sdxl_dist_log.report.section import ChartIds, Raw, Section, chart_div, duration, esc, note, size, table, when

THUMBNAIL_PX = 160
"""Longest side of an embedded image, in pixels."""
MAX_IMAGE_STEPS = 12
"""Image rows shown at most: evenly spread over the run, first and last included."""
_RANK_RE = re.compile(r"^\[rank (\d+)\]\s*")


def run_section(run: MergedRun) -> Section:
    """Who the run is and its attempts: identity, one timeline bar per attempt ending in how it ended, a table.

    Args:
        run: the merged run.

    Returns:
        The ``run`` section.
    """
    last = run.last
    ident = [("run id", last.run_id), ("project", last.project), ("entity", last.entity), ("name", last.name),
             ("group", last.group), ("job type", last.job_type), ("tags", ", ".join(last.tags)),
             ("wandb", last.wandb_version)]
    steps = [a.steps() for a in run.attempts]
    known = [s for s in steps if s is not None]
    ident.append(("history", f"{len(run.current_rows())} rows" + (
        f", {run.step_key} {min(s[0] for s in known):g}..{max(s[1] for s in known):g}" if known else "")))
    ident.append(("attempts", f"{len(run.attempts)}; the run {_state_text(run.attempts[-1].run)}"))
    body = table(["", ""], [(k, v) for k, v in ident if v], "ident")
    bars = []
    rows = []
    for attempt, span in zip(run.attempts, steps):
        r = attempt.run
        start = attempt.start
        end = r.end_time
        span_text = f"{span[0]:g}..{span[1]:g}" if span else "-"
        label = f"attempt {attempt.index + 1}"
        rows.append([label, r.path.name, when(start), when(end),
                     duration(end - start if start is not None and end is not None else None), span_text,
                     len(r.history), Raw(f'<span class="end-{esc(r.end_state)}">{esc(_state_text(r))}</span>')])
        if start is not None and end is not None:
            bars.append({"label": label, "start": round(start * 1000), "end": round(max(end, start) * 1000),
                         "state": r.end_state,
                         "text": f"{label}: {r.path.name}<br>steps {span_text}<br>{_state_text(r)}"})
    figures = {}
    if bars:
        chart_id = ChartIds("attempts")()
        figures[chart_id] = timeline(bars)
        body += chart_div(chart_id, "chart wide")
    body += table(["attempt", "directory", "start", "end", "duration", run.step_key, "rows", "end"], rows)
    return Section("run", "Run and attempts", body, figures)


def _state_text(run: OfflineRun) -> str:
    state = run.end_state
    if state == "killed":
        text = "killed (no exit record)"
    elif state == "preempted":
        text = "preempted" + (f" (exit code {run.exit_code})" if run.exit_code is not None else "")
    else:
        text = f"{state} (exit code {run.exit_code})"
    return text + (", file cut short" if run.truncated else "")


def _thumbnail(path: Any) -> str | None:
    """A data URI of the image shrunk to :data:`THUMBNAIL_PX`, or None when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            alpha = image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info)
            out = io.BytesIO()
            if alpha or max(image.size) <= 64:  # small or transparent: lossless is smaller than a JPEG's header
                image.save(out, format="PNG", optimize=True)
                kind = "png"
            else:
                image.convert("RGB").save(out, format="JPEG", quality=80)
                kind = "jpeg"
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return f"data:image/{kind};base64,{base64.b64encode(out.getvalue()).decode('ascii')}"


def _image_entries(run: MergedRun) -> list[tuple[Any, str, int, list[tuple[str, str]]]]:
    """``(step, key, attempt, [(file, caption)])`` for every row value that holds images."""
    entries = []
    for row in run.current_rows():
        for key, value in row.items():
            if type(value) is not dict or not is_media(value) or not str(value.get("_type", "")).startswith("image"):
                continue  # the type check first: a long run's rows hold millions of plain numbers
            names = value.get("filenames") or ([value["path"]] if isinstance(value.get("path"), str) else [])
            captions = value.get("captions") or ([value["caption"]] if isinstance(value.get("caption"), str) else [])
            pairs = [(str(n), str(captions[i]) if i < len(captions) else "") for i, n in enumerate(names)]
            entries.append((row.get(run.step_key, row.get("_step")), key, int(row.get(ATTEMPT_KEY, 0)), pairs))
    return entries


def images_section(run: MergedRun, *, max_steps: int = MAX_IMAGE_STEPS) -> Section:
    """Image samples per step with their captions and ranks, embedded as thumbnails (the page needs no file).

    Args:
        run: the merged run.
        max_steps: most logging steps shown, spread evenly over the run.

    Returns:
        The ``images`` section.
    """
    entries = _image_entries(run)
    if not entries:
        return Section("images", "Images", note("This run logged no images."), empty=True)
    if len(entries) > max_steps:
        picks = sorted({round(i * (len(entries) - 1) / (max_steps - 1)) for i in range(max_steps)})
        shown = [entries[i] for i in picks]
    else:
        shown = entries
    blocks = []
    for step, key, attempt, pairs in shown:
        cells = []
        for name, caption in pairs:
            uri = _thumbnail(run.media_path(attempt, name))
            match = _RANK_RE.match(caption)
            badge = f'<span class="rank">rank {match.group(1)}</span>' if match else ""
            text = esc(caption[match.end():] if match else caption)
            img = (f'<img src="{uri}" alt="{esc(caption or name)}">' if uri
                   else f'<div class="missing">missing: {esc(name)}</div>')
            cells.append(f"<figure>{img}<figcaption>{badge}{text}</figcaption></figure>")
        blocks.append(f'<div class="images"><h4>{esc(run.step_key)} {esc(step)} · {esc(key)}</h4>'
                      f'<div class="strip">{"".join(cells)}</div></div>')
    text = note(f"{len(shown)} of {len(entries)} image logs, spread over the run; thumbnails of at most "
                f"{THUMBNAIL_PX} px.")
    return Section("images", "Images", text + "".join(blocks))


def artifacts_section(run: MergedRun) -> Section:
    """Every logged artifact with its version, aliases, size and metadata.

    Args:
        run: the merged run (versions count distinct digests across attempts).

    Returns:
        The ``artifacts`` section.
    """
    if not run.artifacts:
        return Section("artifacts", "Artifacts", note("This run logged no artifacts."), empty=True)
    rows = []
    for attempt, art in run.artifacts:
        aliases = "".join(f'<span class="alias">{esc(a)}</span>' for a in art.aliases) or "-"
        meta = json.dumps(art.metadata, sort_keys=True, default=str) if art.metadata else "-"
        rows.append([Raw(f"<b>{esc(art.name)}:{esc(art.local_version)}</b>"), art.type, Raw(aliases),
                     size(art.size), len(art.files), art.digest[:12], f"attempt {attempt + 1}",
                     Raw(f"<code>{esc(meta)}</code>")])
    body = table(["artifact", "type", "aliases", "size", "files", "digest", "logged in", "metadata"], rows)
    return Section("artifacts", "Artifacts", body)


def config_section(config: Mapping[str, Any]) -> Section:
    """The run's config as logged (secrets were redacted before it was logged).

    Args:
        config: the merged config.

    Returns:
        The ``config`` section.
    """
    if not config:
        return Section("config", "Config", note("This run logged no config."), empty=True)
    text = json.dumps(config, indent=2, sort_keys=True, default=str)
    return Section("config", "Config", f"<pre>{esc(text)}</pre>")
