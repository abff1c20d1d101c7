"""The whole report of a real requeued run (sdxl_dist_log.report.build and ``sdxl-dist-log report``).

The run is made by the installed wandb in a subprocess, offline: three attempts of one run id, each in its own
directory (a requeued job's), the first preempted (marked, then finished with code 1), the second killed (its exit
record cut off, as a SIGKILL leaves it), the third finished; each resumed from an earlier step than the last reached.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "offline"))  # offline_support.py

from offline_support import PRELUDE, RUN_TIMEOUT_S, subprocess_env, wandb_file  # noqa: E402

from sdxl_dist_log.cli import main  # noqa: E402
from sdxl_dist_log.offline import find_run_dirs, read_run  # noqa: E402
from sdxl_dist_log.report import SECTION_IDS, ReportOptions, load_runs, merge_attempts, report_html  # noqa: E402

REQUEUED_RUN = """
plan = [(range(0, 10), "preempted"), (range(6, 14), "killed"), (range(12, 20), "finished")]
for k, (steps, end) in enumerate(plan):
    run = wandb.init(project="proj", id="req12", resume="allow", dir=str(out / f"attempt{k}"), settings=settings,
                     config={"lr": 0.1, "sdxl_dist_log": {"step_metric": "trainer/step", "world_size": 2}})
    for s in steps:
        run.log({"trainer/step": s, "metrics/loss": 1.0 / (s + 1), "metrics/loss_min": 0.5 / (s + 1),
                 "metrics/loss_max": 2.0 / (s + 1), "system/gpu0/utilization": 50.0 + k,
                 "straggler/data/score/rank0": 1.0, "straggler/data/score/rank1": 1.0 + k}, commit=True)
    image = wandb.Image(np.full((8, 8, 3), 60 * k, np.uint8), caption=f"[rank 1] attempt {k}")
    run.log({"trainer/step": steps[-1], "sample/images": [image]})
    (out / "w.txt").write_text(f"weights {k}")
    artifact = wandb.Artifact("ckpt", type="model", metadata={"step": steps[-1]})
    artifact.add_file(str(out / "w.txt"))
    run.log_artifact(artifact, aliases=["latest"])
    if end == "preempted":
        run.mark_preempting()
        run.finish(exit_code=1)
    else:
        run.finish()
other = wandb.init(project="proj", id="other", dir=str(out / "other"), settings=settings)
other.log({"metrics/loss": 1.0})
other.finish()
"""


@pytest.fixture(scope="module")
def requeued(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The three attempts' run directories, in order."""
    tmp = tmp_path_factory.mktemp("requeued")
    script = tmp / "make_run.py"
    script.write_text(PRELUDE + REQUEUED_RUN)
    proc = subprocess.run([sys.executable, str(script), str(tmp)], env=subprocess_env(tmp), capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dirs = [find_run_dirs(tmp / f"attempt{k}")[0] for k in range(3)]
    killed = wandb_file(dirs[1])
    killed.write_bytes(killed.read_bytes()[:-30])  # the exit record is gone, as after a SIGKILL
    assert read_run(dirs[1]).exit_code is None
    return dirs


def test_three_directories_of_one_id_are_one_run_with_three_ends(requeued: list[Path]) -> None:
    run = merge_attempts(load_runs(list(reversed(requeued))))
    assert [a.run.path for a in run.attempts] == requeued
    assert [a.run.end_state for a in run.attempts] == ["preempted", "killed", "finished"]
    assert [row["trainer/step"] for row in run.current_rows() if "metrics/loss" in row] == list(range(20))
    assert [(i, a.local_version) for i, a in run.artifacts] == [(0, "v0"), (1, "v1"), (2, "v2")]


def test_report_has_every_section_and_what_the_run_logged(requeued: list[Path]) -> None:
    html = report_html(merge_attempts(load_runs(requeued)), ReportOptions(), library_js="")
    sections = re.findall(r'<section id="([^"]+)"', html)
    assert tuple(sections) == SECTION_IDS
    for text in ("preempted (exit code 1)", "killed (no exit record), file cut short", "finished (exit code 0)",
                 "<b>ckpt:v2</b>", "metrics/loss", "gpu0", "rank 1", "&quot;lr&quot;: 0.1",
                 "1 of 1 image logs", "attempt 2</figcaption>"):  # the others' images were at steps redone later
        assert text in html, text
    assert html.count("data:image/png;base64,") == 1
    assert "This run logged no" not in html, "every section has data"


def test_report_command_writes_the_file(requeued: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    out = tmp_path / "sub" / "run.html"
    assert main(["report", *(str(p.parent.parent) for p in requeued), "-o", str(out)]) == 0  # the attempt folders
    printed = capsys.readouterr().out
    assert printed.startswith(f"report: {out} (") and out.stat().st_size > 1_000_000
    text = out.read_text(encoding="utf-8")
    assert "Plotly.newPlot" in text and "3 attempts" in text


def test_report_command_refuses_two_runs_in_one_line(requeued: list[Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    other = requeued[0].parent.parent.parent / "other"
    status = main(["report", str(requeued[2]), str(other), "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("sdxl-dist-log report: error: the directories hold 2 different runs")
    assert not (tmp_path / "r.html").exists()
