"""Submit a training function to SLURM (or to local processes) through submitit, with torch.distributed wired up.

Each task of the job runs :class:`DistributedTask`, which exports ``MASTER_ADDR``/``MASTER_PORT``/``RANK``/
``WORLD_SIZE``/``LOCAL_RANK``/``LOCAL_WORLD_SIZE`` through submitit's ``TorchDistributedEnvironment`` (so
``torch.distributed.init_process_group()`` works with the default ``env://`` method), sets
``SDXL_DIST_LOG_LAUNCHER=submitit`` and calls the function. The wrapper is a
``submitit.helpers.Checkpointable``: when SLURM preempts the job or its time runs out, submitit catches the signal
(``USR2``, ``signal_delay_s`` before the end), requeues the job under the **same** ``SLURM_JOB_ID`` and calls the
function again with the same arguments; the function resumes from its own checkpoint, and sdxl_dist_log resumes the
same W&B run because the run id derives from the job id.

Example:
    >>> from sdxl_dist_log.launch.submit import submit
    >>> job = submit(train, "configs/sdxl.yaml", nodes=2, tasks_per_node=8, gpus_per_node=8,
    ...              partition="gpu", timeout_min=240)                                    # doctest: +SKIP
    >>> job.results()                                     # one result per task          # doctest: +SKIP
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from sdxl_dist_log.launch.ports import free_port

__all__ = [
    "DistributedTask",
    "PlainDistributedTask",
    "ScriptTask",
    "export_distributed_env",
    "parse_sbatch_options",
    "resolve_executor",
    "run_script",
    "slurm_parameters",
    "submit",
]

LAUNCHER_ENV = "SDXL_DIST_LOG_LAUNCHER"
_DIST_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


# --------------------------------------------------------------------------------------------------------------------
# pure helpers
# --------------------------------------------------------------------------------------------------------------------
def resolve_executor(executor: str, which: Callable[[str], str | None] = shutil.which) -> str:
    """Resolve ``"auto"`` to ``"slurm"`` when ``sbatch`` is on PATH, else ``"local"``.

    Args:
        executor: ``"auto"``, ``"slurm"`` or ``"local"``.
        which: the PATH lookup (injected in tests).

    Returns:
        ``"slurm"`` or ``"local"``.

    Raises:
        ValueError: for any other name.
    """
    if executor == "auto":
        return "slurm" if which("sbatch") else "local"
    if executor in ("slurm", "local"):
        return executor
    raise ValueError(f"executor must be 'auto', 'slurm' or 'local', got {executor!r}")


def parse_sbatch_options(items: Sequence[str] | None) -> dict[str, str | bool]:
    """Turn ``--sbatch`` items into ``slurm_additional_parameters``: ``KEY=VALUE`` keeps the value, ``KEY`` is a flag.

    ``["qos=high", "exclusive", "comment=a=b"]`` gives ``{"qos": "high", "exclusive": True, "comment": "a=b"}``;
    leading dashes are dropped (``--exclusive`` is ``exclusive``), so options can be copied from an sbatch line.

    Args:
        items: the items as given on the command line.

    Returns:
        The options by key, a flag's value being True.

    Raises:
        ValueError: an item with an empty key.
    """
    out: dict[str, str | bool] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ValueError(f"expected KEY=VALUE or KEY, got {item!r}")
        out[key] = value if sep else True
    return out


def slurm_parameters(
    *,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int = 0,
    cpus_per_task: int = 1,
    partition: str | None = None,
    timeout_min: int = 60,
    account: str | None = None,
    job_name: str = "sdxl",
    mem_gb: float | None = None,
    checkpointable: bool = True,
    signal_delay_s: int = 120,
    slurm_additional_parameters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``submitit.SlurmExecutor.update_parameters`` (a pure function, tested without SLURM).

    ``--requeue`` is added for checkpointable jobs (clusters with ``JobRequeue=0`` refuse ``scontrol requeue``
    otherwise); ``--gpus-per-node`` only when GPUs are asked for. Extra sbatch options in
    ``slurm_additional_parameters`` win over everything (keys as sbatch spells them, ``_`` or ``-``).

    Args:
        nodes, tasks_per_node, gpus_per_node, cpus_per_task, partition, timeout_min, account, job_name, mem_gb,
            checkpointable, slurm_additional_parameters: as in :func:`submit`.
        signal_delay_s: seconds before the time limit at which SLURM sends submitit's preemption signal.

    Returns:
        The parameter dict.

    Raises:
        ValueError: on non-positive counts.
    """
    if nodes < 1 or tasks_per_node < 1 or cpus_per_task < 1 or gpus_per_node < 0 or timeout_min < 1:
        raise ValueError(
            "nodes, tasks_per_node, cpus_per_task and timeout_min must be >= 1 and gpus_per_node >= 0; got "
            f"{nodes=}, {tasks_per_node=}, {cpus_per_task=}, {timeout_min=}, {gpus_per_node=}"
        )
    params: dict[str, Any] = {
        "nodes": nodes,
        "ntasks_per_node": tasks_per_node,
        "cpus_per_task": cpus_per_task,
        "time": int(timeout_min),
        "job_name": job_name,
        "signal_delay_s": signal_delay_s,
    }
    if gpus_per_node:
        params["gpus_per_node"] = gpus_per_node
    if partition:
        params["partition"] = partition
    if account:
        params["account"] = account
    if mem_gb is not None:
        params["mem"] = mem_gb  # SlurmExecutor converts GB to "NGB"/"NMB"
    extra = {str(k).replace("_", "-"): v for k, v in (slurm_additional_parameters or {}).items()}
    if checkpointable and "requeue" not in extra and "no-requeue" not in extra:
        extra["requeue"] = True
    if extra:
        params["additional_parameters"] = extra
    return params


