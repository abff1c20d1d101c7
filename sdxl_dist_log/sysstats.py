"""System figures of every GPU on every node, shipped to the primary rank without collectives.

Three table-driven samplers:

* per GPU through NVML (:data:`NVML_FIELDS`): utilization, memory used/total/%, temperature, power and % of its
  limit, SM clock, clock event (throttle) reasons, corrected ECC errors. Never PCIe throughput (≈ 21 ms a call).
* per rank through ``torch.cuda`` (:data:`CUDA_FIELDS`): memory allocated, reserved and max allocated of the rank's
  device, which only the owning process can see.
* per node through psutil (:data:`HOST_FIELDS`): CPU %, memory %, disk % of the run directory's filesystem,
  network bytes/s, 1-minute load.

Shipping: every process with something to report runs one daemon thread that writes its latest sample to the process
group's key-value store (one ``set`` per interval); only the node leader (local rank 0) samples NVML and psutil, so
8 ranks on a node do not sample 8 times. The primary's collector thread reads the keys with ``check`` before ``get``
(``get`` blocks until a key exists) and calls the sink with one row per interval. A source whose sequence number does
not advance for ``stale_after`` seconds of the reader's clock is stale: its figures are left out and the row says so;
nobody waits for it. No collective is issued, and the training thread never touches the store after ``start``.

Store protocol (namespace ``ns``, default ``sdxl_dist_log/sys``), compact JSON:

* ``{ns}/node{n}/meta`` once: ``{"v":1,"host":..., "gpus":[[nvml_index, uuid, pci_bus_id], ...]}``
* ``{ns}/node{n}/sample`` per interval: ``{"s":seq,"t":time.time(),"n":{figure: value},
  "f":[gpu figure names], "g":[[nvml_index, value or null, ...], ...]}``
* ``{ns}/rank{r}/meta`` once: ``{"v":1,"node":n,"lws":local_world_size,"cuda":device or null,"uuid":...,"pci":...}``
* ``{ns}/rank{r}/sample`` per interval (ranks with a CUDA device): ``{"s":seq,"t":time.time(),"v":{figure: value}}``

See ``docs/system_metrics.md`` for the keys of the rows, aggregates and measured sizes and costs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdxl_dist_log.ranks import RankInfo

__all__ = [
    "CUDA_FIELDS",
    "HOST_FIELDS",
    "NVML_FIELDS",
    "GpuIdentity",
    "KeyValueStore",
    "NodeReport",
    "RankReport",
    "StalenessTracker",
    "SystemMetrics",
    "aggregate_figures",
    "assemble_row",
    "entity_key",
    "load_nvml",
    "match_gpu",
    "node_figure_key",
    "normalize_pci_bus_id",
    "normalize_uuid",
]

_LOG = logging.getLogger(__name__)
PROTOCOL_VERSION = 1
KEY_ROOT = "system"


class KeyValueStore(Protocol):
    """What this module needs of a store; ``torch.distributed.Store`` (TCPStore, HashStore, PrefixStore) fits."""

    def set(self, key: str, value: str | bytes) -> None: ...

    def get(self, key: str) -> bytes:  # blocks until the key exists: call only after check()
        ...

    def check(self, keys: list[str]) -> bool: ...


# ----------------------------------------------------------------------------------------------------------------------
# NVML loading
# ----------------------------------------------------------------------------------------------------------------------
_nvml_unavailable_logged = False
_nvml_log_lock = threading.Lock()


def load_nvml(logger: logging.Logger | None = None, *, module: Any | None = None) -> Any | None:
    """Import and initialise NVML; None (and one log line per process) when it is missing.

    Args:
        logger: where the one line goes; this module's logger when None.
        module: an NVML module-like object to initialise instead of importing ``pynvml`` (a ``FakeNvml``).

    Returns:
        The initialised module, or None when ``pynvml`` cannot be imported or ``nvmlInit`` fails
        (``NVMLError_LibraryNotFound`` on a machine without an NVIDIA driver).

    Example:
        >>> nvml = load_nvml()  # None on a GPU-less laptop, after one INFO line
    """
    global _nvml_unavailable_logged
    log = logger or _LOG
    reason: str | None = None
    nvml = module
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except Exception as exc:  # ImportError, or a broken install
            reason = f"cannot import pynvml ({type(exc).__name__}: {exc})"
    if reason is None:
        try:
            nvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded, OSError
            reason = f"nvmlInit failed ({type(exc).__name__}: {exc})"
    if reason is None:
        return nvml
    with _nvml_log_lock:
        if not _nvml_unavailable_logged:
            _nvml_unavailable_logged = True
            log.info("NVML unavailable: %s; GPU figures from NVML are off", reason)
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Tables of figures
# ----------------------------------------------------------------------------------------------------------------------
def _memory(info: Any) -> dict[str, float]:
    used, total = float(info.used), float(info.total)
    out = {"memory_used": used, "memory_total": total}
    if total > 0:
        out["memory_percent"] = 100.0 * used / total
    return out


# NVML clock event reasons that mean "slowed down" (SW power cap, HW slowdown, SW/HW thermal, power brake);
# idle (0x1), application clocks (0x2), sync boost (0x10) and display clock (0x100) are not throttling.
THROTTLE_REASONS_MASK = 0x4 | 0x8 | 0x20 | 0x40 | 0x80


def _reasons(mask: int) -> dict[str, float]:
    return {"clock_event_reasons": float(mask), "clock_throttled": 1.0 if int(mask) & THROTTLE_REASONS_MASK else 0.0}


@dataclass(frozen=True)
class NvmlField:
    """One row of the NVML table: a call per GPU and the figures it yields.

    Attributes:
        name: the row's name (in log lines when it is disabled).
        functions: NVML function names; the first the module has is used (renamed APIs).
        args: extra arguments after the handle; strings name NVML constants.
        transform: the call's result -> {figure: value}.
    """

    name: str
    functions: tuple[str, ...]
    args: tuple[str | int, ...]
    transform: Callable[[Any], dict[str, float]]


NVML_FIELDS: tuple[NvmlField, ...] = (
    NvmlField("utilization", ("nvmlDeviceGetUtilizationRates",), (), lambda r: {"utilization": float(r.gpu)}),
    NvmlField("memory", ("nvmlDeviceGetMemoryInfo",), (), _memory),
    NvmlField("temperature", ("nvmlDeviceGetTemperature",), ("NVML_TEMPERATURE_GPU",),
              lambda c: {"temperature": float(c)}),
    NvmlField("power", ("nvmlDeviceGetPowerUsage",), (), lambda mw: {"power_watts": mw / 1000.0}),
    NvmlField("power_limit", ("nvmlDeviceGetEnforcedPowerLimit",), (), lambda mw: {"power_limit_watts": mw / 1000.0}),
    NvmlField("sm_clock", ("nvmlDeviceGetClockInfo",), ("NVML_CLOCK_SM",), lambda mhz: {"sm_clock_mhz": float(mhz)}),
    NvmlField("clock_event_reasons",
              ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"), (), _reasons),
    NvmlField("ecc_corrected", ("nvmlDeviceGetTotalEccErrors",),
              ("NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_VOLATILE_ECC"), lambda n: {"ecc_corrected": float(n)}),
)
"""The per-GPU table. ``power_percent`` is derived from ``power_watts`` and ``power_limit_watts``."""

GPU_FIGURES: tuple[str, ...] = (
    "utilization", "memory_used", "memory_total", "memory_percent", "temperature", "power_watts",
    "power_limit_watts", "power_percent", "sm_clock_mhz", "clock_event_reasons", "clock_throttled", "ecc_corrected",
)
"""Every figure an NVML GPU can carry, in wire order."""


def _cuda_memory_stats(device: int) -> dict[str, float]:
    """torch.cuda's view of this process's memory on ``device`` (a seam tests replace)."""
    import torch

    return {
        "memory_allocated": float(torch.cuda.memory_allocated(device)),
        "memory_reserved": float(torch.cuda.memory_reserved(device)),
        "max_memory_allocated": float(torch.cuda.max_memory_allocated(device)),
    }


def _cuda_device_identity(device: int) -> tuple[str | None, str | None]:
    """(UUID, PCI bus id) of torch CUDA device ``device`` (a seam tests replace); Nones when unknown."""
    import torch

    props = torch.cuda.get_device_properties(device)
    uuid = str(getattr(props, "uuid", "") or "") or None
    pci = None
    if hasattr(props, "pci_bus_id"):
        pci = f"{getattr(props, 'pci_domain_id', 0):04x}:{props.pci_bus_id:02x}:{getattr(props, 'pci_device_id', 0):02x}"
    return uuid, pci


CUDA_FIELDS: tuple[tuple[str, Callable[[int], dict[str, float]]], ...] = (
    ("torch.cuda memory", lambda device: _cuda_memory_stats(device)),
)
"""The per-rank table: (name, device -> {figure: value}). Figures: memory_allocated, memory_reserved,
max_memory_allocated (bytes of this process on its device)."""


class _HostState:
    """psutil and the counters the node table's rate rows need."""

    def __init__(self, run_dir: str, clock: Callable[[], float]) -> None:
        import psutil

        self.psutil = psutil
        self.run_dir = run_dir
        self.clock = clock
        self._net: tuple[float, int, int] | None = None

    def prime(self) -> None:
        """Make the first real sample meaningful: psutil.cpu_percent(None) returns a false 0.0 on its first call."""
        self.psutil.cpu_percent(None)
        try:
            counters = self.psutil.net_io_counters()
            self._net = (self.clock(), counters.bytes_sent, counters.bytes_recv)
        except Exception:  # no network counters (some containers)
            self._net = None

    def network(self) -> dict[str, float]:
        counters = self.psutil.net_io_counters()
        now = self.clock()
        previous, self._net = self._net, (now, counters.bytes_sent, counters.bytes_recv)
        if previous is None or now <= previous[0]:
            return {}
        dt = now - previous[0]
        return {
            "network/sent_bytes_per_s": max(0.0, (counters.bytes_sent - previous[1]) / dt),
            "network/recv_bytes_per_s": max(0.0, (counters.bytes_recv - previous[2]) / dt),
        }


