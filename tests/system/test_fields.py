"""Tests of sdxl_dist_log.system.fields: the tables name real NVML calls, and the readers behind the rows."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sdxl_dist_log.system.fields import (
    CUDA_ERRORS,
    GPU_FIGURES,
    NVML_FIELDS,
    THROTTLE_REASONS_MASK,
    HostState,
    TorchCuda,
    nvml_errors,
)
from sdxl_dist_log.testing.fake_nvml import FakeNvml


def test_installed_pynvml_has_the_functions_the_table_names() -> None:
    pynvml = pytest.importorskip("pynvml")
    for spec in NVML_FIELDS:
        assert any(hasattr(pynvml, f) for f in spec.functions), spec
        assert all(hasattr(pynvml, a) for a in spec.args if isinstance(a, str)), spec


def test_every_figure_of_the_nvml_table_has_its_place_on_the_wire() -> None:
    nv = FakeNvml(gpus=2)
    handle = nv.nvmlDeviceGetHandleByIndex(1)
    figures: dict[str, float] = {}
    for spec in NVML_FIELDS:
        fn = next(getattr(nv, f) for f in spec.functions if hasattr(nv, f))
        figures.update(spec.transform(fn(handle, *(getattr(nv, a) if isinstance(a, str) else a for a in spec.args))))
    assert set(figures) | {"power_percent"} == set(GPU_FIGURES)


@pytest.mark.parametrize(("mask", "throttled"), [(0x0, 0.0), (0x1, 0.0), (0x2 | 0x10 | 0x100, 0.0), (0x4, 1.0),
                                                 (0x8, 1.0), (0x20, 1.0), (0x40, 1.0), (0x80, 1.0)])
def test_only_slowdown_reasons_count_as_throttled(mask: int, throttled: float) -> None:
    spec = next(f for f in NVML_FIELDS if f.name == "clock_event_reasons")
    assert spec.transform(mask) == {"clock_event_reasons": float(mask), "clock_throttled": throttled}
    assert bool(mask & THROTTLE_REASONS_MASK) == bool(throttled)


def test_nvml_errors_are_the_modules_own() -> None:
    assert nvml_errors(FakeNvml()) == (FakeNvml.NVMLError,)
    assert nvml_errors(object()) == (OSError,)
    pynvml = pytest.importorskip("pynvml")
    assert nvml_errors(pynvml) == (pynvml.NVMLError,)


def test_torch_cuda_without_a_device_raises_what_the_sampler_catches() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(CUDA_ERRORS):
        TorchCuda().identity(0)


class _Psutil:
    """Just enough psutil for HostState: network counters from a list, or none at all."""

    def __init__(self, counters: list[Any]) -> None:
        self.counters = counters
        self.cpu_calls = 0

    def cpu_percent(self, interval: Any = None) -> float:
        self.cpu_calls += 1
        return 0.0

    def net_io_counters(self) -> Any:
        value = self.counters.pop(0)
        if isinstance(value, Exception):
            raise value
        return value


def _net(sent: int, recv: int) -> SimpleNamespace:
    return SimpleNamespace(bytes_sent=sent, bytes_recv=recv)


def test_network_rates_are_bytes_per_second_of_the_injected_clock() -> None:
    now = [100.0]
    host = HostState("/", clock=lambda: now[0], psutil=_Psutil([_net(1000, 5000), _net(3000, 5500), _net(3000, 5500)]))
    host.prime()
    assert host.psutil.cpu_calls == 1
    now[0] = 102.0
    assert host.network() == {"network/sent_bytes_per_s": 1000.0, "network/recv_bytes_per_s": 250.0}
    assert host.network() == {}  # no time has passed: no rate rather than a division by zero


@pytest.mark.parametrize("missing", [None, FileNotFoundError("/proc/net/dev")])
def test_priming_without_network_counters_starts_rates_at_the_next_sample(missing: Any) -> None:
    now = [0.0]
    host = HostState("/", clock=lambda: now[0], psutil=_Psutil([missing, _net(10, 10), _net(30, 10)]))
    host.prime()
    now[0] = 1.0
    assert host.network() == {}
    now[0] = 2.0
    assert host.network() == {"network/sent_bytes_per_s": 20.0, "network/recv_bytes_per_s": 0.0}
