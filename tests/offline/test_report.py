"""The text report (``sdxl_dist_log.offline.report``) that ``sdxl-dist-log inspect`` prints."""

from __future__ import annotations

from sdxl_dist_log.offline import OfflineRun, format_run


def test_format_run(full_run: OfflineRun) -> None:
    text = format_run(full_run)
    for needle in [
        full_run.run_id,
        "group: grp",
        "job_type: train",
        "tags: a, b",
        "exit: code 0",
        "truncated: no",
        "model: {depth=3, attn.heads=8}",
        "history: 6 rows, steps 0..5",
        "metrics/loss: 5 rows, first=1 last=0.2, min=0.2 max=1",
        "sample/images: 1 rows, 2 images in 1 entries",
        "system: 1 keys in 5 rows",
        "gpu0/util: 5 rows",
        "ckpt:v0 (model) aliases [latest, step_1], 1 files, 2 bytes",
        "ckpt:v1 (model) aliases [latest, step_2], 2 files, 11 bytes",
        'metadata: {"step":1,"opt":{"name":"adam"}}',
        "media files: 2",
    ]:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert "\n  system/gpu0/util" not in text  # system keys only in their own block