HOST_FIELDS: tuple[tuple[str, Callable[[_HostState], dict[str, float]]], ...] = (
    ("cpu", lambda h: {"cpu/percent": float(h.psutil.cpu_percent(None))}),
    ("memory", lambda h: {"memory/percent": float(h.psutil.virtual_memory().percent)}),
    ("disk", lambda h: {"disk/percent": float(h.psutil.disk_usage(h.run_dir).percent)}),
    ("network", lambda h: h.network()),
    ("load", lambda h: {"load/avg_1m": float(h.psutil.getloadavg()[0])}),
)
"""The per-node table: (name, state -> {figure: value})."""


class _FieldGuard:
    """Runs table rows; a row that raises is disabled (per GPU for NVML rows) with one log line per row name."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.log = logger
        self.what = what
        self.disabled: set[tuple[str, int]] = set()
        self._logged: set[str] = set()

    def run(self, name: str, unit: int, fn: Callable[[], dict[str, float]], out: dict[str, float]) -> None:
        if (name, unit) in self.disabled:
            return
        try:
            values = fn()
        except Exception as exc:
            self.disabled.add((name, unit))
            if name not in self._logged:
                self._logged.add(name)
                where = f" on {self.what} {unit}" if self.what else ""
                self.log.warning("system metrics: %r disabled%s (%s: %s); other figures go on",
                                 name, where, type(exc).__name__, exc)
            return
        out.update(values)


# ----------------------------------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuIdentity:
    """An NVML device as the node sees it."""

    index: int
    uuid: str | None
    pci: str | None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    text = str(value).strip("\x00 ").strip()
    return text or None


def normalize_uuid(uuid: Any) -> str | None:
    """Canonical UUID text: lower case, without NVML's ``GPU-``/``MIG-`` prefix (torch omits it).

    Example:
        >>> normalize_uuid("GPU-5A0C...")
        '5a0c...'
    """
    text = _as_text(uuid)
    if text is None:
        return None
    text = text.lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text or None


def normalize_pci_bus_id(bus_id: Any) -> str | None:
    """Canonical ``dddd:bb:dd`` (hex, lower) from NVML's ``00000000:19:00.0`` or torch's ``0000:19:00``.

    Returns None for text that is not a PCI bus id.

    Example:
        >>> normalize_pci_bus_id(b"00000000:19:00.0")
        '0000:19:00'
    """
    text = _as_text(bus_id)
    if text is None:
        return None
    parts = text.split(":")
    try:
        if len(parts) == 3:
            domain, bus, dev = int(parts[0], 16), int(parts[1], 16), int(parts[2].split(".")[0], 16)
        elif len(parts) == 2:
            domain, bus, dev = 0, int(parts[0], 16), int(parts[1].split(".")[0], 16)
        else:
            return None
    except ValueError:
        return None
    return f"{domain:04x}:{bus:02x}:{dev:02x}"


def match_gpu(uuid: str | None, pci: str | None, gpus: Iterable[GpuIdentity]) -> int | None:
    """The NVML index of the GPU that a CUDA device (by UUID, else PCI bus id) is; None when none matches.

    Never assumes CUDA index = NVML index = local rank: CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER renumber devices.
    """
    gpus = list(gpus)
    u = normalize_uuid(uuid)
    if u is not None:
        for gpu in gpus:
            if normalize_uuid(gpu.uuid) == u:
                return gpu.index
    p = normalize_pci_bus_id(pci)
    if p is not None:
        for gpu in gpus:
            if normalize_pci_bus_id(gpu.pci) == p:
                return gpu.index
    return None


class NvmlSampler:
    """Samples every NVML GPU of the node through :data:`NVML_FIELDS`.

    Args:
        nvml: the initialised pynvml module or a FakeNvml.
        logger: where disabled rows are reported (one line per row).
        fields: the table.
    """

    def __init__(self, nvml: Any, logger: logging.Logger, fields: Sequence[NvmlField] = NVML_FIELDS) -> None:
        self.nvml = nvml
        self.guard = _FieldGuard(logger, "gpu")
        self.handles: list[Any] = []
        self.identities: list[GpuIdentity] = []
        self._rows: list[tuple[str, Callable[..., Any], tuple[Any, ...], Callable[[Any], dict[str, float]]]] = []
        for spec in fields:
            fn = next((getattr(nvml, n) for n in spec.functions if hasattr(nvml, n)), None)
            args: list[Any] = []
            for a in spec.args:
                args.append(getattr(nvml, a, None) if isinstance(a, str) else a)
            if fn is None or any(a is None for a in args):
                logger.warning("system metrics: %r disabled: NVML has no %s", spec.name, "/".join(spec.functions))
                continue
            self._rows.append((spec.name, fn, tuple(args), spec.transform))
        count = int(nvml.nvmlDeviceGetCount())
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pci = None
            try:
                uuid = _as_text(nvml.nvmlDeviceGetUUID(handle))
            except Exception:
                pass
            try:
                pci = _as_text(nvml.nvmlDeviceGetPciInfo(handle).busId)
            except Exception:
                pass
            self.handles.append(handle)
            self.identities.append(GpuIdentity(index, uuid, pci))

    def sample(self) -> dict[int, dict[str, float]]:
        """One sample: NVML index -> {figure: value}; rows that failed before are skipped."""
        out: dict[int, dict[str, float]] = {}
        for index, handle in enumerate(self.handles):
            figures: dict[str, float] = {}
            for name, fn, args, transform in self._rows:
                self.guard.run(name, index, lambda fn=fn, args=args, transform=transform: transform(fn(handle, *args)),
                               figures)
            watts, limit = figures.get("power_watts"), figures.get("power_limit_watts")
            if watts is not None and limit:
                figures["power_percent"] = 100.0 * watts / limit
            out[index] = figures
        return out


class HostSampler:
    """Samples node-wide figures through :data:`HOST_FIELDS` (psutil); primes CPU % on construction."""

    def __init__(self, run_dir: str, logger: logging.Logger, clock: Callable[[], float] = time.monotonic) -> None:
        self.state = _HostState(run_dir, clock)
        self.guard = _FieldGuard(logger, "")
        self.state.prime()

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, fn in HOST_FIELDS:
            self.guard.run(name, 0, lambda fn=fn: fn(self.state), out)
        return out


class CudaSampler:
    """Samples this rank's torch.cuda figures through :data:`CUDA_FIELDS`."""

    def __init__(self, device: int, logger: logging.Logger) -> None:
        self.device = device
        self.guard = _FieldGuard(logger, "cuda device")
        try:
            self.uuid, self.pci = _cuda_device_identity(device)
        except Exception as exc:
            logger.warning("system metrics: cannot identify CUDA device %d (%s); its figures are keyed by rank",
                           device, exc)
            self.uuid = self.pci = None

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, fn in CUDA_FIELDS:
            self.guard.run(name, self.device, lambda fn=fn: fn(self.device), out)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Wire format