# --------------------------------------------------------------------------------------------------------------------
# what runs in each task
# --------------------------------------------------------------------------------------------------------------------
def export_distributed_env(master_port: int | None = None) -> dict[str, str] | None:
    """Export the torch.distributed ``env://`` variables in this submitit task; returns what was exported.

    submitit's ``TorchDistributedEnvironment`` does the work for both executors: rank, world size, local rank and
    local world size from the job environment (``SLURM_*`` on SLURM, ``SUBMITIT_LOCAL_*`` under the local executor),
    master = the first host of the job, port = ``MASTER_PORT`` if set, else derived from the job id (so every task,
    and a requeued job, agrees without talking). What it does not do, done here for the local executor: the master is
    127.0.0.1 (this host's name need not resolve on a laptop), the port is the one chosen free at submit time, and a
    single-task job exports nothing. ``overwrite=True`` because values inherited from the submitting process (a job
    submitted from inside a torchrun worker) would be wrong here; CUDA_VISIBLE_DEVICES is left as the job set it.

    Args:
        master_port: the port of a local job, chosen at submit time; None derives it from the job id.

    Returns:
        The exported variables, or None outside a SLURM or local submitit job and for a single-task local job.
    """
    executor = os.environ.get("SUBMITIT_EXECUTOR", "")
    if executor not in ("slurm", "local"):
        return None
    dist = submitit.helpers.TorchDistributedEnvironment()
    if executor == "local":
        if dist.world_size <= 1:
            return None
        dist.master_addr = "127.0.0.1"
        if master_port is not None:
            dist.master_port = master_port
    dist.export(set_cuda_visible_devices=False, overwrite=True)
    return {key: os.environ[key] for key in _DIST_KEYS}


class PlainDistributedTask:
    """Picklable task: export the distributed environment, mark the launcher, call ``fn(*args, **kwargs)``.

    Not checkpointable: a preempted or timed-out job is not requeued (use :class:`DistributedTask` for that).

    Args:
        fn: the function every task runs.
        args: its positional arguments.
        kwargs: its keyword arguments.
        master_port: the port for local jobs (chosen free at submit time); SLURM jobs derive theirs from the job id.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        master_port: int | None = None,
    ) -> None:
        self.fn = fn
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.master_port = master_port

    def __call__(self) -> Any:
        export_distributed_env(self.master_port)
        os.environ[LAUNCHER_ENV] = "submitit"
        return self.fn(*self.args, **self.kwargs)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", repr(self.fn))
        return f"{type(self).__name__}({name}, args={self.args!r}, kwargs={self.kwargs!r})"


class DistributedTask(PlainDistributedTask, Checkpointable):
    """:class:`PlainDistributedTask` that submitit requeues on preemption or timeout.

    ``checkpoint()`` (inherited from ``submitit.helpers.Checkpointable``) resubmits this same object: the requeued
    job calls ``fn`` again with the same arguments and the same ``SLURM_JOB_ID``.
    """


def run_script(path: str, argv: list[str] | tuple[str, ...] = ()) -> int:
    """Run a Python file as ``__main__`` with ``sys.argv = [path, *argv]``; returns 0 when it finishes.

    ``sys.exit(0)``/``sys.exit()`` count as success. A non-zero ``sys.exit`` becomes a RuntimeError, so that submitit
    records the task as failed with a trace (a bare SystemExit would leave no result behind), except when submitit's
    own preemption handler is exiting the process after requeueing the job: that SystemExit passes through.

    Args:
        path: the script.
        argv: its arguments.

    Returns:
        0.

    Raises:
        RuntimeError: the script exited with a non-zero status.
    """
    saved_argv = sys.argv
    sys.argv = [path, *argv]
    script_dir = str(Path(path).resolve().parent)
    if script_dir not in sys.path:
        sys.path.insert(0, script_dir)
    preempted: list[int] = []
    restore = _watch_preemption_signal(preempted)
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as exc:
        if preempted:
            raise
        if exc.code in (None, 0):
            return 0
        raise RuntimeError(f"{path} exited with status {exc.code!r}") from exc
    finally:
        sys.argv = saved_argv
        restore()
    return 0


def _watch_preemption_signal(flag: list[int]) -> Callable[[], None]:
    """Chain a handler before submitit's preemption handler that records the signal in ``flag``; returns an undo."""
    try:
        from submitit.core.job_environment import JobEnvironment

        sig = JobEnvironment._usr_sig()
        previous = signal.getsignal(sig)
        if not callable(previous):
            return lambda: None

        def handler(signum: int, frame: Any) -> None:
            flag.append(signum)
            previous(signum, frame)

        signal.signal(sig, handler)
    except (ValueError, RuntimeError, OSError):  # not the main thread, unknown signal
        return lambda: None
    return lambda: signal.signal(sig, previous)


