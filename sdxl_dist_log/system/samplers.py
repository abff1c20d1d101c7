"""Loading NVML, and the three samplers that run the tables of :mod:`sdxl_dist_log.system.fields`.

A row that raises is disabled (per GPU for NVML rows) with one log line per row name; the other figures go on
(:class:`~sdxl_dist_log.system.guard.Guard`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sdxl_dist_log.system.fields import (
    CUDA_ERRORS,
    CUDA_FIELDS,
    HOST_FIELDS,
    NVML_FIELDS,
    CudaProbe,
    HostState,
    NvmlField,
    TorchCuda,
    nvml_errors,
)
from sdxl_dist_log.system.gpus import GpuIdentity, as_text
from sdxl_dist_log.system.guard import Guard

_LOG = logging.getLogger(__name__)


class NvmlLoader:
    """Imports and initialises NVML; says why it is unavailable once per loader, however often it is asked.

    Args:
        logger: where the one line goes; this module's logger when None.

    Example:
        >>> nvml = NvmlLoader().load()  # None on a GPU-less laptop, after one INFO line
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or _LOG
        self._said = False

    def load(self, module: Any | None = None) -> Any | None:
        """The initialised NVML module, or None.

        Args:
            module: an NVML module-like object to initialise instead of importing ``pynvml`` (a ``FakeNvml``).

        Returns:
            The initialised module, or None when ``pynvml`` cannot be imported or ``nvmlInit`` fails
            (``NVMLError_LibraryNotFound`` on a machine without an NVIDIA driver).
        """
        nvml = module
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py
            except ImportError as exc:
                return self._unavailable(f"cannot import pynvml ({type(exc).__name__}: {exc})")
        try:
            nvml.nvmlInit()
        except (*nvml_errors(nvml), OSError) as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded, a bad library
            return self._unavailable(f"nvmlInit failed ({type(exc).__name__}: {exc})")
        return nvml

    def _unavailable(self, reason: str) -> None:
        if not self._said:
            self._said = True
            self.log.info("NVML unavailable: %s; GPU figures from NVML are off", reason)
        return None


class NvmlSampler:
    """Samples every NVML GPU of the node through :data:`~sdxl_dist_log.system.fields.NVML_FIELDS`.

    Args:
        nvml: the initialised pynvml module or a FakeNvml.
        logger: where disabled rows are reported (one line per row).
        fields: the table.

    Raises:
        The module's NVMLError: the GPUs cannot be counted or a handle cannot be had.
    """

    def __init__(self, nvml: Any, logger: logging.Logger, fields: Sequence[NvmlField] = NVML_FIELDS) -> None:
        self.nvml = nvml
        self.guard = Guard(logger, "gpu")
        self.handles: list[Any] = []
        self.identities: list[GpuIdentity] = []
        self._rows: list[tuple[str, Callable[..., Any], tuple[Any, ...], Callable[[Any], dict[str, float]]]] = []
        for spec in fields:
            fn = next((getattr(nvml, n) for n in spec.functions if hasattr(nvml, n)), None)
            args = [getattr(nvml, a, None) if isinstance(a, str) else a for a in spec.args]
            if fn is None or any(a is None for a in args):
                logger.warning("system metrics: %r disabled: NVML has no %s", spec.name, "/".join(spec.functions))
                continue
            self._rows.append((spec.name, fn, tuple(args), spec.transform))
        errors = nvml_errors(nvml)
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pci = None
            try:
                uuid = as_text(nvml.nvmlDeviceGetUUID(handle))
            except errors:
                pass  # matched by PCI bus id instead
            try:
                pci = as_text(nvml.nvmlDeviceGetPciInfo(handle).busId)
            except errors:
                pass  # matched by UUID only
            self.handles.append(handle)
            self.identities.append(GpuIdentity(index, uuid, pci))

    def sample(self) -> dict[int, dict[str, float]]:
        """One sample: NVML index -> {figure: value}; rows that failed before are skipped."""
        out: dict[int, dict[str, float]] = {}
        for index, handle in enumerate(self.handles):
            figures: dict[str, float] = {}
            for name, fn, args, transform in self._rows:
                def read(fn=fn, args=args, transform=transform, handle=handle, figures=figures) -> None:
                    figures.update(transform(fn(handle, *args)))

                self.guard.run(name, read, unit=index)
            watts, limit = figures.get("power_watts"), figures.get("power_limit_watts")
            if watts is not None and limit:
                figures["power_percent"] = 100.0 * watts / limit
            out[index] = figures
        return out


class HostSampler:
    """Samples node-wide figures through :data:`~sdxl_dist_log.system.fields.HOST_FIELDS`; primes CPU % at once.

    Args:
        run_dir: a directory on the filesystem whose disk % is reported.
        logger: where disabled rows are reported.
        clock: monotonic seconds, for the network rates.
        psutil: the psutil module or a double; None imports psutil.

    Raises:
        ImportError: psutil is not installed.
    """

    def __init__(self, run_dir: str, logger: logging.Logger, clock: Callable[[], float] = time.monotonic,
                 psutil: Any | None = None) -> None:
        self.state = HostState(run_dir, clock, psutil)
        self.guard = Guard(logger)
        self.state.prime()

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, fn in HOST_FIELDS:
            self.guard.run(name, lambda fn=fn: out.update(fn(self.state)))
        return out


class CudaSampler:
    """Samples this rank's figures through :data:`~sdxl_dist_log.system.fields.CUDA_FIELDS`.

    Args:
        device: the rank's torch CUDA device index.
        logger: where disabled rows are reported.
        cuda: what reads the device; :class:`~sdxl_dist_log.system.fields.TorchCuda` when None.
    """

    def __init__(self, device: int, logger: logging.Logger, cuda: CudaProbe | None = None) -> None:
        self.device = device
        self.cuda = cuda if cuda is not None else TorchCuda()
        self.guard = Guard(logger, "cuda device")
        try:
            self.uuid, self.pci = self.cuda.identity(device)
        except CUDA_ERRORS as exc:
            logger.warning("system metrics: cannot identify CUDA device %d (%s); its figures are keyed by rank",
                           device, exc)
            self.uuid = self.pci = None

    def sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, fn in CUDA_FIELDS:
            self.guard.run(name, lambda fn=fn: out.update(fn(self.cuda, self.device)), unit=self.device)
        return out
