"""A fake ``torch.cuda`` for one process, at the seam the real one uses (``SystemMetrics(cuda_probe=...)``).

It answers what the per-rank table reads (:class:`~sdxl_dist_log.system.fields.CudaProbe`): the memory figures of
a device and its identity, so tests can say which NVML GPU a simulated ``cuda:k`` is (by UUID or PCI bus id).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping


class FakeCuda:
    """Fixed figures and identity for every device of this process; optional errors instead of either.

    Args:
        stats: what ``memory_stats`` returns (``memory_allocated``, ``memory_reserved``, ``max_memory_allocated``).
        uuid: the device UUID as torch reports it (without NVML's ``GPU-`` prefix), or None.
        pci: the PCI bus id as ``dddd:bb:dd``, or None.
        stats_error: raised by every ``memory_stats`` call instead.
        identity_error: raised by ``identity`` instead.
        device: what ``current_device`` returns (None: no CUDA).
        devices: what ``device_count`` returns; one more than ``device`` (or 0) when None.

    Example:
        >>> FakeCuda({"memory_allocated": 1.0}, uuid="abc").identity(0)
        ('abc', None)
    """

    def __init__(self, stats: Mapping[str, float] | None = None, *, uuid: str | None = None, pci: str | None = None,
                 stats_error: BaseException | None = None, identity_error: BaseException | None = None,
                 device: int | None = None, devices: int | None = None) -> None:
        self.stats = dict(stats or {})
        self.uuid = uuid
        self.pci = pci
        self.stats_error = stats_error
        self.identity_error = identity_error
        self.device = device
        self.devices = devices if devices is not None else (0 if device is None else device + 1)
        self.calls: Counter[str] = Counter()

    def memory_stats(self, device: int) -> dict[str, float]:
        self.calls["memory_stats"] += 1
        if self.stats_error is not None:
            raise self.stats_error
        return dict(self.stats)

    def identity(self, device: int) -> tuple[str | None, str | None]:
        self.calls["identity"] += 1
        if self.identity_error is not None:
            raise self.identity_error
        return self.uuid, self.pci

    def current_device(self) -> int | None:
        return self.device

    def device_count(self) -> int:
        return self.devices
