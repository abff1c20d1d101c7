"""Run a function on N real processes with a gloo process group, with a hard timeout. Test helper.

Processes are forked (the pytest process never starts a W&B run itself, so there is no wandb state to inherit), each
gets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* in its environment, and the results come back through a queue. A child that
raises reports its exception type and message; a child that hangs past ``timeout`` is killed and the call fails.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sdxl_dist_log.launch.ports import free_port


@dataclass
class RankResult:
    rank: int
    value: Any = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_type is None


def _child(fn: Callable[[int], Any], rank: int, world: int, port: int, init: bool, env: Mapping[str, str],
           pg_timeout: float, queue: Any) -> None:
    os.environ.update(env)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(env.get("LOCAL_RANK", rank)),
                      LOCAL_WORLD_SIZE=str(env.get("LOCAL_WORLD_SIZE", world)),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    result = RankResult(rank)
    try:
        if init and world > 1:
            import torch.distributed as dist

            dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=pg_timeout))
        result.value = fn(rank)
    except BaseException as exc:  # reported to the parent, which asserts on it
        result.error_type = type(exc).__name__
        result.error = str(exc)
        result.traceback = traceback.format_exc()
    try:
        queue.put(result)
        queue.close()
        queue.join_thread()  # the feeder thread must flush before os._exit, or the result is lost
    finally:
        if "wandb" in sys.modules:
            try:
                sys.modules["wandb"].teardown()
            except Exception:
                pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip atexit/gloo teardown that can block on peers that already left


def run_ranks(fn: Callable[[int], Any], world_size: int, *, timeout: float = 90.0, init: bool = True,
              env: Mapping[str, str] | None = None, rank_env: Callable[[int], Mapping[str, str]] | None = None,
              pg_timeout: float = 60.0) -> list[RankResult]:
    """Run ``fn(rank)`` on ``world_size`` forked processes; return one RankResult per rank, by rank.

    Raises:
        TimeoutError: a process did not finish within ``timeout`` seconds (all are killed).
    """
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    port = free_port()
    procs = []
    for rank in range(world_size):
        child_env = {**(env or {}), **(rank_env(rank) if rank_env else {})}
        proc = ctx.Process(target=_child, args=(fn, rank, world_size, port, init, child_env, pg_timeout, queue))
        proc.start()
        procs.append(proc)
    results: dict[int, RankResult] = {}
    import queue as queue_module
    import time

    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"ranks {sorted(set(range(world_size)) - set(results))} did not finish within "
                                   f"{timeout} s")
            try:
                item = queue.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs) if not p.is_alive() and r not in results]
                if dead and all(p.exitcode not in (0, None) for r, p in enumerate(procs) if r in dead):
                    raise RuntimeError(f"ranks {dead} died with exit codes {[procs[r].exitcode for r in dead]}")
                continue
            results[item.rank] = item
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    return [results[r] for r in range(world_size)]


def assert_all_ok(results: list[RankResult]) -> list[Any]:
    failed = [r for r in results if not r.ok]
    assert not failed, "\n".join(f"rank {r.rank}: {r.error_type}: {r.error}\n{r.traceback}" for r in failed)
    return [r.value for r in results]