# ----------------------------------------------------------------------------------------------------------------------
def _num(value: float | None) -> float | int | None:
    """Compact JSON number: ints stay exact (byte counts), other floats keep 4 decimals; NaN/inf -> null."""
    if value is None or not math.isfinite(value):
        return None
    if float(value).is_integer() and abs(value) < 2**53:
        return int(value)
    return round(float(value), 4)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def encode_node_sample(seq: int, wall_time: float, node: Mapping[str, float],
                       gpus: Mapping[int, Mapping[str, float]]) -> bytes:
    """The per-interval node record (columnar: one list of figure names, one row of values per GPU)."""
    present = [f for f in GPU_FIGURES if any(f in g for g in gpus.values())]
    present += sorted({f for g in gpus.values() for f in g} - set(present))
    return _dumps({
        "s": seq,
        "t": round(wall_time, 3),
        "n": {k: _num(v) for k, v in node.items()},
        "f": present,
        "g": [[index] + [_num(g.get(f)) for f in present] for index, g in sorted(gpus.items())],
    })


def decode_node_sample(raw: bytes) -> tuple[int, float, dict[str, float], dict[int, dict[str, float]]]:
    """Inverse of :func:`encode_node_sample`: (seq, wall time, node figures, NVML index -> figures)."""
    obj = json.loads(raw)
    names = obj.get("f", [])
    gpus = {int(row[0]): {n: float(v) for n, v in zip(names, row[1:]) if v is not None} for row in obj.get("g", [])}
    node = {k: float(v) for k, v in obj.get("n", {}).items() if v is not None}
    return int(obj["s"]), float(obj.get("t", 0.0)), node, gpus