class ScriptTask:
    """Picklable callable running a script through :func:`run_script` (what ``sdxl-dist-log submit`` submits)."""

    def __init__(self, path: str, argv: list[str] | tuple[str, ...] = ()) -> None:
        self.path = str(Path(path).resolve())
        self.argv = list(argv)

    def __call__(self) -> int:
        return run_script(self.path, self.argv)

    def __repr__(self) -> str:
        return f"ScriptTask({self.path!r}, argv={self.argv!r})"


# --------------------------------------------------------------------------------------------------------------------
# submission
# --------------------------------------------------------------------------------------------------------------------
def submit(
    fn: Callable[..., Any],
    *args: Any,
    nodes: int = 1,
    tasks_per_node: int = 1,
    gpus_per_node: int = 0,
    cpus_per_task: int = 1,
    partition: str | None = None,
    timeout_min: int = 60,
    account: str | None = None,
    slurm_additional_parameters: Mapping[str, Any] | None = None,
    executor: str = "auto",
    folder: str | os.PathLike[str] = "outputs/submitit",
    job_name: str = "sdxl",
    mem_gb: float | None = None,
    checkpointable: bool = True,
    **kwargs: Any,
) -> submitit.Job:
    """Submit ``fn(*args, **kwargs)`` to run in every task of a SLURM job (or of local processes) via submitit.

    Args:
        fn: the training function; picklable (module-level function or callable object; submitit uses cloudpickle).
        *args: positional arguments of ``fn``.
        nodes: number of nodes (local executor: must be 1).
        tasks_per_node: tasks (processes, typically one per GPU) per node.
        gpus_per_node: GPUs per node (``--gpus-per-node``; omitted when 0).
        cpus_per_task: CPUs per task.
        partition: SLURM partition; None uses the cluster's default.
        timeout_min: time limit in minutes (local executor: the processes are killed after it).
        account: SLURM account, if the cluster needs one.
        slurm_additional_parameters: extra sbatch options, e.g. ``{"qos": "high", "exclusive": True}``.
        executor: ``"auto"`` (slurm when ``sbatch`` is on PATH, else local), ``"slurm"`` or ``"local"``.
        folder: where submitit writes pickles and logs (``%j`` is replaced by the job id when present).
        job_name: SLURM job name.
        mem_gb: memory per node in GB (``--mem``); None leaves the cluster default.
        checkpointable: requeue on preemption/timeout (wraps ``fn`` in :class:`DistributedTask` and adds
            ``--requeue``); False wraps it in :class:`PlainDistributedTask`.
        **kwargs: keyword arguments of ``fn``.

    Returns:
        The ``submitit.Job``; ``job.results()`` waits and gives one result per task.

    Raises:
        ValueError: on bad counts, an unknown executor, or nodes > 1 with the local executor.
        FileNotFoundError: executor="slurm" without ``sbatch`` on PATH.

    Example:
        >>> job = submit(train, steps=100, tasks_per_node=2, executor="local")        # doctest: +SKIP
        >>> job.results()                                                             # doctest: +SKIP
    """
    kind = resolve_executor(executor)
    folder = Path(folder)
    if kind == "slurm":
        if shutil.which("sbatch") is None:
            raise FileNotFoundError("executor='slurm' but sbatch is not on PATH")
        ex: submitit.Executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=3)
        params = slurm_parameters(
            nodes=nodes,
            tasks_per_node=tasks_per_node,
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            partition=partition,
            timeout_min=timeout_min,
            account=account,
            job_name=job_name,
            mem_gb=mem_gb,
            checkpointable=checkpointable,
            slurm_additional_parameters=slurm_additional_parameters,
        )
        ex.update_parameters(**params)
        master_port = None  # derived from SLURM_JOB_ID in the job, the same on every node and after requeue
    else:
        if nodes != 1:
            raise ValueError(f"the local executor runs on this machine only: nodes must be 1, got {nodes}")
        if tasks_per_node < 1 or timeout_min < 1:
            raise ValueError(f"tasks_per_node and timeout_min must be >= 1, got {tasks_per_node}, {timeout_min}")
        ex = submitit.LocalExecutor(folder=folder, max_num_timeout=3)
        ex.update_parameters(
            tasks_per_node=tasks_per_node, gpus_per_node=gpus_per_node, timeout_min=timeout_min, nodes=1
        )
        master_port = free_port() if tasks_per_node > 1 else None
    task_cls = DistributedTask if checkpointable else PlainDistributedTask
    task = task_cls(fn, args, kwargs, master_port=master_port)
    # a job submitted from inside another job must not inherit its SLURM_*/SUBMITIT_*/RANK/... variables
    with submitit.helpers.clean_env():
        return ex.submit(task)
