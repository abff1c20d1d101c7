"""The tables of figures: one row per call, and the small readers the rows call.

* :data:`NVML_FIELDS`, per GPU through NVML: utilization, memory used/total/%, temperature, power and % of its limit,
  SM clock, clock event (throttle) reasons, corrected ECC errors. Never PCIe throughput (about 21 ms a call).
* :data:`CUDA_FIELDS`, per rank through a :class:`CudaProbe` (``torch.cuda``): memory allocated, reserved and max
  allocated of the rank's device, which only the owning process can see.
* :data:`HOST_FIELDS`, per node through psutil (:class:`HostState`): CPU %, memory %, disk % of the run directory's
  filesystem, network bytes/s, 1-minute load.

Adding a figure is adding a row. The samplers that run the tables are in :mod:`sdxl_dist_log.system.samplers`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


# ----------------------------------------------------------------------------------------------------------------------
# NVML, per GPU
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


def nvml_errors(nvml: Any) -> tuple[type[BaseException], ...]:
    """What an NVML call raises: the module's ``NVMLError`` (pynvml's and FakeNvml's carry the return code)."""
    error = getattr(nvml, "NVMLError", None)
    return (error,) if isinstance(error, type) and issubclass(error, BaseException) else (OSError,)


# ----------------------------------------------------------------------------------------------------------------------
# torch.cuda, per rank
# ----------------------------------------------------------------------------------------------------------------------
class CudaProbe(Protocol):
    """What the per-rank table reads of a CUDA device; :class:`TorchCuda` is the real one, tests pass a double."""

    def memory_stats(self, device: int) -> dict[str, float]: ...

    def identity(self, device: int) -> tuple[str | None, str | None]: ...

    def current_device(self) -> int | None: ...

    def device_count(self) -> int: ...


CUDA_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, AssertionError)
"""What torch.cuda raises for a device it cannot use (``AssertionError`` when torch has no CUDA at all)."""


class TorchCuda:
    """This process's ``torch.cuda``."""

    def current_device(self) -> int | None:
        """The CUDA device this process uses, or None without CUDA."""
        import torch

        return torch.cuda.current_device() if torch.cuda.is_available() else None

    def device_count(self) -> int:
        """CUDA devices visible to this process."""
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def memory_stats(self, device: int) -> dict[str, float]:
        """torch.cuda's view of this process's memory on ``device``."""
        import torch

        return {
            "memory_allocated": float(torch.cuda.memory_allocated(device)),
            "memory_reserved": float(torch.cuda.memory_reserved(device)),
            "max_memory_allocated": float(torch.cuda.max_memory_allocated(device)),
        }

    def identity(self, device: int) -> tuple[str | None, str | None]:
        """(UUID, PCI bus id) of torch CUDA device ``device``; Nones when unknown."""
        import torch

        props = torch.cuda.get_device_properties(device)
        uuid = str(getattr(props, "uuid", "") or "") or None
        pci = None
        if hasattr(props, "pci_bus_id"):
            pci = (f"{getattr(props, 'pci_domain_id', 0):04x}:{props.pci_bus_id:02x}:"
                   f"{getattr(props, 'pci_device_id', 0):02x}")
        return uuid, pci


CUDA_FIELDS: tuple[tuple[str, Callable[[CudaProbe, int], dict[str, float]]], ...] = (
    ("torch.cuda memory", lambda cuda, device: cuda.memory_stats(device)),
)
"""The per-rank table: (name, (probe, device) -> {figure: value}). Figures: memory_allocated, memory_reserved,
max_memory_allocated (bytes of this process on its device)."""


# ----------------------------------------------------------------------------------------------------------------------
# psutil, per node
# ----------------------------------------------------------------------------------------------------------------------
class HostState:
    """psutil and the counters the node table's rate rows need.

    Args:
        run_dir: a directory on the filesystem whose disk % is reported.
        clock: monotonic seconds, for rates.
        psutil: the psutil module or a double; None imports psutil (ImportError when it is missing).
    """

    def __init__(self, run_dir: str, clock: Callable[[], float] = time.monotonic, psutil: Any | None = None) -> None:
        if psutil is None:
            import psutil
        self.psutil = psutil
        self.run_dir = run_dir
        self.clock = clock
        self._net: tuple[float, int, int] | None = None

    def prime(self) -> None:
        """Make the first real sample meaningful: psutil.cpu_percent(None) returns a false 0.0 on its first call.

        psutil keeps cpu_percent's reference times per thread: prime in the thread that samples.
        """
        self.psutil.cpu_percent(None)
        try:
            counters = self.psutil.net_io_counters()
        except OSError:  # no /proc/net/dev (some containers)
            counters = None
        self._net = None if counters is None else (self.clock(), counters.bytes_sent, counters.bytes_recv)

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


HOST_FIELDS: tuple[tuple[str, Callable[[HostState], dict[str, float]]], ...] = (
    ("cpu", lambda h: {"cpu/percent": float(h.psutil.cpu_percent(None))}),
    ("memory", lambda h: {"memory/percent": float(h.psutil.virtual_memory().percent)}),
    ("disk", lambda h: {"disk/percent": float(h.psutil.disk_usage(h.run_dir).percent)}),
    ("network", lambda h: h.network()),
    ("load", lambda h: {"load/avg_1m": float(h.psutil.getloadavg()[0])}),
)
"""The per-node table: (name, state -> {figure: value})."""