def encode_rank_sample(seq: int, wall_time: float, values: Mapping[str, float]) -> bytes:
    """The per-interval rank record."""
    return _dumps({"s": seq, "t": round(wall_time, 3), "v": {k: _num(v) for k, v in values.items()}})


def decode_rank_sample(raw: bytes) -> tuple[int, float, dict[str, float]]:
    """Inverse of :func:`encode_rank_sample`: (seq, wall time, figures)."""
    obj = json.loads(raw)
    return int(obj["s"]), float(obj.get("t", 0.0)), {k: float(v) for k, v in obj["v"].items() if v is not None}


# ----------------------------------------------------------------------------------------------------------------------
# Pure row assembly
# ----------------------------------------------------------------------------------------------------------------------
def node_figure_key(figure: str, node: int, *, multi_node: bool) -> str:
    """Key of a node-wide figure: ``system/cpu/percent`` on one node, ``system/node3/cpu/percent`` on several."""
    return f"{KEY_ROOT}/node{node}/{figure}" if multi_node else f"{KEY_ROOT}/{figure}"


def entity_key(label: str, figure: str, node: int, *, multi_node: bool) -> str:
    """Key of a GPU figure: ``system/gpu0/utilization`` on one node, ``system/node3/gpu5/utilization`` on several.

    ``label`` is ``gpu{nvml_index}``, or ``rank{r}``/``gpu{cuda_index}`` for a rank whose device NVML cannot name.
    """
    return node_figure_key(f"{label}/{figure}", node, multi_node=multi_node)


