"""A fake NVML for tests and demos on GPU-less machines, at the seam the real one uses.

``SystemMetrics(nvml=...)`` and ``WandbLogger(nvml=...)`` take a module-like object; the real one is the ``pynvml``
module (nvidia-ml-py) after ``nvmlInit()``. :class:`FakeNvml` has the same functions the sampler calls, the same
constants, an ``NVMLError`` whose subclasses carry ``.value`` like pynvml's, and deterministic values per GPU so tests
can assert exact aggregates:

=====================  ===================================================
figure                 value for GPU ``i`` with offset ``o``
=====================  ===================================================
utilization (%)        ``10*i + o``
memory used (bytes)    ``(i + 1) GiB + o MiB``; total ``80 GiB``
temperature (C)        ``40 + i + o``
power (mW)             ``100_000 + 10_000*i + 1_000*o``; limit ``700_000``
SM clock (MHz)         ``1980 - i``
clock event reasons    ``0x4`` (SW power cap) for odd ``i``, else ``0``
corrected ECC errors   ``i``
UUID                   ``GPU-00000000-0000-{o:04x}-0000-{i:012x}``
PCI bus id             ``00000000:{0x10+i:02X}:00.0`` (bytes, like pynvml)
=====================  ===================================================

A double is passed in by whoever builds the logger (a test, ``sdxl-dist-log demo --fake-nvml gpus=2``); production
code never builds one. :func:`parse_fake_nvml_spec` turns a short text spec into its keyword arguments.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

_ERROR_NAMES = {
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    """Like ``pynvml.NVMLError``: carries the NVML return code in ``.value``."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return _ERROR_NAMES.get(self.value, f"NVML Error with code {self.value}")


class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's spelling
    def __init__(self, value: int = NVML_ERROR_NOT_SUPPORTED) -> None:
        super().__init__(value)


class NVMLError_LibraryNotFound(NVMLError):  # noqa: N801 - pynvml's spelling
    def __init__(self, value: int = NVML_ERROR_LIBRARY_NOT_FOUND) -> None:
        super().__init__(value)


def _error(code: int) -> NVMLError:
    if code == NVML_ERROR_NOT_SUPPORTED:
        return NVMLError_NotSupported()
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return NVMLError_LibraryNotFound()
    return NVMLError(code)


@dataclass(frozen=True)
class _Utilization:
    gpu: int
    memory: int


@dataclass(frozen=True)
class _Memory:
    total: int
    used: int
    free: int


@dataclass(frozen=True)
class _PciInfo:
    busId: bytes  # noqa: N815 - pynvml's field name
    domain: int
    bus: int
    device: int


@dataclass(frozen=True)
class _Handle:
    index: int


GIB = 1 << 30
MIB = 1 << 20


