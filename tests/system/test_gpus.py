"""Tests of sdxl_dist_log.system.gpus: UUID and PCI bus id normalization, and matching a CUDA device to NVML."""

from __future__ import annotations

from typing import Any

import pytest

from sdxl_dist_log.system.gpus import GpuIdentity, match_gpu, normalize_pci_bus_id, normalize_uuid


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("GPU-5a0cA1b2-0000", "5a0ca1b2-0000"),
        (b"GPU-abc\x00", "abc"),
        ("abc", "abc"),
        ("MIG-xyz", "xyz"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_uuid(raw: Any, expected: str | None) -> None:
    assert normalize_uuid(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"00000000:19:00.0", "0000:19:00"),  # NVML, bytes
        ("00000000:AB:00.0", "0000:ab:00"),
        ("0000:ab:00", "0000:ab:00"),  # torch's pci_domain/bus/device formatted
        ("19:00.0", "0000:19:00"),
        ("not a bus id", None),
        (None, None),
    ],
)
def test_normalize_pci_bus_id(raw: Any, expected: str | None) -> None:
    assert normalize_pci_bus_id(raw) == expected


GPUS = [GpuIdentity(0, "GPU-aaaa", "00000000:10:00.0"), GpuIdentity(1, "GPU-bbbb", "00000000:11:00.0")]


@pytest.mark.parametrize(
    ("uuid", "pci", "expected"),
    [
        ("bbbb", None, 1),  # torch omits the GPU- prefix
        ("GPU-AAAA", None, 0),
        (None, "0000:11:00", 1),  # PCI when the UUID is unknown
        ("cccc", "0000:10:00", 0),  # UUID unknown to NVML (e.g. MIG): fall back to PCI
        ("cccc", None, None),
        (None, None, None),
    ],
)
def test_match_gpu_by_uuid_or_pci(uuid: str | None, pci: str | None, expected: int | None) -> None:
    assert match_gpu(uuid, pci, GPUS) == expected