def aggregate_figures(entities: Iterable[Mapping[str, float]], prefix: str) -> dict[str, float]:
    """Cluster-wide ``{prefix}/{figure}/min|mean|max`` over the entities that have each figure.

    Example:
        >>> aggregate_figures([{"u": 0.0}, {"u": 10.0}], "system/all/gpu")
        {'system/all/gpu/u/min': 0.0, 'system/all/gpu/u/mean': 5.0, 'system/all/gpu/u/max': 10.0}
    """
    columns: dict[str, list[float]] = {}
    for entity in entities:
        for figure, value in entity.items():
            if value is not None and math.isfinite(value):
                columns.setdefault(figure, []).append(float(value))
    out: dict[str, float] = {}
    for figure in sorted(columns):
        values = columns[figure]
        out[f"{prefix}/{figure}/min"] = min(values)
        out[f"{prefix}/{figure}/mean"] = math.fsum(values) / len(values)
        out[f"{prefix}/{figure}/max"] = max(values)
    return out


@dataclass
class NodeReport:
    """What the primary knows of a node: meta (once) and its latest sample."""

    node: int
    host: str | None = None
    gpus: list[GpuIdentity] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    gpu_figures: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class RankReport:
    """What the primary knows of a rank with a CUDA device: meta (once) and its latest torch.cuda sample."""

    rank: int
    node: int
    local_world_size: int = 1
    cuda_device: int | None = None
    uuid: str | None = None
    pci: str | None = None
    figures: dict[str, float] = field(default_factory=dict)


def rank_label(rank: RankReport, node: NodeReport | None) -> tuple[str, int | None]:
    """(label, NVML index) of a rank's device: ``gpu{nvml}`` by UUID/PCI match, else a fallback that cannot collide.

    Fallback: ``gpu{cuda_device}`` when the rank is alone on its node, else ``rank{r}`` (several ranks may all call
    their device ``cuda:0`` under per-rank CUDA_VISIBLE_DEVICES).
    """
    if node is not None:
        index = match_gpu(rank.uuid, rank.pci, node.gpus)
        if index is not None:
            return f"gpu{index}", index
    if rank.local_world_size <= 1 and rank.cuda_device is not None:
        return f"gpu{rank.cuda_device}", None
    return f"rank{rank.rank}", None