class FakeNvml:
    """A module-like stand-in for an initialised ``pynvml`` with ``gpus`` deterministic GPUs.

    Args:
        gpus: number of GPUs the fake node has.
        offset: added to each GPU's figures (see the module table) so simulated nodes differ.
        fail: NVML function name -> error code; every call of that function raises ``NVMLError(code)``
            (e.g. ``{"nvmlDeviceGetTotalEccErrors": NVML_ERROR_NOT_SUPPORTED}`` for a GPU without ECC).
        fail_gpus: when given, ``fail`` applies to these GPU indices only.
        init_error: error code ``nvmlInit`` raises (``NVML_ERROR_LIBRARY_NOT_FOUND`` mimics a machine without NVML).

    Every call is counted in ``calls`` (function name -> count), so tests can assert what the sampler called.

    Example:
        >>> nv = FakeNvml(gpus=2, offset=5)
        >>> nv.nvmlDeviceGetUtilizationRates(nv.nvmlDeviceGetHandleByIndex(1)).gpu
        15
    """

    NVMLError = NVMLError
    NVMLError_NotSupported = NVMLError_NotSupported
    NVMLError_LibraryNotFound = NVMLError_LibraryNotFound
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_MEMORY_ERROR_TYPE_CORRECTED = NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_VOLATILE_ECC = NVML_VOLATILE_ECC
    NVML_AGGREGATE_ECC = NVML_AGGREGATE_ECC
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_ERROR_LIBRARY_NOT_FOUND = NVML_ERROR_LIBRARY_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = NVML_ERROR_GPU_IS_LOST
    NVML_ERROR_UNKNOWN = NVML_ERROR_UNKNOWN

    def __init__(
        self,
        gpus: int = 1,
        *,
        offset: int = 0,
        fail: Mapping[str, int] | None = None,
        fail_gpus: set[int] | None = None,
        init_error: int | None = None,
    ) -> None:
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {gpus}")
        self.gpus = gpus
        self.offset = offset
        self.fail = dict(fail or {})
        self.fail_gpus = set(fail_gpus) if fail_gpus is not None else None
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        self.initialised = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FakeNvml(gpus={self.gpus}, offset={self.offset}, fail={self.fail!r})"

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def _enter(self, name: str, handle: _Handle | None = None) -> None:
        with self._lock:
            self.calls[name] += 1
        code = self.fail.get(name)
        if code is not None and (handle is None or self.fail_gpus is None or handle.index in self.fail_gpus):
            raise _error(code)

    def uuid_of(self, index: int) -> str:
        """The UUID the fake reports for GPU ``index`` (what ``torch.cuda`` would report for the same device)."""
        return f"GPU-00000000-0000-{self.offset & 0xFFFF:04x}-0000-{index:012x}"

    def pci_bus_id_of(self, index: int) -> str:
        """The PCI bus id the fake reports for GPU ``index``, as NVML writes it."""
        return f"00000000:{0x10 + index:02X}:00.0"

    # -- the NVML functions the sampler calls -------------------------------------------------------------------------
    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        self._enter("nvmlInit")
        if self.init_error is not None:
            raise _error(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        self._enter("nvmlShutdown")
        self.initialised = max(0, self.initialised - 1)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCount")
        return self.gpus

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < self.gpus:
            raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:  # noqa: N802
        self._enter("nvmlDeviceGetUUID", handle)
        return self.uuid_of(handle.index)

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> _PciInfo:  # noqa: N802
        self._enter("nvmlDeviceGetPciInfo", handle)
        return _PciInfo(busId=self.pci_bus_id_of(handle.index).encode(), domain=0, bus=0x10 + handle.index, device=0)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:  # noqa: N802
        self._enter("nvmlDeviceGetUtilizationRates", handle)
        return _Utilization(gpu=10 * handle.index + self.offset, memory=5 * handle.index)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> _Memory:  # noqa: N802
        self._enter("nvmlDeviceGetMemoryInfo", handle)
        total = 80 * GIB
        used = (handle.index + 1) * GIB + self.offset * MIB
        return _Memory(total=total, used=used, free=total - used)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTemperature", handle)
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError(2)
        return 40 + handle.index + self.offset

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetPowerUsage", handle)
        return 100_000 + 10_000 * handle.index + 1_000 * self.offset

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetEnforcedPowerLimit", handle)
        return 700_000

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock_type: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetClockInfo", handle)
        if clock_type != NVML_CLOCK_SM:
            raise NVMLError(2)
        return 1980 - handle.index

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return 0x4 if handle.index % 2 else 0

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:  # noqa: N802 - deprecated name
        self._enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return 0x4 if handle.index % 2 else 0

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, error_type: int, counter_type: int) -> int:  # noqa: N802
        self._enter("nvmlDeviceGetTotalEccErrors", handle)
        return handle.index

    def nvmlDeviceGetPcieThroughput(self, handle: _Handle, counter: int) -> int:  # noqa: N802
        """Present only so tests can assert the sampler never calls it (≈ 21 ms a call on a real GPU)."""
        self._enter("nvmlDeviceGetPcieThroughput", handle)
        return 0


def parse_fake_nvml_spec(spec: str) -> dict[str, Any]:
    """Parse ``"gpus=2,offset=5,fail=nvmlDeviceGetTotalEccErrors"`` into FakeNvml keyword arguments.

    Args:
        spec: comma-separated ``key=value``; keys ``gpus`` (int), ``offset`` (int), ``fail`` (NVML function names
            joined by ``+``; each raises NVML_ERROR_NOT_SUPPORTED). A bare integer means
            ``gpus``.

    Returns:
        The keyword arguments.

    Raises:
        ValueError: an unknown key or a value that is not an integer.

    Example:
        >>> parse_fake_nvml_spec("gpus=2,offset=5")
        {'gpus': 2, 'offset': 5}
    """
    out: dict[str, Any] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            key, value = "gpus", key
        key = key.strip()
        value = value.strip()
        try:
            if key in ("gpus", "offset"):
                out[key] = int(value)
            elif key == "fail":
                out["fail"] = {name: NVML_ERROR_NOT_SUPPORTED for name in value.split("+") if name}
            else:
                raise ValueError(f"unknown key {key!r} (known: gpus, offset, fail)")
        except ValueError as exc:
            raise ValueError(f"fake NVML spec {spec!r}: {exc}") from None
    return out

