"""Tests of sdxl_dist_log.runconfig: what a run config may hold (``checked_config``) and the nested merge."""

from __future__ import annotations

import copy
import math
import pathlib
import re

import numpy as np
import pytest

from sdxl_dist_log.errors import RunConfigError
from sdxl_dist_log.runconfig import checked_config, deep_merge


# -- checked_config ---------------------------------------------------------------------------------------------
def test_checked_config_keeps_and_converts_what_w_and_b_stores() -> None:
    values = {"lr": 1e-4, "steps": np.int64(7), "scale": np.float32(0.5), "betas": (0.9, 0.99), "on": np.bool_(True),
              "mask": np.arange(3), "out": pathlib.Path("/data/out"), "none": None, "nested": {"k": [1, "a"]},
              "nan": float("nan")}
    out = checked_config(values)
    assert out["steps"] == 7 and type(out["steps"]) is int
    assert out["scale"] == 0.5 and type(out["scale"]) is float
    assert out["betas"] == [0.9, 0.99] and out["on"] is True and out["mask"] == [0, 1, 2]
    assert out["out"] == "/data/out" and out["none"] is None and out["nested"] == {"k": [1, "a"]}
    assert math.isnan(out["nan"])


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"x": object()}, "'x' is a builtins.object"),
        ({1: "a"}, "key 1 must be a non-empty string"),
        ({"a": 1, None: 2}, "key None must be a non-empty string"),
        ({"": 1}, "key '' must be a non-empty string"),
        ({"optim": {"betas": [0.9, b"x"]}}, "'optim.betas[1]' is a builtins.bytes"),
        ({"optim": {2: 0.9}}, "key 2 under 'optim'"),
        ({"fn": print}, "'fn' is a builtins.builtin_function_or_method"),
    ],
)
def test_checked_config_names_the_first_key_w_and_b_cannot_store(values: dict, named: str) -> None:
    with pytest.raises(RunConfigError, match=re.escape(named)):
        checked_config(values, "log_config")


@pytest.mark.parametrize("values", [5, "a=1", [("a", 1)], None])
def test_checked_config_takes_a_mapping(values: object) -> None:
    with pytest.raises(RunConfigError, match="log_config takes a mapping"):
        checked_config(values)


def test_checked_config_stops_at_a_cycle() -> None:
    loop: list = []
    loop.append(loop)
    with pytest.raises(RunConfigError, match="nested more than"):
        checked_config({"loop": loop})


# -- deep_merge -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base", "update", "expected"),
    [
        ({}, {}, {}),
        ({"a": 1}, {}, {"a": 1}),
        ({}, {"a": 1}, {"a": 1}),
        ({"a": 1, "b": 2}, {"b": 3, "c": 4}, {"a": 1, "b": 3, "c": 4}),
        ({"m": {"x": 1, "y": 2}}, {"m": {"y": 3, "z": 4}}, {"m": {"x": 1, "y": 3, "z": 4}}),
        ({"m": {"n": {"x": 1}}}, {"m": {"n": {"y": 2}}}, {"m": {"n": {"x": 1, "y": 2}}}),
        ({"m": {"x": 1}}, {"m": 5}, {"m": 5}),                # a scalar replaces a mapping
        ({"m": 5}, {"m": {"x": 1}}, {"m": {"x": 1}}),         # a mapping replaces a scalar
        ({"l": [1, 2]}, {"l": [3]}, {"l": [3]}),              # lists replace, never concatenate
        ({"a": 1}, {"a": None}, {"a": None}),
    ],
)
def test_deep_merge(base: dict, update: dict, expected: dict) -> None:
    assert deep_merge(base, update) == expected


def test_deep_merge_does_not_mutate_or_alias() -> None:
    base = {"m": {"x": 1}, "keep": {"k": 1}}
    update = {"m": {"y": 2}, "new": {"z": 3}}
    before_base, before_update = copy.deepcopy(base), copy.deepcopy(update)
    out = deep_merge(base, update)
    assert base == before_base and update == before_update
    out["m"]["w"] = 0
    out["new"]["z"] = 99
    assert base == before_base and update == before_update
    assert "w" not in base["m"]
