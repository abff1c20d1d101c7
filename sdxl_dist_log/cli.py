"""The ``sdxl-dist-log`` command: ``demo``, ``inspect``, ``report`` and ``submit``, one click group.

Every option of every subcommand is declared here, so ``--help`` shows each default and choice, and one parser
handles the whole command line, ``submit``'s ``--`` included. A user error (a bad value, a missing argument, an
unknown option, a path that holds no run) ends in one line on stderr and exit status 2, never a traceback.
:func:`main` is the console entry point (also ``python -m sdxl_dist_log.cli``, which torchrun runs as
``torchrun -m sdxl_dist_log.cli demo``); :func:`run_command` runs one command the same way (``examples/train.py``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

__all__ = ["cli", "demo_command", "inspect_command", "main", "report_command", "run_command", "submit_command"]

_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 110}
_TAIL_LINES = 40


@click.group(context_settings=_SETTINGS)
def cli() -> None:
    """Rank-aware W&B logging for distributed jobs."""


# ------------------------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------------------------
@cli.command("demo", context_settings=_SETTINGS, short_help="train a tiny model on N ranks into a W&B run")
@click.option("--nproc", type=click.IntRange(min=1), default=2, help="ranks to spawn when not under a launcher")
@click.option("--steps", type=click.IntRange(min=1), default=20, help="training steps")
@click.option("--out-dir", type=click.Path(file_okay=False), default="outputs/demo",
              help="W&B run, checkpoints, logs and the run id go here")
@click.option("--mode", type=click.Choice(["online", "offline", "disabled"]), default="offline",
              help="W&B mode (online without a key falls back to offline)")
@click.option("--system-metrics-interval", type=click.FloatRange(min=0, min_open=True), default=0.5,
              help="seconds between system samples")
@click.option("--step-time", type=click.FloatRange(min=0), default=0.05, help="seconds of simulated work per step")
@click.option("--async-metrics/--no-async-metrics", default=False,
              help="run logging collectives on a background thread")
@click.option("--resume/--no-resume", default=False,
              help="continue from the last checkpoint under --out-dir, into the same W&B run (its id is kept there)")
@click.option("--fake-nvml", metavar="SPEC", default=None, show_default="the real NVML",
              callback=lambda ctx, param, value: _fake_nvml_spec(value),
              help="sample simulated GPUs instead of NVML, e.g. 'gpus=2,offset=5' (GPU figures without a GPU)")
def demo_command(nproc: int, **train_options: Any) -> int:
    """Train a tiny model on N local ranks (or on a launcher's ranks) into a W&B run, then summarise the run.

    Under a launcher (torchrun, SLURM, submitit: RANK and WORLD_SIZE are set) it trains on the launcher's ranks and
    --nproc is ignored; otherwise it spawns --nproc ranks on this machine (gloo on CPU, NCCL when every rank has a
    GPU).
    """
    from sdxl_dist_log.demo import run

    return run(nproc, **train_options)


def _fake_nvml_spec(value: str | None) -> str | None:
    if value is None:
        return None
    from sdxl_dist_log.demo import check_fake_nvml_spec

    try:
        check_fake_nvml_spec(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--fake-nvml'") from None
    return value


# ------------------------------------------------------------------------------------------------------------------
# inspect
# ------------------------------------------------------------------------------------------------------------------
@cli.command("inspect", context_settings=_SETTINGS, short_help="summarise offline W&B runs")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
def inspect_command(run_dirs: tuple[str, ...]) -> int:
    """Summarise offline W&B runs: run directories, .wandb files, or folders holding runs (each run is shown), then,
    for a run in several parts or attempts (a requeued job), each attempt: steps, how it ended, its parts, gaps."""
    from sdxl_dist_log.offline import attempts_of, find_run_dirs, format_attempts, format_run, read_run, tells_more

    status = 0
    read: dict[str, list] = {}
    for index, given in enumerate(run_dirs):
        path = Path(given)
        # a folder of several runs (the parts of a requeued run, say): show each
        runs = find_run_dirs(path) if path.is_dir() and not list(path.glob("*.wandb")) else [path]
        for run_path in runs or [path]:
            try:
                run = read_run(run_path, summary=False)  # what inspect prints needs no summary: a third of the read
            except (OSError, ValueError) as exc:  # missing, unreadable, or not a run
                print(f"sdxl-dist-log inspect: {run_path}: {exc}", file=sys.stderr)
                status = 2
                continue
            read.setdefault(run.run_id, []).append(run)
            print(("\n" if index or run_path != runs[0] else "") + format_run(run))
    for parts in read.values():
        attempts = attempts_of(parts)
        if tells_more(parts, attempts):  # one finished attempt in one part: its summary above says it all
            print("\n" + format_attempts(parts, attempts))
    return status


# ------------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------------
@cli.command("report", context_settings=_SETTINGS, short_help="write a self-contained HTML report of a run")
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR...")
@click.option("-o", "--output", default="report.html", type=click.Path(dir_okay=False, writable=True),
              help="the HTML file to write")
@click.option("--max-points", type=click.IntRange(min=2), default=1000,
              help="points per line at most; longer lines keep each stretch's lowest and highest value")
@click.option("--max-columns", type=click.IntRange(min=1), default=1000, help="time buckets per heatmap row at most")
@click.option("--max-image-steps", type=click.IntRange(min=2), default=12,
              help="image logs shown at most, spread over the run")
def report_command(run_dirs: tuple[str, ...], output: str, max_points: int, max_columns: int,
                   max_image_steps: int) -> int:
    """Write one HTML file showing a run: metrics, GPU heatmaps, stragglers, images, artifacts, config, attempts.

    RUN_DIR is a run directory, its .wandb file, or a folder holding runs. The directories of a requeued run (one
    run id, one directory per attempt) are read as one run; runs of different ids are an error. The file needs no
    network: the plotting library and the images are inside it.
    """
    from sdxl_dist_log.report import ReportOptions, write_report

    options = ReportOptions(max_points=max_points, max_columns=max_columns, max_image_steps=max_image_steps)
    try:
        path = write_report(run_dirs, output, options)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as exc:
        raise click.UsageError(str(exc), ctx=click.get_current_context()) from None
    print(f"report: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


# ------------------------------------------------------------------------------------------------------------------
# submit
# ------------------------------------------------------------------------------------------------------------------
class _SubmitCommand(click.Command):
    """``submit``: an unknown option most likely belongs to the script, so the error says where those go."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            raise click.UsageError(f"{exc.format_message()} The script's own options go after --.", ctx) from None


def _sbatch_option(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict[str, str | bool]:
    from sdxl_dist_log.launch.submit import parse_sbatch_options

    try:
        return parse_sbatch_options(items)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@cli.command("submit", cls=_SubmitCommand, context_settings=_SETTINGS,
             short_help="run a script in every task of a SLURM (or local) job via submitit")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("script_args", nargs=-1, metavar="[-- ARGS...]")
@click.option("--nodes", type=click.IntRange(min=1), default=1, help="number of nodes")
@click.option("--tasks-per-node", type=click.IntRange(min=1), default=1, help="tasks (processes) per node")
@click.option("--gpus-per-node", type=click.IntRange(min=0), default=0, help="GPUs per node")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=1, help="CPUs per task")
@click.option("--mem-gb", type=click.FloatRange(min=0, min_open=True), default=None,
              show_default="the cluster's default", help="memory per node in GB")
@click.option("--partition", default=None, show_default="the cluster's default", help="SLURM partition")
@click.option("--time", "timeout_min", type=click.IntRange(min=1), default=60, metavar="MIN",
              help="time limit in minutes")
@click.option("--account", default=None, show_default="none", help="SLURM account")
@click.option("--job-name", default="sdxl", help="SLURM job name")
@click.option("--sbatch", multiple=True, callback=_sbatch_option, metavar="KEY[=VALUE]", show_default="none",
              help="extra sbatch option, repeatable; KEY alone is a flag (#SBATCH --KEY)")
@click.option("--executor", type=click.Choice(["auto", "slurm", "local"]), default="auto",
              help="auto picks slurm when sbatch is on PATH, else local (processes on this machine)")
@click.option("--folder", default="outputs/submitit", help="submitit folder for pickles and logs")
@click.option("--requeue/--no-requeue", default=True, help="requeue the job on preemption or timeout")
@click.option("--wait/--no-wait", default=False, help="wait for the job; exit 1 if a task failed")
@click.option("--wait-timeout", type=click.FloatRange(min=0), default=None, metavar="S", show_default="no limit",
              help="with --wait: give up and cancel the job after S seconds")
def submit_command(script: str, script_args: tuple[str, ...], nodes: int, tasks_per_node: int, gpus_per_node: int,
                   cpus_per_task: int, mem_gb: float | None, partition: str | None, timeout_min: int,
                   account: str | None, job_name: str, sbatch: dict[str, str | bool], executor: str, folder: str,
                   requeue: bool, wait: bool, wait_timeout: float | None) -> int:
    """Run SCRIPT in every task of a submitit job (SLURM, or processes on this machine).

    Each task runs SCRIPT as __main__ with sys.argv set to SCRIPT and ARGS, and with MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE and LOCAL_RANK exported for torch.distributed. Options may come before or after SCRIPT; the script's
    own options go after --. Prints the job id and each task's log files; with --wait, each task's outcome.
    """
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from sdxl_dist_log.launch.submit import ScriptTask, submit

    try:
        job = submit(
            ScriptTask(script, script_args),
            nodes=nodes,
            tasks_per_node=tasks_per_node,
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            partition=partition,
            timeout_min=timeout_min,
            account=account,
            slurm_additional_parameters=sbatch or None,
            executor=executor,
            folder=folder,
            job_name=job_name,
            mem_gb=mem_gb,
            checkpointable=requeue,
        )
    except (ValueError, FileNotFoundError) as exc:  # e.g. --executor slurm without sbatch on PATH
        raise click.UsageError(str(exc), ctx=click.get_current_context()) from None
    except (FailedJobError, FailedSubmissionError) as exc:  # sbatch refused it: the cluster's answer, exit 1
        raise click.ClickException(f"submission failed: {exc}") from None
    _print_submission(job)
    return _wait_and_report(job, wait_timeout) if wait else 0


def _print_submission(job: Any) -> None:
    ntasks = job.num_tasks
    print(f"submitted job {job.job_id} ({ntasks} task{'s' if ntasks != 1 else ''}, {type(job).__name__})")
    for i in range(ntasks):
        paths = job.task(i).paths if ntasks > 1 else job.paths
        print(f"  task {i}: stdout {paths.stdout}")
        print(f"  task {i}: stderr {paths.stderr}")
    sys.stdout.flush()


def _wait_and_report(job: Any, timeout_s: float | None) -> int:
    """Wait for ``job``, print each task's outcome and the stderr tail of each failed one; the exit status."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while not job.done():
        if deadline is not None and time.monotonic() > deadline:
            print(f"job {job.job_id}: not done after {timeout_s:g} s; cancelling", file=sys.stderr)
            job.cancel(check=False)
            return 1
        time.sleep(1.0)

    ntasks = job.num_tasks
    failed = 0
    for i in range(ntasks):
        task = job.task(i) if ntasks > 1 else job
        exc = task.exception()
        if exc is None:
            print(f"task {i}: ok")
            continue
        failed += 1
        print(f"task {i}: FAILED ({type(exc).__name__})", file=sys.stderr)
        print(f"---- stderr of task {i} (last {_TAIL_LINES} lines): {task.paths.stderr}", file=sys.stderr)
        stderr = (task.stderr() or "").rstrip()
        print("\n".join(stderr.splitlines()[-_TAIL_LINES:]) if stderr else "(empty)", file=sys.stderr)
    print(f"job {job.job_id}: {ntasks - failed}/{ntasks} tasks succeeded")
    return 1 if failed else 0


# ------------------------------------------------------------------------------------------------------------------
# running
# ------------------------------------------------------------------------------------------------------------------
def run_command(command: click.Command, argv: Sequence[str] | None, prog_name: str) -> int:
    """Run a click command as a program and return its exit status; a user error is one line on stderr.

    Args:
        command: the command or group.
        argv: its arguments; None reads ``sys.argv[1:]``.
        prog_name: the program name that usage lines and error lines start with.

    Returns:
        The command's return value (0 when it returns None); 2 on a user error; 1 when interrupted, or when the
        reader of stdout went away (``sdxl-dist-log inspect RUN | head``: click ends the command quietly).
    """
    try:
        result = command.main(args=None if argv is None else list(argv), prog_name=prog_name,
                              standalone_mode=False)

    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help, as click prints it
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:
        where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else prog_name
        message = "; ".join(line.strip() for line in exc.format_message().splitlines() if line.strip())
        print(f"{where}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except click.Abort:
        print("Aborted!", file=sys.stderr)
        return 1
    return int(result or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sdxl-dist-log`` console entry point.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 1 when a waited-for task failed, 2 on a user error.
    """
    return run_command(cli, argv, "sdxl-dist-log")


if __name__ == "__main__":
    sys.exit(main())
