"""``sdxl-dist-log submit SCRIPT.py [options] -- script args``: run a training script in every task of a submitit job.

Example:
    sdxl-dist-log submit launch/train_demo.py --nodes 1 --tasks-per-node 2 --executor slurm --wait -- --steps 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_submit_parser", "parse_sbatch_options", "resolve_submit_args", "run_submit", "split_script_args"]

_TAIL_LINES = 40


def parse_sbatch_options(items: list[str] | None) -> dict[str, Any]:
    """``["qos=high", "exclusive", "mail-type=END"]`` -> ``{"qos": "high", "exclusive": True, "mail-type": "END"}``.

    A bare ``KEY`` means the flag without value (``#SBATCH --KEY``). Leading dashes are dropped.

    Raises:
        ValueError: on an empty key.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ValueError(f"--sbatch expects KEY=VALUE or KEY, got {item!r}")
        out[key] = value if sep else True
    return out


def add_submit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``submit`` sub-command to an ``argparse`` sub-parsers object; returns its parser.

    The parser's default ``func`` is :func:`run_submit`.
    """
    p = subparsers.add_parser(
        "submit",
        help="submit a training script to SLURM (or local processes) through submitit",
        description="Run SCRIPT.py (as __main__, with sys.argv set) in every task of a submitit job, with "
        "MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK exported for torch.distributed. Arguments after "
        "'--' go to the script.",
        usage="%(prog)s SCRIPT.py [options] [-- script args]",
    )
    # One REMAINDER positional holds SCRIPT and everything after it: a plain `script` positional would swallow the
    # `--` that separates the script's own arguments (argparse matches it as part of the positional and drops it).
    p.add_argument(
        "submit_argv",
        nargs=argparse.REMAINDER,
        metavar="SCRIPT.py [options] [-- script args]",
        help="the Python script each task runs; submit options may follow it; the script's arguments go after --",
    )
    _add_options(p)
    p.set_defaults(func=run_submit)
    return p


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    p.add_argument("--tasks-per-node", type=int, default=1, help="tasks (processes) per node (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0)")
    p.add_argument("--cpus-per-task", type=int, default=1, help="CPUs per task (default 1)")
    p.add_argument("--mem-gb", type=float, default=None, help="memory per node in GB (default: cluster default)")
    p.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's default)")
    p.add_argument("--time", type=int, default=60, metavar="MIN", help="time limit in minutes (default 60)")
    p.add_argument("--account", default=None, help="SLURM account")
    p.add_argument("--job-name", default="sdxl", help="SLURM job name (default sdxl)")
    p.add_argument(
        "--sbatch", action="append", default=[], metavar="KEY=VALUE", help="extra sbatch option, repeatable"
    )
    p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto", help="default auto")
    p.add_argument("--folder", default="outputs/submitit", help="submitit folder for pickles and logs")
    p.add_argument("--no-requeue", action="store_true", help="do not requeue on preemption/timeout")
    p.add_argument("--wait", action="store_true", help="wait for the job; non-zero exit if a task failed")
    p.add_argument(
        "--wait-timeout", type=float, default=None, metavar="S", help="with --wait: give up (and scancel) after S s"
    )


def _options_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdxl-dist-log submit SCRIPT.py", add_help=False)
    _add_options(p)
    return p


def split_script_args(rest: list[str]) -> tuple[list[str], list[str]]:
    """Split what follows SCRIPT into (submit options, script arguments) at the first ``--``."""
    if "--" in rest:
        i = rest.index("--")
        return rest[:i], rest[i + 1 :]
    return rest, []


def resolve_submit_args(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str]]:
    """Split ``args.submit_argv`` into the script, submit options (merged into the namespace) and script arguments.

    ``submit train.py --nodes 2 -- --lr 0.1`` -> (Namespace(script="train.py", nodes=2, ...), ``["--lr", "0.1"]``).

    Returns:
        (the namespace with ``script`` set, the script's arguments).

    Raises:
        ValueError: no script, or an unknown option before ``--`` (script arguments must follow ``--``).
    """
    argv = list(getattr(args, "submit_argv", None) or [])
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv or argv[0].startswith("-"):
        raise ValueError("missing SCRIPT.py (usage: submit SCRIPT.py [options] [-- script args])")
    script, options, script_args = argv[0], *split_script_args(argv[1:])
    merged = argparse.Namespace(**vars(args))
    if options:
        merged, unknown = _options_parser().parse_known_args(options, namespace=merged)
        if unknown:
            raise ValueError(f"unknown submit option(s) {unknown}: put the script's own arguments after --")
    merged.script = script
    return merged, script_args


def _tail(text: str | None, n: int = _TAIL_LINES) -> str:
    if not text:
        return "(empty)"
    return "\n".join(text.rstrip().splitlines()[-n:])


def run_submit(args: argparse.Namespace) -> int:
    """Submit ``args.script`` and print the job id and log paths; with ``--wait`` wait and report each task.

    Returns:
        0 on submission (or when every task succeeded with ``--wait``), 1 when a task failed or the wait timed out,
        2 on a usage error.
    """
    from sdxl_dist_log.launch.submit import ScriptTask, submit

    # SCRIPT and the options written after it arrive in submit_argv (argparse.REMAINDER)
    try:
        args, script_args = resolve_submit_args(args)
    except (ValueError, SystemExit) as exc:  # argparse exits on a bad option value (it has printed why)
        if isinstance(exc, ValueError):
            print(f"sdxl-dist-log submit: {exc}", file=sys.stderr)
        return 2
    script = Path(args.script)
    if not script.is_file():
        print(f"sdxl-dist-log submit: no such script: {script}", file=sys.stderr)
        return 2
    try:
        extra = parse_sbatch_options(args.sbatch)
        job = submit(
            ScriptTask(str(script), script_args),
            nodes=args.nodes,
            tasks_per_node=args.tasks_per_node,
            gpus_per_node=args.gpus_per_node,
            cpus_per_task=args.cpus_per_task,
            partition=args.partition,
            timeout_min=args.time,
            account=args.account,
            slurm_additional_parameters=extra or None,
            executor=args.executor,
            folder=args.folder,
            job_name=args.job_name,
            mem_gb=args.mem_gb,
            checkpointable=not args.no_requeue,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"sdxl-dist-log submit: {exc}", file=sys.stderr)
        return 2

    ntasks = job.num_tasks
    print(f"submitted job {job.job_id} ({ntasks} task{'s' if ntasks != 1 else ''}, {type(job).__name__})")
    for i in range(ntasks):
        paths = job.task(i).paths if ntasks > 1 else job.paths
        print(f"  task {i}: stdout {paths.stdout}")
        print(f"  task {i}: stderr {paths.stderr}")
    sys.stdout.flush()
    if not args.wait:
        return 0

    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    while not job.done():
        if deadline is not None and time.monotonic() > deadline:
            print(f"job {job.job_id}: not done after {args.wait_timeout:g} s; cancelling", file=sys.stderr)
            job.cancel(check=False)
            return 1
        time.sleep(1.0)

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
        print(_tail(task.stderr()), file=sys.stderr)
    print(f"job {job.job_id}: {ntasks - failed}/{ntasks} tasks succeeded")
    return 1 if failed else 0
