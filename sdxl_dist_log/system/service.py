"""SystemMetrics: this process's sampler thread and, on the primary, the collector thread.

Every process with something to report runs one daemon thread that writes its latest sample to the process group's
key-value store (one ``set`` per interval); only the node leader (local rank 0) samples NVML and psutil, so 8 ranks on
a node do not sample 8 times. The primary's collector thread reads the keys (:mod:`~sdxl_dist_log.system.collector`)
and calls the sink with one row per interval. No collective is issued, and the training thread never touches the
store after ``start``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from sdxl_dist_log.ranks import RankInfo
from sdxl_dist_log.system.collector import Collector
from sdxl_dist_log.system.fields import CUDA_ERRORS, CudaProbe, TorchCuda, nvml_errors
from sdxl_dist_log.system.guard import Guard
from sdxl_dist_log.system.rows import NodeReport, RankReport, entity_key, node_figure_key, rank_label
from sdxl_dist_log.system.samplers import CudaSampler, HostSampler, NvmlLoader, NvmlSampler
from sdxl_dist_log.system.wire import (
    DEFAULT_NAMESPACE,
    STORE_ERRORS,
    KeyValueStore,
    RankMeta,
    StoreKeys,
    WireError,
    encode_node_meta,
    encode_node_sample,
    encode_rank_meta,
    encode_rank_sample,
    thread_store,
)

_LOG = logging.getLogger(__name__)
Sink = Callable[[dict[str, float]], None]


def first_delay(interval: float) -> float:
    """Seconds from start to the first sample: enough for a primed CPU % to mean something, at most one interval."""
    return min(interval, 0.5)


def run_every(interval: float, body: Callable[[], None], *, first: float, clock: Callable[[], float],
              wait: Callable[[float], bool]) -> None:
    """Call ``body()`` at ``first``, then every ``interval`` seconds of ``clock``, until ``wait`` returns True.

    ``wait(seconds)`` sleeps until the next call is due and returns True to stop (``threading.Event.wait``). A body
    that overran the next due time (a suspended process, a slow store) skips it instead of catching up in a burst.
    """
    next_time = clock() + first
    while not wait(max(0.0, next_time - clock())):
        body()
        next_time += interval
        now = clock()
        if next_time < now:
            next_time = now + interval


class SystemMetrics:
    """Samples this process's share of the system figures and, on the primary, assembles one row per interval.

    The constructor only stores its arguments: nothing is read from the environment, the network or the store.

    Args:
        rank_info: this process's place; the node leader (local rank 0) samples NVML and psutil.
        store: the process group's key-value store (``torch.distributed.distributed_c10d._get_default_store()``),
            or ``torch.distributed.HashStore()`` for a single process. Threads use ``store.clone()`` when it exists,
            so they never contend with the training thread for the store's connection.
        interval: seconds between samples and between rows.
        run_dir: a directory on the filesystem whose disk % is reported.
        sink: called on the primary's collector thread with one row per interval; None on other ranks.
        aggregate_only: rows carry only ``system/all/...`` aggregates and staleness keys.
        nvml: an initialised NVML module (pynvml or a ``sdxl_dist_log.testing.fake_nvml.FakeNvml``); None loads
            pynvml on the node leader at ``start``. SystemMetrics shuts down only an NVML it loaded itself.
        cuda_device: this rank's torch CUDA device index; None = no CUDA figures from this rank.
        cuda_probe: what reads that device (``memory_stats``, ``identity``); ``torch.cuda`` when None.
        namespace: prefix of the store keys.
        stale_after: seconds without a new sequence number before a node is stale; default 3 * interval.
        logger: where the few log lines go.
        clock: monotonic clock for scheduling and staleness.

    Example::

        rows = []
        sm = SystemMetrics(RankInfo(), torch.distributed.HashStore(), interval=1.0, run_dir=".", sink=rows.append)
        sm.start()
        ...  # training
        sm.stop()
    """

    def __init__(
        self,
        rank_info: RankInfo,
        store: KeyValueStore,
        *,
        interval: float,
        run_dir: str,
        sink: Sink | None,
        aggregate_only: bool = False,
        nvml: Any | None = None,
        cuda_device: int | None = None,
        cuda_probe: CudaProbe | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        stale_after: float | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if stale_after is not None and not stale_after > 0:
            raise ValueError(f"stale_after must be > 0, got {stale_after!r}")
        self.rank_info = rank_info
        self.store = store
        self.interval = float(interval)
        self.run_dir = run_dir
        self.sink = sink
        self.aggregate_only = aggregate_only
        self.cuda_device = cuda_device
        self.keys = StoreKeys(namespace)
        self.stale_after = float(stale_after) if stale_after is not None else 3.0 * self.interval
        self.log = logger or _LOG
        self.clock = clock
        self.samples_published = 0
        self.rows_emitted = 0
        self.bytes_published = 0
        self.publish_errors = 0
        self._nvml_arg = nvml
        self._cuda_probe = cuda_probe
        self._nvml: Any | None = None
        self._owns_nvml = False
        self._nvml_sampler: NvmlSampler | None = None
        self._host_sampler: HostSampler | None = None
        self._cuda_sampler: CudaSampler | None = None
        self._collector: Collector | None = None
        self._retry = Guard(self.log, disable=False)  # collector steps: reported once each, tried every interval
        self._samplers_ready = False
        self._sampler_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopped = False
        self._seq = 0

    @property
    def is_node_leader(self) -> bool:
        return self.rank_info.is_node_leader

    @property
    def hostnames(self) -> dict[int, str]:
        """Node rank -> host name as the primary's collector learned them; empty elsewhere."""
        collector = self._collector
        return collector.hostnames if collector is not None else {}

    # -- sampling -----------------------------------------------------------------------------------------------------
    def _ensure_samplers(self) -> None:
        with self._sampler_lock:
            if self._samplers_ready:
                return
            self._samplers_ready = True
            if self.is_node_leader:
                nvml = self._nvml_arg
                if nvml is None:
                    nvml = NvmlLoader(self.log).load()
                    self._owns_nvml = nvml is not None
                self._nvml = nvml
                if nvml is not None:
                    try:
                        self._nvml_sampler = NvmlSampler(nvml, self.log)
                    except nvml_errors(nvml) as exc:
                        self.log.warning("system metrics: NVML device enumeration failed (%s: %s); GPU figures off",
                                         type(exc).__name__, exc)
                try:
                    self._host_sampler = HostSampler(self.run_dir, self.log, self.clock)
                except (ImportError, OSError) as exc:
                    self.log.warning("system metrics: psutil unavailable (%s); node figures off", exc)
            if self.cuda_device is not None:
                self._cuda_sampler = CudaSampler(self.cuda_device, self.log, self._cuda_probe)

    def _sample_parts(self) -> tuple[dict[str, float], dict[int, dict[str, float]], dict[str, float]]:
        self._ensure_samplers()
        node = self._host_sampler.sample() if self._host_sampler is not None else {}
        gpus = self._nvml_sampler.sample() if self._nvml_sampler is not None else {}
        cuda = self._cuda_sampler.sample() if self._cuda_sampler is not None else {}
        return node, gpus, cuda

    def sample_now(self) -> dict[str, float]:
        """One synchronous sample of this process's share, keyed as on a single node (``system/gpu0/...``).

        The node leader's share is the node figures and every NVML GPU; a rank with a CUDA device adds its torch.cuda
        figures under its device's label. Nothing is published.
        """
        node, gpus, cuda = self._sample_parts()
        row = {node_figure_key(f, 0, multi_node=False): v for f, v in node.items()}
        for index, figures in gpus.items():
            for f, v in figures.items():
                row[entity_key(f"gpu{index}", f, 0, multi_node=False)] = v
        if self._cuda_sampler is not None:
            identities = self._nvml_sampler.identities if self._nvml_sampler is not None else []
            report = RankReport(self.rank_info.rank, self.rank_info.node_rank, self.rank_info.local_world_size,
                                self.cuda_device, self._cuda_sampler.uuid, self._cuda_sampler.pci, cuda)
            label, _ = rank_label(report, NodeReport(self.rank_info.node_rank, gpus=identities))
            for f, v in cuda.items():
                row[entity_key(label, f, 0, multi_node=False)] = v
        return row

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the daemon threads (sampler where this process has something to report; collector on the primary).

        Never blocks on other ranks or the store: the only work here is priming CPU % and loading NVML on the node
        leader.
        """
        if self._started:
            return
        self._started = True
        self._ensure_samplers()
        # Every rank's thread writes its meta once (so the primary learns which ranks report CUDA figures); a rank
        # that is neither node leader nor has a CUDA device then ends its thread.
        self._threads.append(threading.Thread(target=self._sampler_loop, daemon=True,
                                              name=f"sdxl-sysstats-sampler-r{self.rank_info.rank}"))
        if self.sink is not None:
            self._threads.append(threading.Thread(target=self._collector_loop, args=(self.sink,),
                                                  name="sdxl-sysstats-collector", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads, waiting at most ``timeout`` seconds in all; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        deadline = time.monotonic() + max(0.0, timeout)
        alive = False
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            alive = alive or t.is_alive()
        if alive:
            self.log.warning("system metrics: a thread did not stop within %.1f s; it is a daemon and is left", timeout)
        if self._owns_nvml and self._nvml is not None and not alive:
            try:
                self._nvml.nvmlShutdown()
            except nvml_errors(self._nvml):
                pass  # the process is done with NVML either way
            self._nvml = None

    def __enter__(self) -> SystemMetrics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the sampler thread -------------------------------------------------------------------------------------------
    def _sampler_loop(self) -> None:
        store = thread_store(self.store)
        info = self.rank_info
        cuda = self._cuda_sampler
        try:
            if self.is_node_leader:
                gpus = self._nvml_sampler.identities if self._nvml_sampler is not None else []
                store.set(self.keys.node_meta(info.node_rank), encode_node_meta(info.hostname, gpus))
            store.set(self.keys.rank_meta(info.rank), encode_rank_meta(RankMeta(
                info.node_rank, info.local_world_size, self.cuda_device if cuda is not None else None,
                cuda.uuid if cuda is not None else None, cuda.pci if cuda is not None else None)))
        except STORE_ERRORS as exc:
            self.log.warning("system metrics: sampler thread ended (%s: %s)", type(exc).__name__, exc)
            return
        if not (self.is_node_leader or cuda is not None):
            return
        if self._host_sampler is not None:
            self._host_sampler.state.prime()  # psutil keeps cpu_percent's reference per thread: prime this one
        run_every(self.interval, lambda: self._publish_once(store), first=first_delay(self.interval),
                  clock=self.clock, wait=self._stop.wait)

    def _publish_once(self, store: KeyValueStore) -> None:
        node, gpus, cuda = self._sample_parts()
        self._seq += 1
        wall = time.time()
        try:
            if self.is_node_leader:
                payload = encode_node_sample(self._seq, wall, node, gpus)
                store.set(self.keys.node_sample(self.rank_info.node_rank), payload)
                self.bytes_published += len(payload)
            if self._cuda_sampler is not None:
                payload = encode_rank_sample(self._seq, wall, cuda)
                store.set(self.keys.rank_sample(self.rank_info.rank), payload)
                self.bytes_published += len(payload)
            self.samples_published += 1
        except STORE_ERRORS as exc:
            self.publish_errors += 1
            if self.publish_errors == 1:
                self.log.warning("system metrics: cannot write to the store (%s: %s); will retry each interval",
                                 type(exc).__name__, exc)

    # -- the collector thread (primary) -------------------------------------------------------------------------------
    def _collector_loop(self, sink: Sink) -> None:
        info = self.rank_info
        collector = self._collector = Collector(
            thread_store(self.store), self.keys, num_nodes=info.num_nodes, world_size=info.world_size,
            stale_after=self.stale_after, clock=self.clock, logger=self.log, aggregate_only=self.aggregate_only)
        run_every(self.interval, lambda: self._collect_once(collector, sink), first=self.interval, clock=self.clock,
                  wait=self._stop.wait)

    def _collect_once(self, collector: Collector, sink: Sink) -> None:
        try:
            row = collector.collect()
        except (*STORE_ERRORS, WireError) as exc:
            self._retry.report("collect", exc)
            return
        if row is not None and self._retry.run("sink", lambda: sink(row)):
            self.rows_emitted += 1


def start_system_metrics(
    rank_info: RankInfo,
    store: KeyValueStore,
    *,
    interval: float,
    run_dir: str,
    sink: Sink | None,
    aggregate_only: bool,
    nvml: Any | None,
    namespace: str,
    logger: logging.Logger,
    cuda_probe: CudaProbe | None = None,
) -> SystemMetrics | None:
    """Start sampling this process (and, on a node leader, its node) in the background; None if it cannot start.

    System figures are a bonus: whatever goes wrong here is one warning, never an error that stops training. A rank
    whose CUDA device is still cuda:0 while its local rank is not 0 gets a warning: its figures would be cuda:0's.

    Args:
        sink: receives the cluster-wide rows (the primary's); None on other ranks.
        nvml: an NVML module or test double; pynvml when None.
        cuda_probe: torch.cuda or a test double.
        Others: as ``SystemMetrics``.
    """
    cuda = cuda_probe or TorchCuda()
    try:
        device = cuda.current_device()
        local = rank_info.local_rank
        if device == 0 and local > 0 and cuda.device_count() > local:
            logger.warning(f"rank {rank_info.rank} (local rank {local}) is on cuda:0: call "
                           "torch.cuda.set_device(local_rank) before building WandbLogger, or its GPU figures are "
                           "those of cuda:0")
        system = SystemMetrics(rank_info, store, interval=interval, run_dir=run_dir, sink=sink,
                               aggregate_only=aggregate_only, nvml=nvml, cuda_device=device, cuda_probe=cuda,
                               namespace=namespace, logger=logger)
        system.start()
        return system
    except (*CUDA_ERRORS, *STORE_ERRORS, OSError, ValueError) as exc:  # a bonus: never fail the job for it
        logger.warning(f"system metrics are off: {type(exc).__name__}: {exc}")
        return None
