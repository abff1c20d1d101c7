"""The only module that touches torch.distributed.

The logger runs its collectives on a gloo group of its own, created once when the logger is built:
- a logging timeout never trips the NCCL watchdog of the training group (which would kill the job), and a broken
  logging group leaves the training group untouched;
- the values are tiny (one float64 row per rank), so CPU transport costs less than the host copy it saves.

Every collective is bounded by ``timeout``. A rank that has waited ``presence_after`` seconds posts its presence to
the process group's key-value store; when the wait fails, the ranks that never posted are named in the error, and
with ``warn_when_waiting`` a call still waiting after a few seconds reports the missing ranks long before that. A
peer whose connection closed (its process died) fails the call as a timeout does, with the same error type. Rows
travel in frames with a call header (``framing.py``), so a rank that skipped a call is caught in the next one. After
any failure the group is closed for logging: later calls reduce nothing and say so once, and training goes on.

Without an initialized process group every operation is the identity on this rank's data.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np

from sdxl_dist_log.errors import CollectiveError, CollectiveTimeoutError
from sdxl_dist_log.faults import collective_failure, waiting_message
from sdxl_dist_log.framing import CALL_HEADER, INITIAL_FRAME, LENGTH, CallInfo, build_frame, grown_frame, out_of_step
from sdxl_dist_log.ranks import RankInfo

_log = logging.getLogger("sdxl_dist_log")
_instance_numbers = itertools.count()  # same on every rank: loggers are built in the same order everywhere

def placed_by_process_group(rank: RankInfo) -> RankInfo:
    """``rank`` with rank and world size taken from torch.distributed's default group, when one is initialized.

    Never imports torch: a process that has not imported torch.distributed has no group.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return rank
    return rank.with_process_group(dist.get_rank(), dist.get_world_size())


