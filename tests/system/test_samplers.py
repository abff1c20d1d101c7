"""Tests of sdxl_dist_log.system.samplers: loading NVML, and the NVML, psutil and torch.cuda samplers with doubles."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.system.samplers import CudaSampler, HostSampler, NvmlLoader, NvmlSampler
from sdxl_dist_log.testing.fake_cuda import FakeCuda
from sdxl_dist_log.testing.fake_nvml import (
    GIB,
    MIB,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_NOT_SUPPORTED,
    FakeNvml,
)

LOG = logging.getLogger("t.samplers")


def test_load_nvml_without_gpu_is_one_log_line_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="t.loader")
    loader = NvmlLoader(logging.getLogger("t.loader"))
    assert loader.load(module=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)) is None
    assert loader.load(module=FakeNvml(init_error=NVML_ERROR_LIBRARY_NOT_FOUND)) is None
    lines = [r for r in caplog.records if "NVML unavailable" in r.getMessage()]
    assert len(lines) == 1 and "Library Not Found" in lines[0].getMessage()
    fake = FakeNvml(gpus=1)
    assert loader.load(module=fake) is fake and fake.initialised == 1


def test_real_pynvml_on_this_machine_returns_module_or_none() -> None:
    nvml = NvmlLoader().load()
    pynvml = pytest.importorskip("pynvml")
    assert nvml is None or nvml is pynvml
    if nvml is not None:
        nvml.nvmlShutdown()


def test_nvml_sampler_values_and_never_pcie() -> None:
    nv = FakeNvml(gpus=2, offset=5)
    sampler = NvmlSampler(nv, LOG)
    out = sampler.sample()
    assert out[1] == {
        "utilization": 15.0, "memory_used": float(2 * GIB + 5 * MIB), "memory_total": float(80 * GIB),
        "memory_percent": 100.0 * (2 * GIB + 5 * MIB) / (80 * GIB), "temperature": 46.0,
        "power_watts": 115.0, "power_limit_watts": 700.0, "power_percent": 100.0 * 115 / 700,
        "sm_clock_mhz": 1979.0, "clock_event_reasons": 4.0, "clock_throttled": 1.0, "ecc_corrected": 1.0,
    }
    assert nv.calls["nvmlDeviceGetPcieThroughput"] == 0
    assert nv.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 2  # the newer name when present
    assert [g.uuid for g in sampler.identities] == [nv.uuid_of(0), nv.uuid_of(1)]
    assert [g.pci for g in sampler.identities] == [nv.pci_bus_id_of(0), nv.pci_bus_id_of(1)]


def test_per_field_failure_disables_that_field_once_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    nv = FakeNvml(gpus=3, fail={"nvmlDeviceGetTotalEccErrors": NVML_ERROR_NOT_SUPPORTED})
    caplog.set_level(logging.WARNING)
    sampler = NvmlSampler(nv, logging.getLogger("t.ecc"))
    for _ in range(4):
        out = sampler.sample()
    assert all("ecc_corrected" not in g and g["utilization"] == 10.0 * i for i, g in out.items())
    assert nv.calls["nvmlDeviceGetTotalEccErrors"] == 3  # once per GPU, then never again
    assert len([r for r in caplog.records if "ecc_corrected" in r.getMessage()]) == 1


def test_a_gpu_whose_uuid_nvml_cannot_give_is_known_by_its_pci_bus_id() -> None:
    nv = FakeNvml(gpus=2, fail={"nvmlDeviceGetUUID": NVML_ERROR_NOT_SUPPORTED})
    sampler = NvmlSampler(nv, LOG)
    assert [(g.uuid, g.pci) for g in sampler.identities] == [(None, nv.pci_bus_id_of(0)), (None, nv.pci_bus_id_of(1))]
    assert sampler.sample()[1]["utilization"] == 10.0


def test_gpus_that_cannot_be_counted_raise_the_modules_nvml_error() -> None:
    with pytest.raises(FakeNvml.NVMLError):
        NvmlSampler(FakeNvml(gpus=2, fail={"nvmlDeviceGetCount": 999}), LOG)


class _OldNvml:
    """A pynvml without the newer clock-event name."""

    def __init__(self, inner: FakeNvml) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "nvmlDeviceGetCurrentClocksEventReasons":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_older_nvml_uses_the_throttle_reasons_name() -> None:
    inner = FakeNvml(gpus=2)
    out = NvmlSampler(_OldNvml(inner), LOG).sample()
    assert out[1]["clock_throttled"] == 1.0
    assert inner.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2


def test_host_sampler_reports_the_node_and_loses_only_a_row_that_fails(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    sampler = HostSampler(str(tmp_path), LOG)
    out = sampler.sample()
    assert {"cpu/percent", "memory/percent", "disk/percent", "load/avg_1m"} <= set(out)
    gone = HostSampler(str(tmp_path / "not-there"), LOG)  # disk_usage raises FileNotFoundError
    for _ in range(2):
        out = gone.sample()
    assert "disk/percent" not in out and "cpu/percent" in out and "memory/percent" in out
    assert len([r for r in caplog.records if "'disk' disabled" in r.getMessage()]) == 1


def test_cuda_sampler_reads_its_device_through_the_probe(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeCuda({"memory_allocated": 1.0, "memory_reserved": 2.0}, uuid="abc", pci="0000:10:00")
    sampler = CudaSampler(3, LOG, probe)
    assert (sampler.uuid, sampler.pci) == ("abc", "0000:10:00")
    assert sampler.sample() == {"memory_allocated": 1.0, "memory_reserved": 2.0}
    caplog.set_level(logging.WARNING)
    broken = CudaSampler(3, LOG, FakeCuda(stats_error=RuntimeError("CUDA error"),
                                          identity_error=RuntimeError("no device")))
    assert (broken.uuid, broken.pci) == (None, None)
    assert broken.sample() == {} and broken.sample() == {}
    assert broken.cuda.calls["memory_stats"] == 1  # disabled after its first failure
    messages = [r.getMessage() for r in caplog.records]
    assert any("cannot identify CUDA device 3" in m for m in messages)
    assert len([m for m in messages if "'torch.cuda memory' disabled on cuda device 3" in m]) == 1