def assemble_row(
    nodes: Mapping[int, NodeReport],
    ranks: Iterable[RankReport],
    *,
    stale_nodes: Iterable[int] = (),
    stale_ranks: int = 0,
    multi_node: bool,
    aggregate_only: bool = False,
) -> dict[str, float]:
    """One row from the fresh reports: per-GPU and per-node keys, cluster aggregates, staleness.

    Args:
        nodes: fresh node reports (stale nodes already left out).
        ranks: fresh rank reports; those of nodes not in ``nodes`` are left out.
        stale_nodes: nodes to mark ``system/node{n}/stale = 1.0``.
        stale_ranks: count for ``system/stale_ranks``.
        multi_node: put the node in per-node keys.
        aggregate_only: emit only ``system/all/...`` and staleness keys. Otherwise aggregates appear where they
            summarize: GPU aggregates from two GPUs on, node aggregates from two nodes on.

    Returns:
        The row. GPUs of a node are restricted to those the job's ranks use when any rank's device matched one.
        Ranks sharing a GPU have their torch.cuda figures summed.
    """
    entities: dict[tuple[int, str], dict[str, float]] = {}
    used: dict[int, set[int]] = {}
    per_rank: list[tuple[int, str, dict[str, float]]] = []
    for rank in ranks:
        if rank.node not in nodes:
            continue
        label, index = rank_label(rank, nodes.get(rank.node))
        if index is not None:
            used.setdefault(rank.node, set()).add(index)
        per_rank.append((rank.node, label, rank.figures))
    for n, report in sorted(nodes.items()):
        keep = used.get(n)
        for index, figures in sorted(report.gpu_figures.items()):
            if keep is None or index in keep:
                entities[(n, f"gpu{index}")] = dict(figures)
    for n, label, figures in per_rank:
        target = entities.setdefault((n, label), {})
        for figure, value in figures.items():
            target[figure] = target.get(figure, 0.0) + value
    row: dict[str, float] = {}
    if not aggregate_only:
        for n, report in sorted(nodes.items()):
            for figure, value in report.figures.items():
                row[node_figure_key(figure, n, multi_node=multi_node)] = value
        for (n, label), figures in sorted(entities.items()):
            for figure, value in figures.items():
                row[entity_key(label, figure, n, multi_node=multi_node)] = value
    # an aggregate of one thing repeats it: summarize GPUs from two on, nodes from two on (always if it is all we log)
    if len(entities) > 1 or aggregate_only:
        row.update(aggregate_figures(entities.values(), f"{KEY_ROOT}/all/gpu"))
    if len(nodes) > 1 or aggregate_only:
        row.update(aggregate_figures((r.figures for _, r in sorted(nodes.items())), f"{KEY_ROOT}/all"))
    row[f"{KEY_ROOT}/all/gpu/count"] = float(len(entities))
    row[f"{KEY_ROOT}/all/node/count"] = float(len(nodes))
    stale = sorted(set(stale_nodes))
    for n in stale:
        row[f"{KEY_ROOT}/node{n}/stale"] = 1.0
    row[f"{KEY_ROOT}/stale_nodes"] = float(len(stale))
    row[f"{KEY_ROOT}/stale_ranks"] = float(stale_ranks)
    return row


class StalenessTracker:
    """Judges staleness by "the sequence number did not advance for ``stale_after`` seconds of my clock".

    Writers' wall clocks are never compared with the reader's, so clock skew between nodes does not matter.
    A source never seen counts as stale once ``stale_after`` has passed since ``started``.
    """

    def __init__(self, stale_after: float, started: float) -> None:
        self.stale_after = stale_after
        self.started = started
        self._last: dict[Any, tuple[int, float]] = {}

    def observe(self, source: Any, seq: int, now: float) -> None:
        """Record that ``source`` showed sequence ``seq`` at reader time ``now``."""
        last = self._last.get(source)
        if last is None or last[0] != seq:
            self._last[source] = (seq, now)

    def seen(self, source: Any) -> bool:
        return source in self._last

    def is_stale(self, source: Any, now: float) -> bool:
        last = self._last.get(source)
        since = last[1] if last is not None else self.started
        return now - since > self.stale_after


# ----------------------------------------------------------------------------------------------------------------------
# The threads
# ----------------------------------------------------------------------------------------------------------------------
def _first_delay(interval: float) -> float:
    """Seconds from start to the first sample: enough for a primed CPU % to mean something, at most one interval."""
    return min(interval, 0.5)


