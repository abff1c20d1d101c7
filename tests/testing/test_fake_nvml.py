"""Tests of sdxl_dist_log.testing.fake_nvml: the text spec a demo or test turns into a FakeNvml."""

from __future__ import annotations

from typing import Any

import pytest

from sdxl_dist_log.testing.fake_nvml import NVML_ERROR_NOT_SUPPORTED, FakeNvml, parse_fake_nvml_spec


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gpus=2", {"gpus": 2}),
        ("4", {"gpus": 4}),
        ("gpus=2, offset=5", {"gpus": 2, "offset": 5}),
        ("gpus=1,fail=nvmlDeviceGetTotalEccErrors+nvmlDeviceGetPowerUsage",
         {"gpus": 1, "fail": {"nvmlDeviceGetTotalEccErrors": NVML_ERROR_NOT_SUPPORTED,
                              "nvmlDeviceGetPowerUsage": NVML_ERROR_NOT_SUPPORTED}}),
    ],
)
def test_parse_fake_nvml_spec(spec: str, expected: dict[str, Any]) -> None:
    assert parse_fake_nvml_spec(spec) == expected


def test_a_spec_builds_the_fake_it_describes() -> None:
    assert parse_fake_nvml_spec("") == {}
    fake = FakeNvml(**parse_fake_nvml_spec("gpus=3,offset=2"))
    assert fake.gpus == 3 and fake.offset == 2
    with pytest.raises(ValueError, match="fake NVML spec 'gpus=two'"):
        parse_fake_nvml_spec("gpus=two")
    with pytest.raises(ValueError, match="unknown key"):
        parse_fake_nvml_spec("colour=red")