class Collectives:
    """Logging collectives over one gloo group, each bounded in time.

    Build it with ``Collectives.create`` on every rank at the same point (it creates a process group when
    torch.distributed is initialized).
    """

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        group: Any = None,
        store: Any = None,
        timeout: float = 300.0,
        namespace: str = "sdxl_dist_log/0",
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self._group = group
        self._store = store
        self.timeout = timeout
        self.presence_after = min(1.0, timeout / 4)
        self.namespace = namespace
        self._sequence = 0
        self.frame = INITIAL_FRAME
        self._in_flight: tuple[int, float] | None = None
        self._in_flight_call: CallInfo | None = None
        self._warn_after: float | None = None
        self._report_wait: Callable[[str], Any] | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._broadcasts = 0
        self.failure: CollectiveError | None = None

    @classmethod
    def create(cls, *, rank: int, world_size: int, timeout: float) -> Collectives:
        """Collectives over a new gloo group when torch.distributed is initialized, else the identity.

        Args:
            rank: this process's rank from the environment (used when no process group exists).
            world_size: the launch's size from the environment (likewise).
            timeout: seconds each logging collective may wait for the other ranks.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return cls(rank=rank, world_size=1, timeout=timeout)
        number = next(_instance_numbers)
        # gloo abandons a pending operation only at the group's timeout: keep it at the per-call bound, so a rank that
        # arrives after the others gave up fails too instead of completing against an abandoned operation
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout + 2.0))
        store = dist.distributed_c10d._get_default_store()
        return cls(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            group=group,
            store=store,
            timeout=timeout,
            namespace=f"sdxl_dist_log/{number}",
        )

    @property
    def active(self) -> bool:
        """True while collectives reach the other ranks (several ranks, no failure so far)."""
        return self._group is not None and self.failure is None

    @property
    def store(self) -> Any:
        """The process group's key-value store; without a process group, a private in-process one (made once)."""
        if self._store is None:
            import torch.distributed as dist

            self._store = dist.HashStore()
        return self._store

    # -- operations ---------------------------------------------------------------------------------------------
    def all_gather_rows(self, row: np.ndarray, call: CallInfo) -> np.ndarray:
        """Gather one float64 row from every rank (lengths may differ), checking all ranks are in the same call.

        One gather in the steady state; when some rank's row outgrows the frame, every rank sees it in the headers,
        grows the frame alike and gathers once more.

        Returns:
            Array of shape (ranks, longest row), shorter rows padded with NaN; one row when not active.

        Raises:
            CollectiveTimeoutError: ranks did not arrive within the timeout (they are named).
            RanksOutOfStepError: ranks are in different logging calls (they are named).
        """
        if not self.active:
            return row[None, :].copy()
        gathered = self._gather_frame(row, call)
        longest = int(np.max(gathered[:, LENGTH]))
        if longest > self.frame:
            self.frame = grown_frame(longest, self.frame)
            gathered = self._gather_frame(row, call)
        return gathered[:, CALL_HEADER : CALL_HEADER + longest]

    def _gather_frame(self, row: np.ndarray, call: CallInfo) -> np.ndarray:
        import torch
        import torch.distributed as dist

        self._sequence += 1
        send = build_frame(row, sequence=self._sequence, call=call, frame=self.frame)
        out = torch.empty(self.world_size * send.size, dtype=torch.float64)
        # torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns there); older torch has
        # only the old name
        gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._wait(gather_flat(out, torch.from_numpy(send), group=self._group, async_op=True), call)
        gathered = out.numpy().reshape(self.world_size, -1)
        self._check_in_step(gathered[:, :CALL_HEADER], call)
        return gathered

    def all_gather_object(self, obj: Any, call: CallInfo) -> list[Any]:
        """Gather a picklable object from every rank (rare paths only: it pickles). Identity when not active."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        self._guard(lambda: dist.all_gather_object(out, obj, group=self._group), call)
        return out

    def gather_bytes(self, payload: np.ndarray, sizes: Sequence[int], dst: int, call: CallInfo) -> list[np.ndarray]:
        """Gather variable-length uint8 buffers to ``dst`` in one ``gather`` (padded to the longest).

        Args:
            payload: this rank's bytes; ``len(payload) == sizes[rank]``.
            sizes: every rank's length, known to all ranks beforehand (from an ``all_gather_rows``).
            dst: the receiving rank.

        Returns:
            On ``dst``, every rank's buffer (index = rank); elsewhere an empty list.
        """
        if not self.active:
            return [payload]
        import torch
        import torch.distributed as dist

        longest = max(sizes)
        if longest == 0:
            return [np.empty(0, np.uint8) for _ in sizes] if self.rank == dst else []
        send = torch.zeros(longest, dtype=torch.uint8)
        send[: len(payload)] = torch.from_numpy(np.ascontiguousarray(payload))
        gather_list = [torch.empty(longest, dtype=torch.uint8) for _ in sizes] if self.rank == dst else None
        self._sequence += 1
        work = dist.gather(send, gather_list, dst=dst, group=self._group, async_op=True)
        self._wait(work, call)
        if gather_list is None:
            return []
        return [t.numpy()[:n] for t, n in zip(gather_list, sizes)]

    def broadcast_json(self, obj: Any, src: int, call: CallInfo, *, timeout: float | None = None) -> Any:
        """Send a small JSON-able value from ``src`` to every rank through the process group's store.

        The store, not the gloo group, carries it: the wait can be longer than ``timeout`` (the primary's
        ``wandb.init`` may take ``init_timeout``) without stretching the bound of every other logging collective.

        Args:
            timeout: seconds to wait instead of the default.

        Raises:
            CollectiveTimeoutError: ``src`` did not publish within the timeout.
        """
        if not self.active:
            return obj
        limit = self.timeout if timeout is None else timeout
        self._broadcasts += 1
        key = f"{self.namespace}/broadcast/{self._broadcasts}"
        if self.rank == src:
            self._store.set(key, json.dumps(obj))
            return obj
        try:
            self._store.wait([key], timedelta(seconds=limit))
            return json.loads(self._store.get(key))
        except Exception as exc:  # DistStoreError / RuntimeError on timeout or a lost store
            error = CollectiveTimeoutError(
                f"{call} on rank {self.rank}: rank {src} did not publish within {limit:g} s ({exc}). "
                "Logging collectives are off from here on; training is not affected.",
                call=str(call), ranks=[src],
            )
            self.failure = error
            raise error from None

    def close(self) -> None:
        """Stop the watchdog and free the logging group (local; no collective). Idempotent."""
        self._closed.set()
        group, self._group = self._group, None
        if group is not None:
            import torch.distributed as dist

            try:
                dist.destroy_process_group(group)
            except Exception as exc:  # the default group may already be gone at interpreter exit
                _log.debug("could not destroy the logging group: %s", exc)

    def warn_when_waiting(self, after: float, report: Callable[[str], Any]) -> None:
        """Report once per call that has waited ``after`` seconds with ranks missing, naming them and the likely cause.

        Ranks post their presence by half that wait, so the ranks that did arrive are known when the report is made.
        Local; no collective.

        Args:
            after: seconds a call waits before the report.
            report: takes the message (the logger's ``warning``); called on the watchdog thread.
        """
        self._warn_after = after
        self._report_wait = report
        self.presence_after = min(self.presence_after, after / 2)

    # -- failure handling ---------------------------------------------------------------------------------------
    def _wait(self, work: Any, call: CallInfo, timeout: float | None = None) -> None:
        # A plain bounded wait: nothing per call but two attribute writes. Presence for the error message is posted
        # by the watchdog thread, only for calls still waiting after presence_after seconds.
        limit = self.timeout if timeout is None else timeout
        self._ensure_watchdog()
        self._in_flight_call = call
        self._in_flight = (self._sequence, time.monotonic())
        try:
            work.wait(timeout=timedelta(seconds=limit))
        except RuntimeError as exc:
            self._fail(*collective_failure(str(exc), limit), call)
        finally:
            self._in_flight = None

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="sdxl-dist-log-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self) -> None:
        posted = warned = -1
        while not self._closed.wait(self.presence_after / 2):
            in_flight = self._in_flight
            if in_flight is None:
                continue
            sequence, started = in_flight
            waited = time.monotonic() - started
            if sequence != posted and waited >= self.presence_after:
                self._post_presence(sequence)
                posted = sequence
            if sequence != warned and self._warn_after is not None and waited >= self._warn_after:
                warned = sequence
                self._report_missing(sequence, waited)

    def _report_missing(self, sequence: int, waited: float) -> None:
        try:
            key = self._presence_key(sequence)
            present = self._present(key) if self._store.check([key]) else set()
        except Exception as exc:  # the store's host may be gone: the timeout's error says so later
            _log.debug("could not read presence: %s", exc)
            return
        missing = sorted(set(range(self.world_size)) - present - {self.rank})
        if missing and self._report_wait is not None and self._in_flight is not None:
            self._report_wait(waiting_message(str(self._in_flight_call), self.rank, missing, waited, self.timeout))

    def _present(self, key: str) -> set[int]:
        return {int(r) for r in self._store.get(key).decode().split(",") if r}

    def _guard(self, fn: Any, call: CallInfo) -> None:
        self._sequence += 1
        try:
            fn()
        except RuntimeError as exc:
            self._fail(*collective_failure(str(exc), self.timeout), call)

    def _presence_key(self, sequence: int | None = None) -> str:
        return f"{self.namespace}/present/{self._sequence if sequence is None else sequence}"

    def _post_presence(self, sequence: int | None = None) -> None:
        try:
            self._store.append(self._presence_key(sequence), f"{self.rank},")
        except Exception as exc:  # the store's host may be gone; naming ranks is best effort
            _log.debug("could not post presence: %s", exc)

    def _absent_ranks(self, grace: float) -> list[int] | None:
        """Ranks that never posted presence for the current call, after waiting ``grace`` seconds for stragglers."""
        result: list[list[int] | None] = [None]
        key = self._presence_key()

        def read() -> None:
            try:
                self._post_presence()
                deadline = time.monotonic() + grace
                present: set[int] = set()
                while True:
                    if self._store.check([key]):
                        present = self._present(key)
                    if len(present) >= self.world_size or time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
                result[0] = sorted(set(range(self.world_size)) - present)
            except Exception as exc:  # the store's host may be gone: the error message says so instead
                _log.debug("could not read presence: %s", exc)

        reader = threading.Thread(target=read, name="sdxl-dist-log-presence", daemon=True)
        reader.start()
        reader.join(grace + 2.0)  # bounded: the store itself may hang if its host died
        return result[0]

    def _fail(self, kind: type[CollectiveError], what: str, call: CallInfo) -> None:
        absent = self._absent_ranks(grace=min(5.0, max(1.0, self.timeout / 10)))
        if absent:
            who = f"ranks {absent} did not reach it"
        elif absent == []:
            who = "every rank reached it, but not in time: a peer gave up first or its connection failed"
        else:
            who = "the missing ranks could not be read from the store"
        error = kind(
            f"{call} on rank {self.rank}: logging collective {what}; {who}. "
            "Logging collectives are off from here on; training is not affected.",
            call=str(call),
            ranks=absent or (),
        )
        self.failure = error
        raise error
    def _check_in_step(self, headers: np.ndarray, call: CallInfo) -> None:
        error = out_of_step(headers, call, self.rank)
        if error is not None:
            self.failure = error
            raise error
