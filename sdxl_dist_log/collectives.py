"""The only module that touches torch.distributed.

The logger runs its collectives on gloo groups of its own, created once when the logger is built:
- a logging timeout never trips the NCCL watchdog of the training group (which would kill the job), and a broken
  logging group leaves the training group untouched;
- the values are tiny (one float64 row per rank), so CPU transport costs less than the host copy it saves.

On one node a call is one ``all_gather``. On several nodes it is the two-level pattern of ``hierarchy.py``: a gather
to each node's leader, a gather of the leaders' aggregates to the primary, and the result broadcast back (primary to
leaders, each leader to its node), so the cost of a call grows with log W, not with W; no group spans every rank.
Groups connect lazily where torch allows it (``_gloo_backend``): a rank opens a connection to a peer when it first
sends to it, not a full mesh when the group is made.

Every collective is bounded by ``timeout``. A rank that has waited ``presence_after`` seconds posts its presence to
the process group's key-value store; when the wait fails, the ranks that never posted are named in the error, and
with ``warn_when_waiting`` a call still waiting after a few seconds reports the missing ranks long before that. A
peer whose connection closed (its process died) fails the call as a timeout does, with the same error type. Rows
travel in frames with a call header (``framing.py``), so a rank that skipped a call is caught in the next one. After
any failure the groups are closed for logging: later calls reduce nothing and say so once, and training goes on.

Without an initialized process group every operation is the identity on this rank's data.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Generator
from datetime import timedelta
from typing import Any

import numpy as np

from sdxl_dist_log.errors import CollectiveError, CollectiveTimeoutError
from sdxl_dist_log.exchange import ALL_GATHER, BROADCAST, GATHER, LEADERS, NODE, RECV, SEND, Op
from sdxl_dist_log.faults import collective_failure, waiting_message
from sdxl_dist_log.framing import CallInfo, out_of_step
from sdxl_dist_log.hierarchy import CallState, Outcome, Stage, call_rounds
from sdxl_dist_log.presence import Presence
from sdxl_dist_log.ranks import Launch, RankInfo
from sdxl_dist_log.topology import Topology, exchange_layout

_log = logging.getLogger("sdxl_dist_log")
_instance_numbers = itertools.count()  # same on every rank: loggers are built in the same order everywhere
_LAZY_GLOO = "sdxl_dist_log_gloo"


def stage_margin(timeout: float) -> float:
    """Seconds each later stage of a call waits beyond the one before (see ``Collectives._execute``)."""
    return min(2.0, max(0.1, timeout / 10))


def placed_by_process_group(rank: RankInfo) -> RankInfo:
    """``rank`` with rank and world size taken from torch.distributed's default group, when one is initialized.

    Never imports torch: a process that has not imported torch.distributed has no group.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return rank
    return rank.with_process_group(dist.get_rank(), dist.get_world_size())


def _gloo_backend(interfaces: str | None) -> str:
    """The backend name for the logger's groups: gloo whose connections open on first use, where torch can.

    torch's own gloo groups connect every pair of members when a group is made (a full mesh) unless the user sets
    ``TORCH_GLOO_LAZY_INIT=1``, which this package never writes for them. ``ProcessGroupGloo`` takes the same choice
    per device (``create_device(..., lazy_init=True)``), and ``new_group`` passes no options to gloo, so the logger
    registers a backend of its own that builds gloo groups with such devices (on ``interfaces``, the launch's
    ``GLOO_SOCKET_IFNAME``, else the host's default address, as torch does). Plain "gloo" where torch lacks it.
    """
    import torch.distributed as dist

    if _LAZY_GLOO in dist.Backend.backend_list:
        return _LAZY_GLOO
    gloo = getattr(dist, "ProcessGroupGloo", None)
    if gloo is None or not hasattr(gloo, "_Options") or "lazy_init" not in (gloo.create_device.__doc__ or ""):
        return "gloo"
    # the process group's own device may be a GPU (init_process_group(device_id=...)): map it here too; gloo
    # connects nothing eagerly for it
    dist.Backend.register_backend(_LAZY_GLOO, functools.partial(_lazy_gloo_group, interfaces),
                                  devices=["cpu", "cuda"])
    return _LAZY_GLOO


def _lazy_gloo_group(interfaces: str | None, store: Any, rank: int, size: int, timeout: timedelta) -> Any:
    from torch.distributed import ProcessGroupGloo

    options = ProcessGroupGloo._Options()
    options._timeout = timeout
    if interfaces:
        options._devices = [ProcessGroupGloo.create_device(interface=name, lazy_init=True)
                            for name in interfaces.split(",") if name]
    else:
        options._devices = [ProcessGroupGloo.create_default_device(lazy_init=True)]
    return ProcessGroupGloo(store, rank, size, options)