class SystemMetrics:
    """Samples this process's share of the system figures and, on the primary, assembles one row per interval.

    Args:
        rank_info: this process's place; the node leader (local rank 0) samples NVML and psutil.
        store: the process group's key-value store (``torch.distributed.distributed_c10d._get_default_store()``),
            or ``torch.distributed.HashStore()`` for a single process. Threads use ``store.clone()`` when it exists,
            so they never contend with the training thread for the store's connection.
        interval: seconds between samples and between rows.
        run_dir: a directory on the filesystem whose disk % is reported.
        sink: called on the primary's collector thread with one row per interval; None on other ranks.
        aggregate_only: rows carry only ``system/all/...`` aggregates and staleness keys.
        nvml: an initialised NVML module (pynvml or a FakeNvml); None loads pynvml on the node leader at ``start``.
            SystemMetrics shuts down only an NVML it loaded itself.
        cuda_device: this rank's torch CUDA device index; None = no CUDA figures from this rank.
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
        sink: Callable[[dict[str, float]], None] | None,
        aggregate_only: bool = False,
        nvml: Any | None = None,
        cuda_device: int | None = None,
        namespace: str = "sdxl_dist_log/sys",
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
        self.namespace = namespace.rstrip("/")
        self.stale_after = float(stale_after) if stale_after is not None else 3.0 * self.interval
        self.log = logger or _LOG
        self.clock = clock
        self.hostnames: dict[int, str] = {}
        self.samples_published = 0
        self.rows_emitted = 0
        self.bytes_published = 0
        self.publish_errors = 0
        self._nvml_arg = nvml
        self._nvml: Any | None = None
        self._owns_nvml = False
        self._nvml_sampler: NvmlSampler | None = None
        self._host_sampler: HostSampler | None = None
        self._cuda_sampler: CudaSampler | None = None
        self._samplers_ready = False
        self._sampler_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopped = False
        self._seq = 0

    # -- keys ---------------------------------------------------------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return "/".join((self.namespace, *parts))

    @property
    def is_node_leader(self) -> bool:
        return self.rank_info.is_node_leader

    # -- sampling -----------------------------------------------------------------------------------------------------
    def _ensure_samplers(self) -> None:
        with self._sampler_lock:
            if self._samplers_ready:
                return
            self._samplers_ready = True
            if self.is_node_leader:
                nvml = self._nvml_arg
                if nvml is None:
                    nvml = load_nvml(self.log)
                    self._owns_nvml = nvml is not None
                self._nvml = nvml
                if nvml is not None:
                    try:
                        self._nvml_sampler = NvmlSampler(nvml, self.log)
                    except Exception as exc:
                        self.log.warning("system metrics: NVML device enumeration failed (%s: %s); GPU figures off",
                                         type(exc).__name__, exc)
                try:
                    self._host_sampler = HostSampler(self.run_dir, self.log, self.clock)
                except Exception as exc:
                    self.log.warning("system metrics: psutil unavailable (%s); node figures off", exc)
            if self.cuda_device is not None:
                self._cuda_sampler = CudaSampler(self.cuda_device, self.log)

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

        Never blocks on other ranks: the only work here is priming CPU % and loading NVML on the node leader.
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
            t = threading.Thread(target=self._collector_loop, name="sdxl-sysstats-collector", daemon=True)
            self._threads.append(t)
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
            except Exception:
                pass
            self._nvml = None

    def __enter__(self) -> SystemMetrics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_store(self) -> KeyValueStore:
        clone = getattr(self.store, "clone", None)
        if clone is not None:
            try:
                return clone()
            except Exception:
                pass
        return self.store

    # -- the sampler thread -------------------------------------------------------------------------------------------
    def _sampler_loop(self) -> None:
        try:
            store = self._thread_store()
            rank = self.rank_info.rank
            has_cuda = self._cuda_sampler is not None
            if self.is_node_leader:
                gpus = self._nvml_sampler.identities if self._nvml_sampler is not None else []
                meta = {"v": PROTOCOL_VERSION, "host": self.rank_info.hostname,
                        "gpus": [[g.index, g.uuid, g.pci] for g in gpus]}
                store.set(self._key(f"node{self.rank_info.node_rank}", "meta"), _dumps(meta))
            cuda = self._cuda_sampler
            store.set(self._key(f"rank{rank}", "meta"), _dumps({
                "v": PROTOCOL_VERSION, "node": self.rank_info.node_rank, "lws": self.rank_info.local_world_size,
                "cuda": self.cuda_device if has_cuda else None,
                "uuid": cuda.uuid if cuda is not None else None, "pci": cuda.pci if cuda is not None else None,
            }))
            if not (self.is_node_leader or has_cuda):
                return
            if self._host_sampler is not None:
                # psutil keeps cpu_percent's reference times per thread: prime in the thread that samples
                self._host_sampler.state.prime()
            next_time = self.clock() + _first_delay(self.interval)
            while not self._stop.wait(max(0.0, next_time - self.clock())):
                self._publish_once(store)
                next_time += self.interval
                now = self.clock()
                if next_time < now:  # fell behind (suspended process): skip, do not burst
                    next_time = now + self.interval
        except Exception as exc:  # never let the thread die loudly; training goes on
            self.log.warning("system metrics: sampler thread ended (%s: %s)", type(exc).__name__, exc)

    def _publish_once(self, store: KeyValueStore) -> None:
        node, gpus, cuda = self._sample_parts()
        self._seq += 1
        wall = time.time()
        try:
            if self.is_node_leader:
                payload = encode_node_sample(self._seq, wall, node, gpus)
                store.set(self._key(f"node{self.rank_info.node_rank}", "sample"), payload)
                self.bytes_published += len(payload)
            if self._cuda_sampler is not None:
                payload = encode_rank_sample(self._seq, wall, cuda)
                store.set(self._key(f"rank{self.rank_info.rank}", "sample"), payload)
                self.bytes_published += len(payload)
            self.samples_published += 1
        except Exception as exc:
            self.publish_errors += 1
            if self.publish_errors == 1:
                self.log.warning("system metrics: cannot write to the store (%s: %s); will retry each interval",
                                 type(exc).__name__, exc)

    # -- the collector thread (primary) -------------------------------------------------------------------------------
    def _collector_loop(self) -> None:
        try:
            store = self._thread_store()
            state = _CollectorState(self, store)
            next_time = self.clock() + self.interval
            while not self._stop.wait(max(0.0, next_time - self.clock())):
                try:
                    row = state.collect()
                except Exception as exc:
                    state.note_error(exc)
                    row = None
                if row is not None and self.sink is not None:
                    try:
                        self.sink(row)
                        self.rows_emitted += 1
                    except Exception as exc:
                        state.note_error(exc, what="sink")
                next_time += self.interval
                now = self.clock()
                if next_time < now:
                    next_time = now + self.interval
        except Exception as exc:
            self.log.warning("system metrics: collector thread ended (%s: %s)", type(exc).__name__, exc)


class _CollectorState:
    """The primary's view: which keys exist, latest reports, staleness. Reads never block (check before get)."""

    def __init__(self, owner: SystemMetrics, store: KeyValueStore) -> None:
        self.owner = owner
        self.store = store
        info = owner.rank_info
        self.num_nodes = max(1, info.num_nodes)
        self.world_size = info.world_size
        self.tracker = StalenessTracker(owner.stale_after, owner.clock())
        self.nodes: dict[int, NodeReport] = {}
        self.ranks: dict[int, RankReport] = {}
        self.no_cuda_ranks: set[int] = set()
        self.present: set[str] = set()
        self._errors_logged: set[str] = set()

    def note_error(self, exc: BaseException, what: str = "collect") -> None:
        if what not in self._errors_logged:
            self._errors_logged.add(what)
            self.owner.log.warning("system metrics: %s failed (%s: %s); goes on next interval",
                                   what, type(exc).__name__, exc)

    def _exists(self, key: str) -> bool:
        if key in self.present:
            return True
        if self.store.check([key]):
            self.present.add(key)
            return True
        return False

    def _get_many(self, keys: list[str]) -> list[bytes]:
        """Values of keys known to exist (keys are never deleted): one round trip when the store has multi_get."""
        multi_get = getattr(self.store, "multi_get", None)
        if multi_get is not None and keys:
            return list(multi_get(keys))
        return [self.store.get(k) for k in keys]

    def _learn_meta(self) -> None:
        key = self.owner._key
        for n in range(self.num_nodes):
            if n not in self.nodes and self._exists(key(f"node{n}", "meta")):
                meta = json.loads(self._get_many([key(f"node{n}", "meta")])[0])
                gpus = [GpuIdentity(int(i), u, p) for i, u, p in meta.get("gpus", [])]
                self.nodes[n] = NodeReport(n, meta.get("host"), gpus)
                if meta.get("host"):
                    self.owner.hostnames[n] = str(meta["host"])
                    self.owner.log.debug("system metrics: node %d is %s (%d GPUs)", n, meta["host"], len(gpus))
        for r in range(self.world_size):
            if r in self.ranks or r in self.no_cuda_ranks:
                continue
            if self._exists(key(f"rank{r}", "meta")):
                meta = json.loads(self._get_many([key(f"rank{r}", "meta")])[0])
                if meta.get("cuda") is None:
                    self.no_cuda_ranks.add(r)
                else:
                    self.ranks[r] = RankReport(r, int(meta["node"]), int(meta.get("lws", 1)), int(meta["cuda"]),
                                               meta.get("uuid"), meta.get("pci"))

    def collect(self) -> dict[str, float] | None:
        self._learn_meta()
        key = self.owner._key
        sources: list[tuple[str, int, str]] = []
        for n in self.nodes:
            k = key(f"node{n}", "sample")
            if self._exists(k):
                sources.append(("node", n, k))
        for r in self.ranks:
            k = key(f"rank{r}", "sample")
            if self._exists(k):
                sources.append(("rank", r, k))
        values = self._get_many([k for _, _, k in sources])
        now = self.owner.clock()
        for (kind, ident, _), raw in zip(sources, values):
            if kind == "node":
                seq, _, figures, gpu_figures = decode_node_sample(raw)
                self.nodes[ident].figures = figures
                self.nodes[ident].gpu_figures = gpu_figures
            else:
                seq, _, figures = decode_rank_sample(raw)
                self.ranks[ident].figures = figures
            self.tracker.observe((kind, ident), seq, now)
        fresh: dict[int, NodeReport] = {}
        stale_nodes: list[int] = []
        for n in range(self.num_nodes):
            if self.tracker.is_stale(("node", n), now):
                stale_nodes.append(n)
            elif self.tracker.seen(("node", n)):
                fresh[n] = self.nodes[n]
        fresh_ranks: list[RankReport] = []
        stale_ranks = 0
        for r, report in sorted(self.ranks.items()):
            if not self.tracker.seen(("rank", r)):
                continue
            if self.tracker.is_stale(("rank", r), now):
                stale_ranks += 1
            else:
                fresh_ranks.append(report)
        if not fresh and not stale_nodes:
            return None  # nothing heard yet and still within the grace period
        return assemble_row(fresh, fresh_ranks, stale_nodes=stale_nodes, stale_ranks=stale_ranks,
                            multi_node=self.num_nodes > 1, aggregate_only=self.owner.aggregate_only)


def default_run_dir() -> str:
    """The current directory: a reasonable disk to report when no run directory is known."""
    return os.getcwd()
