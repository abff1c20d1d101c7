"""The table sections (sdxl_dist_log.report.tables): run and attempts, images as thumbnails, artifacts, config."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from sdxl_dist_log.offline.model import OfflineArtifact, OfflineRun
from sdxl_dist_log.report.attempts import merge_attempts
from sdxl_dist_log.report.tables import (
    THUMBNAIL_PX,
    artifacts_section,
    config_section,
    images_section,
    run_section,
)


def one_run(path: Path, **fields) -> OfflineRun:
    return OfflineRun(path / "offline-run-20250101_000000-abc", run_id="abc", **fields)


def image_rows(run_dir: Path, steps: range, size: int = 512) -> list[dict]:
    rows = []
    for step in steps:
        names = []
        for rank in range(2):
            name = f"media/images/sample/images_{step}_{rank}.png"
            target = run_dir / "files" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((size, size, 3), 40 * rank, dtype=np.uint8)).save(target)
            names.append(name)
        rows.append({"trainer/step": step, "sample/images": {
            "_type": "images/separated", "count": 2, "filenames": names,
            "captions": [f"[rank {r}] step {step}" for r in range(2)]}})
    return rows


def test_run_section_names_every_attempt_and_how_it_ended(tmp_path: Path) -> None:
    def attempt(minute: int, **fields) -> OfflineRun:
        rows = [{"trainer/step": minute + i, "_timestamp": 1.7e9 + 60 * minute + i} for i in range(3)]
        return OfflineRun(tmp_path / f"offline-run-20250101_00{minute:02d}00-abc", run_id="abc", project="p",
                          start_time=1.7e9 + 60 * minute, history=rows, **fields)

    merged = merge_attempts([attempt(0, preempting=True, exit_code=1), attempt(10), attempt(20, exit_code=0,
                                                                                           runtime=30)])
    section = run_section(merged)
    assert "1; the run" not in section.body and "3; the run finished (exit code 0)" in section.body
    for text in ("preempted (exit code 1)", "killed (no exit record)", "finished (exit code 0)",
                 "offline-run-20250101_001000-abc", "2023-11-14 22:13:20 UTC"):
        assert text in section.body, text
    (figure,) = section.figures.values()
    ends = [t["text"] for t in figure["data"][1::2]]
    assert ends == [["preempted"], ["killed"], ["finished"]]
    assert figure["data"][4]["x"] == [1.7e12 + 1_200_000, 1.7e12 + 1_230_000]


def test_images_are_embedded_as_small_thumbnails_with_their_ranks(tmp_path: Path) -> None:
    run = one_run(tmp_path)
    run.history = image_rows(run.path, range(0, 3))
    section = images_section(merge_attempts([run]))
    uris = re.findall(r'src="data:image/(jpeg|png);base64,([^"]+)"', section.body)
    assert len(uris) == 6 and {kind for kind, _ in uris} == {"jpeg"}
    image = Image.open(io.BytesIO(base64.b64decode(uris[0][1])))
    assert image.size == (THUMBNAIL_PX, THUMBNAIL_PX)
    assert section.body.count('<span class="rank">rank 1</span>step 2') == 1
    assert "trainer/step 2 · sample/images" in section.body and "file://" not in section.body


def test_images_of_a_long_run_are_spread_over_it_and_a_missing_file_is_named(tmp_path: Path) -> None:
    run = one_run(tmp_path)
    run.history = image_rows(run.path, range(0, 100), size=16)
    (run.path / "files" / "media/images/sample/images_99_1.png").unlink()
    section = images_section(merge_attempts([run]), max_steps=4)
    steps = re.findall(r"trainer/step (\d+) ·", section.body)
    assert steps == ["0", "33", "66", "99"] and "4 of 100 image logs" in section.body
    assert "missing: media/images/sample/images_99_1.png" in section.body
    assert "data:image/png" in section.body, "tiny images stay lossless"


def test_sections_of_a_run_without_images_artifacts_or_config_say_so(tmp_path: Path) -> None:
    merged = merge_attempts([one_run(tmp_path)])
    for section, text in ((images_section(merged), "no images"), (artifacts_section(merged), "no artifacts"),
                          (config_section({}), "no config")):
        assert section.empty and text in section.body


def test_artifacts_with_versions_aliases_and_metadata(tmp_path: Path) -> None:
    arts = [OfflineArtifact("ckpt", "model", ["latest"], {"step": 10}, "d" * 32, ["model.pt"], size=3 * 2**20),
            OfflineArtifact("ckpt", "model", ["final", "latest"], {"step": 20}, "e" * 32, ["model.pt"], size=10,
                            version_index=1)]
    section = artifacts_section(merge_attempts([one_run(tmp_path, artifacts=arts)]))
    assert "<b>ckpt:v0</b>" in section.body and "<b>ckpt:v1</b>" in section.body
    assert '<span class="alias">final</span><span class="alias">latest</span>' in section.body
    assert "3.0 MiB" in section.body and "{&quot;step&quot;: 20}" in section.body and "dddddddddddd" in section.body


def test_config_is_shown_escaped() -> None:
    section = config_section({"b": {"x": "</pre><script>"}, "a": 1})
    assert section.body.startswith("<pre>{\n  &quot;a&quot;: 1,") and "&lt;/pre&gt;&lt;script&gt;" in section.body
