"""The readable text summary of an offline run, as ``sdxl-dist-log inspect`` prints it."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

from sdxl_dist_log.offline.model import SYSTEM_PREFIX, OfflineRun, flatten, is_media


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _config_lines(config: Mapping[str, Any], indent: str = "  ") -> list[str]:
    lines = []
    for key, value in config.items():
        if isinstance(value, dict) and value:
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in flatten(value, ".").items())
            text = f"{key}: {{{inner}}}"
            lines.append(indent + (text if len(text) <= 110 else text[:107] + "..."))
        else:
            lines.append(f"{indent}{key}: {_fmt(value)}")
    return lines


def _key_line(key: str, values: list[Any]) -> str:
    media = [v for v in values if is_media(v)]
    numbers = [v for v in values if _is_number(v)]
    parts = [f"{len(values)} rows"]
    if media:
        kinds = Counter(str(v.get("_type")) for v in media)
        for kind, rows in sorted(kinds.items()):
            if kind.startswith("images"):
                count = sum(int(v.get("count", 1)) for v in media if v.get("_type") == kind)
                parts.append(f"{count} images in {rows} entries")
            else:
                parts.append(f"{rows} {kind}")
    if numbers:
        finite = [float(v) for v in numbers if math.isfinite(v)]
        parts.append(f"first={_fmt(numbers[0])} last={_fmt(numbers[-1])}")
        if finite:
            parts.append(f"min={_fmt(min(finite))} max={_fmt(max(finite))}")
        if len(finite) < len(numbers):
            parts.append(f"{len(numbers) - len(finite)} non-finite")
    other = len(values) - len(media) - len(numbers)
    if other:
        last = next(v for v in reversed(values) if not is_media(v) and not _is_number(v))
        parts.append(f"{other} other (last={_fmt(last)})")
    return f"{key}: " + ", ".join(parts)


def format_run(run: OfflineRun, step_key: str | None = None) -> str:
    """A readable multi-line summary of a run, as ``sdxl-dist-log inspect RUN_DIR`` prints it.

    Args:
        run: a run from ``read_run``.
        step_key: the key that carries the training step, whose range is shown; None for the run's own
            (:attr:`OfflineRun.step_metric`, the logger's ``WandbConfig.step_metric``). When no row carries it,
            the range of W&B's ``_step`` row counter is shown instead.

    Returns:
        Identity, exit state, config, one line per history key (count, first/last/min/max; images counted),
        ``system/`` keys in their own block, artifacts with versions, aliases and metadata, media file count.
    """
    step_key = step_key or run.step_metric
    lines = [f"run {run.run_id}  ({run.path})"]
    ident = [
        ("project", run.project),
        ("entity", run.entity),
        ("name", run.name),
        ("group", run.group),
        ("job_type", run.job_type),
        ("tags", ", ".join(run.tags)),
        ("notes", run.notes),
        ("wandb", run.wandb_version),
    ]
    lines += [f"  {label}: {value}" for label, value in ident if value]
    if run.exit_code is None:
        lines.append("  exit: no exit record: live or killed")
    else:
        runtime = f" after {run.runtime} s" if run.runtime else ""
        lines.append(f"  exit: code {run.exit_code}{runtime}")
    if run.truncated:
        lines.append(f"  truncated: yes ({run.truncation_reason})")
    else:
        lines.append("  truncated: no")
    if run.preempting:
        lines.append("  preempting: marked")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(run.record_counts.items()))
    lines.append(f"  records: {counts or 'none'}")

    lines.append(f"config ({len(run.config)} keys):")
    lines += _config_lines(run.config)

    columns: dict[str, list[Any]] = {}
    for row in run.history:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    trained = run.step_values(step_key)
    steps = [row["_step"] for row in run.history if isinstance(row.get("_step"), int)]
    if trained:  # the training step every sdxl_dist_log row carries; W&B's _step only counts rows
        step_text = f", {step_key} {min(trained):g}..{max(trained):g}"
    else:
        step_text = f", steps {min(steps)}..{max(steps)}" if steps else ""
    lines.append(f"history: {len(run.history)} rows{step_text}")
    user = sorted(k for k in columns if not k.startswith("_") and not k.startswith(SYSTEM_PREFIX))
    system = sorted(k for k in columns if k.startswith(SYSTEM_PREFIX))
    lines += [f"  {_key_line(key, columns[key])}" for key in user]
    if system:
        rows = sum(1 for row in run.history if any(k.startswith(SYSTEM_PREFIX) for k in row))
        lines.append(f"system: {len(system)} keys in {rows} rows")
        lines += [f"  {_key_line(key[len(SYSTEM_PREFIX):], columns[key])}" for key in system]
    if run.stats:
        lines.append(f"wandb system stats: {len(run.stats)} samples")

    lines.append(f"artifacts: {len(run.artifacts)}")
    for art in run.artifacts:
        aliases = ", ".join(art.aliases) or "-"
        lines.append(
            f"  {art.name}:{art.local_version} ({art.type}) aliases [{aliases}], {len(art.files)} files, "
            f"{art.size} bytes, digest {art.digest[:12]}"
        )
        if art.metadata:
            lines.append(f"    metadata: {_fmt(art.metadata)}")
    lines.append(f"media files: {len(run.media_files)}")
    return "\n".join(lines)
