"""Run a function on N local processes, each one rank of a process group, with a hard timeout.

The one local launcher of the project: ``sdxl-dist-log demo`` starts its ranks with it, and so do the tests and
benchmarks. Each process gets RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT in its environment
(as torchrun would set them), optionally joins a process group, runs ``fn(rank)`` and sends back its value or its
exception. A process that has not answered by the deadline is killed and the call fails, so nothing waits forever.
The ranks' ``TMPDIR`` is a folder of this call, removed when it returns: the processes end with ``os._exit``, which
skips the exit handlers that would delete W&B's temporary media and artifact folders.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sdxl_dist_log.launch.ports import free_port


@dataclass
class RankResult:
    """What one rank returned, or the exception it raised (type name, message, traceback)."""

    rank: int
    value: Any = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


class RanksFailedError(RuntimeError):
    """Some ranks raised; the message holds each one's traceback."""


def _child(fn: Callable[[int], Any], rank: int, world: int, port: int, backend: str | None,
           env: Mapping[str, str], pg_timeout: float, results: Any) -> None:
    os.environ.update(env)
    tempfile.tempdir = None  # read TMPDIR again: this call's scratch folder
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(env.get("LOCAL_RANK", rank)),
                      LOCAL_WORLD_SIZE=str(env.get("LOCAL_WORLD_SIZE", world)),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = RankResult(rank)
    try:
        if backend is not None and world > 1:
            _join_process_group(backend, rank, world, pg_timeout)
        result.value = fn(rank)
    except BaseException as exc:  # reported to the parent, which decides what it means
        result.error_type = type(exc).__name__
        result.error = str(exc)
        result.traceback = traceback.format_exc()
    try:
        results.put(result)
        results.close()
        results.join_thread()  # the feeder thread must flush before os._exit, or the result is lost
    finally:
        if "wandb" in sys.modules:  # W&B's service would otherwise outlive the rank
            try:
                sys.modules["wandb"].teardown()
            except Exception:  # a service that is already gone is what we wanted
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip atexit/gloo teardown that can block on peers that already left


def _join_process_group(backend: str, rank: int, world: int, timeout: float) -> None:
    import torch
    import torch.distributed as dist

    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        local = rank % torch.cuda.device_count()
        torch.cuda.set_device(local)
        kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout), **kwargs)


def run_ranks(
    fn: Callable[[int], Any],
    world_size: int,
    *,
    timeout: float = 90.0,
    backend: str | None = "gloo",
    start_method: str = "fork",
    env: Mapping[str, str] | None = None,
    rank_env: Callable[[int], Mapping[str, str]] | None = None,
    pg_timeout: float = 60.0,
) -> list[RankResult]:
    """Run ``fn(rank)`` on ``world_size`` new processes; return one RankResult per rank, by rank.

    Args:
        fn: what each rank runs; with ``start_method="spawn"`` it must be picklable (a module-level function or a
            ``functools.partial`` of one).
        timeout: seconds until every rank must have answered; then all are killed.
        backend: the process group each rank joins before ``fn`` ("gloo", "nccl"), or None for none.
        start_method: "fork" (cheap; the parent must not hold CUDA or W&B state) or "spawn" (needed for CUDA).
        env: extra environment for every rank; ``rank_env(rank)`` adds per-rank values on top.
        pg_timeout: the process group's own timeout, in seconds.

    Raises:
        TimeoutError: a rank did not answer within ``timeout`` seconds (all are killed).
        RanksFailedError: a rank died without answering (killed, crashed in C code).
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    ctx = mp.get_context(start_method)
    results = ctx.Queue()
    port = free_port()
    procs = []
    scratch = tempfile.mkdtemp(prefix="sdxl-ranks-")
    for rank in range(world_size):
        child_env = {"TMPDIR": scratch, **(env or {}), **(rank_env(rank) if rank_env else {})}
        proc = ctx.Process(target=_child, args=(fn, rank, world_size, port, backend, child_env, pg_timeout, results))
        proc.start()
        procs.append(proc)
    received: dict[int, RankResult] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(received) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(received))
                raise TimeoutError(f"ranks {missing} did not finish within {timeout:g} s")
            try:
                item = results.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in received]
                if dead and all(procs[r].exitcode not in (0, None) for r in dead):
                    raise RanksFailedError(
                        f"ranks {dead} died with exit codes {[procs[r].exitcode for r in dead]}") from None
                continue
            received[item.rank] = item
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        shutil.rmtree(scratch, ignore_errors=True)
    return [received[r] for r in range(world_size)]


def values_or_raise(results: list[RankResult]) -> list[Any]:
    """The ranks' values, by rank; or RanksFailedError with every failed rank's traceback."""
    failed = [r for r in results if not r.ok]
    if failed:
        raise RanksFailedError("\n".join(f"rank {r.rank}: {r.error_type}: {r.error}\n{r.traceback}" for r in failed))
    return [r.value for r in results]