class Collectives:
    """Logging collectives over the logger's gloo groups, each bounded in time.

    Build it with ``Collectives.create`` on every rank at the same point (it creates process groups when
    torch.distributed is initialized).

    Attributes:
        state: the call count, and the frame and per-rank block sizes (grown in lockstep when a row needs more).
    """

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        groups: dict[str, Any] | None = None,
        topology: Topology | None = None,
        store: Any = None,
        timeout: float = 300.0,
        namespace: str = "sdxl_dist_log/0",
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self._groups = groups or {}
        self._sizes: dict[str, int] = {}
        self._topology = topology or Topology.alone()
        self._store = store
        self.timeout = timeout
        self.presence_after = min(1.0, timeout / 4)
        self.margin = stage_margin(timeout)
        self.namespace = namespace
        self.state = CallState()
        self._in_flight: tuple[int, float, CallInfo] | None = None  # (sequence, started, call): one write, one read
        self._warn_after: float | None = None
        self._report_wait: Callable[[str], Any] | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = threading.Event()
        self._broadcasts = 0
        self.failure: CollectiveError | None = None

    @classmethod
    def create(cls, *, rank: int, world_size: int, timeout: float, launch: Launch | None = None,
               primary: int = 0) -> Collectives:
        """Collectives over new gloo groups when torch.distributed is initialized, else the identity.

        Args:
            rank: this process's rank from the environment (used when no process group exists).
            world_size: the launch's size from the environment (likewise).
            timeout: seconds each logging collective may wait for the other ranks.
            launch: the launch: this rank's node (``rank.node_rank``: ranks with the same value share a node's
                group) and ``gloo_socket_ifname`` (the network interfaces for gloo; the host's default when None).
            primary: the rank that owns the run (it leads its node and roots the leaders' group).

        Raises:
            CollectiveTimeoutError: not every rank built its logger within ``timeout`` (named).
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return cls(rank=rank, world_size=1, timeout=timeout)
        number = next(_instance_numbers)
        namespace = f"sdxl_dist_log/{number}"
        rank, world_size = dist.get_rank(), dist.get_world_size()
        store = dist.distributed_c10d._get_default_store()
        primary = primary if 0 <= primary < world_size else 0  # the logger raises ConfigError for it next
        launch = launch or Launch()
        layout = exchange_layout(store, rank=rank, world_size=world_size, node_id=launch.rank.node_rank,
                                 primary=primary, namespace=namespace, timeout=timeout)
        topology = layout.for_rank(rank)
        backend = _gloo_backend(launch.gloo_socket_ifname)
        # gloo abandons a pending operation only at the group's timeout: keep it at the latest bound of a call, so a
        # rank that arrives after the others gave up fails too instead of completing against an abandoned operation
        bound = timedelta(seconds=timeout + 2 * stage_margin(timeout) + 2.0)
        groups: dict[str, Any] = {}
        # every rank makes every group, in the same order: torch names groups by a counter common to all ranks
        for members in topology.nodes:
            group = dist.new_group(list(members), backend=backend, timeout=bound)
            if rank in members:
                groups[NODE] = group
        if not topology.single_node:
            groups[LEADERS] = dist.new_group(list(topology.leaders), backend=backend, timeout=bound)
        return cls(rank=rank, world_size=world_size, groups=groups, topology=topology, store=store,
                   timeout=timeout, namespace=namespace)

    @property
    def active(self) -> bool:
        """True while collectives reach the other ranks (several ranks, no failure so far)."""
        return bool(self._groups) and self.failure is None

    @property
    def topology(self) -> Topology:
        """Where this rank sits in the logging groups; a world of one when not active."""
        return self._topology if self.active else Topology.alone()

    @property
    def store(self) -> Any:
        """The process group's key-value store; without a process group, a private in-process one (made once)."""
        if self._store is None:
            import torch.distributed as dist

            self._store = dist.HashStore()
        return self._store

    # -- operations ---------------------------------------------------------------------------------------------
    def reduce_call(self, row: np.ndarray, call: CallInfo, stage: Stage) -> Outcome:
        """Run one call's collectives for this rank's ``row`` (``hierarchy.call_rounds``): every rank ends with the
        same result.

        Raises:
            CollectiveTimeoutError: ranks did not arrive within the timeout (they are named).
            RanksOutOfStepError: ranks are in different logging calls (they are named).
            CollectiveError: a defect in the stage on some rank (every rank raises).
        """
        return self.run(call_rounds(self.topology, row, call, stage, self.state), call)

    def run(self, steps: Generator[Op, Any, Any], call: CallInfo) -> Any:
        """Drive ``steps`` (``hierarchy``'s generators) over the logging groups; returns what they return.

        Raises:
            CollectiveError: anything the steps raise of that kind closes the groups for logging first.
        """
        started = time.monotonic()
        value: Any = None
        try:
            while True:
                value = self._execute(steps.send(value), call, started)
        except StopIteration as done:
            return done.value
        except CollectiveError as error:
            self.failure = self.failure or error
            raise

    def _execute(self, op: Op, call: CallInfo, started: float) -> Any:
        group = self._groups.get(op.level) if self.active else None
        if group is None:  # a group of one: nothing to exchange (no point-to-point op reaches here)
            return op.data if op.kind == BROADCAST else op.data[None]
        import torch
        import torch.distributed as dist

        size = self._sizes.get(op.level) or self._sizes.setdefault(op.level, dist.get_world_size(group))
        if size == 1 and op.kind in (GATHER, BROADCAST, ALL_GATHER):
            return op.data if op.kind == BROADCAST else op.data[None]
        sent = torch.from_numpy(op.data)
        # each later stage waits a little longer, from the same start: a rank late by up to the timeout is still
        # paired at every stage, on every rank
        bound = max(0.05, self.timeout + op.deadline * self.margin - (time.monotonic() - started))
        if op.kind in (SEND, RECV):
            start = dist.isend if op.kind == SEND else dist.irecv
            self._wait(start(sent, op.root, group=group), call, bound)
            return sent.numpy() if op.kind == RECV else None
        if op.kind == GATHER:
            out = torch.empty((size, len(op.data)), dtype=sent.dtype) if op.root == self.rank else None
            work = dist.gather(sent, list(out.unbind(0)) if out is not None else None, dst=op.root, group=group,
                               async_op=True)
            self._wait(work, call, bound)
            return out.numpy() if out is not None else None
        if op.kind == BROADCAST:
            work = dist.broadcast(sent, src=op.root, group=group, async_op=True)
            self._wait(work, call, bound)
            return sent.numpy()
        if op.kind == ALL_GATHER:
            out = torch.empty(size * len(op.data), dtype=sent.dtype)
            # torch 2.13 renamed all_gather_into_tensor to all_gather_single (the old name warns there); older torch
            # has only the old name
            gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            self._wait(gather_flat(out, sent, group=group, async_op=True), call, bound)
            return out.numpy().reshape(size, -1)
        raise ValueError(f"unknown collective {op.kind!r}")

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
        """Stop the watchdog and free the logging groups (local; no collective). Idempotent."""
        self._closed.set()
        groups, self._groups = self._groups, {}
        if groups:
            import torch.distributed as dist

            for group in groups.values():
                try:
                    dist.destroy_process_group(group)
                except Exception as exc:  # the default group may already be gone at interpreter exit
                    _log.debug("could not destroy a logging group: %s", exc)

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
    def _wait(self, work: Any, call: CallInfo, bound: float) -> None:
        # A plain bounded wait: nothing per call but one attribute write. Presence for the error message is posted
        # by the watchdog thread, only for calls still waiting after presence_after seconds.
        self._ensure_watchdog()
        self._in_flight = (self.state.sequence, time.monotonic(), call)
        try:
            work.wait(timeout=timedelta(seconds=bound))
        except RuntimeError as exc:
            kind, what = collective_failure(str(exc), self.timeout)  # a closed peer connection counts as a timeout
            self._fail(kind is CollectiveTimeoutError, what, call)
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
            sequence, started, call = in_flight
            waited = time.monotonic() - started
            if sequence != posted and waited >= self.presence_after:
                self._presence.post(sequence)
                posted = sequence
            if sequence != warned and self._warn_after is not None and waited >= self._warn_after:
                warned = sequence
                self._report_missing(call, sequence, waited)

    def _report_missing(self, call: CallInfo, sequence: int, waited: float) -> None:
        missing = self._presence.missing_now(sequence)
        if missing and self._report_wait is not None and self._in_flight is not None:
            self._report_wait(waiting_message(str(call), self.rank, missing, waited, self.timeout))

    @functools.cached_property
    def _presence(self) -> Presence:
        return Presence(self._store, self.namespace, self.rank, self.world_size)

    def _fail(self, timed_out: bool, what: str, call: CallInfo) -> None:
        # a rank that failed early (a peer's socket closed) waits for the others to post, which they do after
        # presence_after seconds of waiting
        absent = self._presence.absent(self.state.sequence,
                                       grace=self.presence_after + min(5.0, max(1.0, self.timeout / 10)))
        if absent:
            who = f"ranks {absent} did not reach it"
        elif absent == []:
            who = "every rank reached it, but not in time: a peer gave up first or its connection failed"
        else:
            who = "the missing ranks could not be read from the store"
        # a peer that died closes its sockets: its neighbours fail at once, the others at the timeout; naming the
        # same absent ranks, every rank raises the same class
        kind = CollectiveTimeoutError if timed_out or absent else CollectiveError
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
