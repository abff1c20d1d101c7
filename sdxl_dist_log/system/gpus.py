"""Which NVML GPU a rank's CUDA device is: GPU identities, and matching by UUID, then PCI bus id. Pure.

Never assumes CUDA index = NVML index = local rank: ``CUDA_VISIBLE_DEVICES`` and ``CUDA_DEVICE_ORDER`` renumber the
devices a process sees, while NVML always sees every GPU of the node in PCI order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuIdentity:
    """An NVML device as the node sees it."""

    index: int
    uuid: str | None
    pci: str | None


def as_text(value: Any) -> str | None:
    """NVML's bytes or str as stripped text; None when empty."""
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
    text = as_text(uuid)
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
    text = as_text(bus_id)
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
    """The NVML index of the GPU that a CUDA device (by UUID, else PCI bus id) is; None when none matches."""
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
