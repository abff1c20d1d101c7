"""The ``sdxl-dist-log`` command line (sdxl_dist_log.cli): help shows every default, parsing, one-line user errors,
and ``inspect`` run as the installed command.

Everything but the last section runs in this process through ``main(argv)``; the submit runs that start jobs are in
tests/launch/test_slurm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from sdxl_dist_log import cli
from sdxl_dist_log.cli import main


@pytest.mark.parametrize("name", ["demo", "inspect", "submit"])
def test_help_shows_every_default_and_choice(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: sdxl-dist-log {name} ")
    command = cli.cli.commands[name]
    ctx = click.Context(command, info_name=name, show_default=True)
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        help_text = param.get_help_record(ctx)[1]
        assert "[default: " in help_text, f"{name} {param.opts[0]} shows no default: {help_text!r}"
        if isinstance(param.type, click.Choice):
            assert "|".join(param.type.choices) in out


def test_group_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("demo", "inspect", "submit"))


def test_executor_help_says_what_auto_picks(capsys: pytest.CaptureFixture[str]) -> None:
    main(["submit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "auto picks slurm when sbatch is on PATH, else local" in out


# ------------------------------------------------------------------------------------------------------------------
# user errors: exit 2, one line on stderr, no traceback
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "t.py"
    path.write_text("")
    return str(path)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["inspect", "{tmp}/nowhere"], "nowhere"),
        (["inspect"], "Missing argument 'RUN_DIR...'"),
        (["demo", "--nproc", "0"], "'--nproc': 0 is not in the range x>=1"),
        (["demo", "--steps", "0"], "'--steps': 0 is not in the range x>=1"),
        (["demo", "--step-time", "-1"], "'--step-time'"),
        (["demo", "--system-metrics-interval", "0"], "'--system-metrics-interval'"),
        (["demo", "--out-dir", "{script}"], "'--out-dir': Directory"),
        (["demo", "--fake-nvml", "gpus=x"], "'--fake-nvml'"),
        (["demo", "--mode", "sometimes"], "'--mode'"),
        (["submit"], "Missing argument 'SCRIPT'"),
        (["submit", "--nodes", "2"], "Missing argument 'SCRIPT'"),
        (["submit", "{tmp}/missing.py"], "missing.py' does not exist"),
        (["submit", "{script}", "--sbatch", "=x"], "'--sbatch': expected KEY=VALUE or KEY, got '=x'"),
        (["submit", "{script}", "--lr", "0.1"], "The script's own options go after --"),
        (["submit", "{script}", "--nodes", "0"], "'--nodes'"),
        (["submit", "{script}", "--executor", "debug"], "'--executor'"),
        (["submit", "{script}", "--executor", "local", "--nodes", "2"], "nodes must be 1"),
        (["nosuchcommand"], "No such command"),
    ],
)
def test_user_error_is_one_line_and_exit_2(argv: list[str], says: str, script: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(tmp=tmp_path, script=script) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("sdxl-dist-log") and says in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_submit_with_slurm_executor_and_no_sbatch_is_a_user_error(script: str, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", "")
    assert main(["submit", script, "--executor", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "sdxl-dist-log submit: error: executor='slurm' but sbatch is not on PATH"


# ------------------------------------------------------------------------------------------------------------------
# submit's argument forms: options before and after SCRIPT, the script's arguments after --
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "nodes", "wait", "sbatch", "script_args"),
    [
        (["t.py"], 1, False, {}, ()),
        (["t.py", "--nodes", "2", "--wait", "--", "--lr", "0.1"], 2, True, {}, ("--lr", "0.1")),
        (["--nodes", "3", "t.py", "--sbatch", "qos=hi", "--", "x"], 3, False, {"qos": "hi"}, ("x",)),
        (["--sbatch", "a=1", "t.py", "--sbatch", "b"], 1, False, {"a": "1", "b": True}, ()),
        (["t.py", "--", "--nodes", "9"], 1, False, {}, ("--nodes", "9")),
        (["--wait", "t.py", "--nodes", "2", "--", "--", "a"], 2, True, {}, ("--", "a")),
    ],
)
def test_submit_argument_forms(argv: list[str], nodes: int, wait: bool, sbatch: dict, script_args: tuple,
                               tmp_path: Path) -> None:
    (tmp_path / "t.py").write_text("")  # the tests run in tmp_path
    ctx = cli.submit_command.make_context("submit", argv)
    params = ctx.params
    assert (params["script"], params["nodes"], params["wait"], params["sbatch"], params["script_args"]) == (
        "t.py", nodes, wait, sbatch, script_args)


def test_submit_defaults_match_submit_function() -> None:
    import inspect

    from sdxl_dist_log.launch.submit import submit

    ctx = cli.submit_command.make_context("submit", [__file__])
    signature = inspect.signature(submit).parameters
    for name in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "partition", "timeout_min", "account",
                 "executor", "folder", "job_name", "mem_gb"):
        assert ctx.params[name] == signature[name].default, name
    assert ctx.params["requeue"] is signature["checkpointable"].default is True


# ------------------------------------------------------------------------------------------------------------------
# inspect, run as the installed command on a real run
# ------------------------------------------------------------------------------------------------------------------
SUBPROCESS_TIMEOUT_S = 90


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("sdxl-dist-log")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdxl_dist_log.cli"]


def _small_run() -> str:
    from sdxl_dist_log import WandbConfig, WandbLogger

    with WandbLogger(WandbConfig(project="inspected", mode="offline", dir="out", log_system_metrics=False)) as wb:
        wb.log_metrics({"loss": 0.5, "lr": 1e-4}, step=0)
        wb.log_metrics({"part_a": 1.0}, step=1, commit=False)
        wb.log_metrics({"part_b": 2.0}, step=1)
        return os.path.abspath(wb.run_dir)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, in_child: Callable[..., Any]) -> str:
    return in_child(_small_run, tmp_path_factory.mktemp("inspected"))


@pytest.mark.timeout(300)
def test_inspect_prints_the_summary(run_dir: str) -> None:
    """``inspect RUN_DIR`` exits 0 and prints the run id, project, exit code and the logged keys."""
    from sdxl_dist_log.offline import read_run

    done = subprocess.run([*_cli(), "inspect", run_dir], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    assert f"run {read_run(run_dir).run_id}" in done.stdout
    assert "project: inspected" in done.stdout and "exit: code 0" in done.stdout
    assert "metrics/loss" in done.stdout and "metrics/part_b" in done.stdout
    # one attempt that finished, in one part: nothing to add about attempts
    assert "attempts of run" not in done.stdout


@pytest.mark.timeout(300)
def test_inspect_bad_path_exits_2_with_a_message(tmp_path: Path) -> None:
    """A missing path, or a folder without runs, exits 2 with a one-line reason and no traceback."""
    missing = tmp_path / "nowhere"
    done = subprocess.run([*_cli(), "inspect", str(missing)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 2
    assert str(missing) in done.stderr and "Traceback" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = subprocess.run([*_cli(), "inspect", str(empty)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 2 and "no run directories" in done.stderr


# ------------------------------------------------------------------------------------------------------------------
# report (a real run's report: tests/report/test_build.py)
# ------------------------------------------------------------------------------------------------------------------
def test_report_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: sdxl-dist-log report [OPTIONS] RUN_DIR...")
    ctx = click.Context(cli.report_command, info_name="report", show_default=True)
    for param in cli.report_command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert "[default: " in param.get_help_record(ctx)[1], param.opts[0]


def test_report_defaults_match_report_options() -> None:
    from sdxl_dist_log.report import ReportOptions

    params = cli.report_command.make_context("report", ["x"]).params
    defaults = ReportOptions()
    assert (params["max_points"], params["max_columns"], params["max_image_steps"]) == (
        defaults.max_points, defaults.max_columns, defaults.max_image_steps)
    assert params["output"] == "report.html"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["report"], "Missing argument 'RUN_DIR...'"),
        (["report", "nowhere"], "no such run file or directory: nowhere"),
        (["report", "."], "holds no run directories"),
        (["report", ".", "--max-points", "1"], "'--max-points': 1 is not in the range x>=2"),
    ],
)
def test_report_user_errors_are_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdxl-dist-log report: error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not Path("report.html").exists()


@pytest.mark.timeout(300)
def test_inspect_is_quiet_when_the_reader_goes_away(run_dir: str) -> None:
    """``inspect RUN | head``: the reader closes the pipe early; no BrokenPipeError traceback, nothing on stderr,
    and click's exit status for it (1)."""
    proc = subprocess.Popen([*_cli(), "inspect", *[run_dir] * 200], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()  # what head does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=SUBPROCESS_TIMEOUT_S) == 1
    assert err == ""


# ------------------------------------------------------------------------------------------------------------------
# demo --resume outside SLURM: the same run id, from the out dir
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_resume_continues_the_same_run_without_slurm(tmp_path: Path) -> None:
    from sdxl_dist_log.offline import find_run_dirs, read_run

    out = tmp_path / "demo"
    common = ["--nproc", "2", "--out-dir", str(out), "--step-time", "0", "--system-metrics-interval", "5"]
    for extra in (["--steps", "10"], ["--steps", "12", "--resume"]):
        done = subprocess.run([*_cli(), "demo", *common, *extra], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    runs = [read_run(path) for path in find_run_dirs(out)]
    assert len(runs) == 2
    assert runs[0].run_id == runs[1].run_id == (out / "run_id").read_text().strip()
    steps = [sorted({row[run.step_metric] for row in run.rows_with("metrics/loss")}) for run in runs]
    assert sorted(steps) == [list(range(10)), [10, 11]]  # the second part picks up at the checkpoint
