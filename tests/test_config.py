"""Tests of sdxl_dist_log.config: WandbConfig and LogConfig validate when built, name the field and what is allowed,
reject unknown keys of a mapping, and never change once built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from sdxl_dist_log.config import LOG_LEVELS, ConfigError, LogConfig, WandbConfig


# -- errors name the field and the allowed values ---------------------------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda: WandbConfig(mode="offlin"), ["mode", "'offlin'", "'online'", "'offline'", "'disabled'"]),
    (lambda: WandbConfig(system_metrics_interval=-1), ["system_metrics_interval", "-1", "> 0"]),
    (lambda: WandbConfig(system_metrics_interval=0), ["system_metrics_interval", "> 0"]),
    (lambda: WandbConfig(max_images_to_log=-1), ["max_images_to_log", "-1", ">= 0"]),
    (lambda: WandbConfig(init_timeout=-5), ["init_timeout", "> 0"]),
    (lambda: WandbConfig(fallback_mode="online"), ["fallback_mode", "'offline'", "'disabled'"]),
    (lambda: WandbConfig.from_dict({"project": "p", "projct": "q"}), ["'projct'", "known fields", "project",
                                                                       "metric_prefix"]),
    (lambda: WandbConfig(metric_reduce={"loss": "avg"}),
     ["metric_reduce", "'avg'", "'loss'", "mean", "sum", "min", "max", "per_rank", "local"]),
    (lambda: WandbConfig(metric_reduce={"tokens/*": "median"}), ["metric_reduce", "'median'", "mean"]),
    (lambda: WandbConfig(project=""), ["project", "non-empty"]),
    (lambda: WandbConfig(resume="sometimes"), ["resume", "'sometimes'", "'allow'", "'must'"]),
    (lambda: WandbConfig(tags="sdxl"), ["tags", "list of strings"]),
    (lambda: WandbConfig(max_images_to_log=2.5), ["max_images_to_log", "integer"]),
    (lambda: WandbConfig(collective_timeout=float("inf")), ["collective_timeout", "finite"]),
    (lambda: WandbConfig(image_value_range=(1.0, -1.0)), ["image_value_range", "low < high"]),
    (lambda: WandbConfig(step_metric=""), ["step_metric", "non-empty"]),
    (lambda: LogConfig(level="LOUD"), ["level", "'LOUD'", "'INFO'", "'DEBUG'"]),
    (lambda: LogConfig.from_dict({"nme": "x"}), ["'nme'", "known fields", "log_dir"]),
    (lambda: WandbConfig(on_logging_fault="ignore"), ["on_logging_fault", "'ignore'", "'continue'", "'raise'"]),
    (lambda: WandbConfig(collective_warn_after=0), ["collective_warn_after", "> 0"]),
    (lambda: WandbConfig(collective_warn_after=float("nan")), ["collective_warn_after", "finite"]),
    (lambda: WandbConfig(config={"optim": {"betas": [0.9, object()]}}), ["WandbConfig.config", "'optim.betas[1]'"]),
    (lambda: WandbConfig(config={1: "a"}), ["WandbConfig.config", "key 1"]),
], ids=["mode", "negative-interval", "zero-interval", "negative-image-cap", "negative-init-timeout", "fallback-mode",
        "unknown-key", "bad-reduce-op", "bad-reduce-op-glob", "empty-project", "resume", "tags-string",
        "fractional-image-cap", "infinite-timeout", "reversed-value-range", "empty-step-metric", "log-level",
        "log-unknown-key", "fault-policy", "zero-warn-after", "nan-warn-after", "config-value", "config-key"])
def test_config_errors_name_the_field_and_allowed_values(make: Callable[[], Any], words: list[str]) -> None:
    """Every invalid value raises ConfigError (a ValueError) whose message names the field and what is allowed."""
    with pytest.raises(ConfigError) as caught:
        make()
    assert isinstance(caught.value, ValueError)
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


# -- WandbConfig ------------------------------------------------------------------------------------------------------
def test_valid_configs_are_accepted() -> None:
    """A mapping with reduce globs, a zero image cap and tags as a tuple builds; tags become a list."""
    cfg = WandbConfig.from_dict({"project": "p", "mode": "disabled", "metric_reduce": {"tokens/*": "sum",
                                                                                       "lr": "local"},
                                 "max_images_to_log": 0, "tags": ("a", "b")})
    assert cfg.metric_reduce == {"tokens/*": "sum", "lr": "local"} and cfg.tags == ["a", "b"]
    assert LogConfig(level="debug").level == "DEBUG"


@pytest.mark.parametrize("resume, expected", [(False, None), (True, "allow"), ("must", "must"), ("auto", "auto")])
def test_resume_becomes_wandb_s_argument(resume: bool | str, expected: str | None) -> None:
    """``resume`` True/False map to W&B's "allow"/None; W&B's own strings pass through."""
    assert WandbConfig(resume=resume).wandb_resume == expected


def test_image_value_range_is_kept_as_floats() -> None:
    """An integer range is stored as floats, so conversions never divide integers."""
    assert WandbConfig(image_value_range=(-1, 1)).image_value_range == (-1.0, 1.0)


@pytest.mark.parametrize("cls", [WandbConfig, LogConfig], ids=lambda c: c.__name__)
def test_configs_are_frozen_and_derived_with_replace(cls: type) -> None:
    """A built config cannot be changed; ``dataclasses.replace`` derives a validated variant."""
    cfg = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.primary_rank = 1  # type: ignore[misc]
    assert dataclasses.replace(cfg, primary_rank=1).primary_rank == 1
    with pytest.raises(ConfigError, match="primary_rank"):
        dataclasses.replace(cfg, primary_rank=-1)


# -- LogConfig --------------------------------------------------------------------------------------------------------
def test_log_config_defaults() -> None:
    """The defaults name the logger "sdxl", log INFO under outputs/logs, with rank 0 as the primary."""
    cfg = LogConfig()
    assert (cfg.name, cfg.level, cfg.log_dir, cfg.primary_rank) == ("sdxl", "INFO", "outputs/logs", 0)


@pytest.mark.parametrize("level", ["debug", "Info", "WARNING", "error", "critical"])
def test_log_config_level_case_insensitive(level: str) -> None:
    """Levels are accepted in any case and stored upper case."""
    assert LogConfig(level=level).level == level.upper()


@pytest.mark.parametrize("level", ["VERBOSE", "warn", "", 20, None])
def test_log_config_bad_level_lists_allowed(level: Any) -> None:
    """An unknown level (or not a string) is an error that lists every allowed level."""
    with pytest.raises(ConfigError) as info:
        LogConfig(level=level)
    message = str(info.value)
    assert "LogConfig.level" in message
    for allowed in LOG_LEVELS:
        assert repr(allowed) in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"name": ""}, "LogConfig.name"), ({"primary_rank": -1}, "LogConfig.primary_rank"),
     ({"primary_rank": True}, "LogConfig.primary_rank")],
)
def test_log_config_other_validation(kwargs: dict, fragment: str) -> None:
    """An empty name and a negative or boolean primary rank are errors naming the field."""
    with pytest.raises(ConfigError, match=fragment):
        LogConfig(**kwargs)


def test_log_config_from_dict_unknown_key() -> None:
    """Unknown keys of a mapping are all named, sorted, with the known fields in declaration order."""
    with pytest.raises(ConfigError) as info:
        LogConfig.from_dict({"name": "x", "logdir": "y", "colour": True})
    message = str(info.value)
    assert "'colour', 'logdir'" in message
    assert "known fields: name, level, log_dir" in message


def test_log_config_from_dict_ok() -> None:
    """A valid mapping builds the same config as the keywords."""
    assert LogConfig.from_dict({"level": "debug", "progress": False}) == LogConfig(level="DEBUG", progress=False)


@pytest.mark.parametrize("cls", [WandbConfig, LogConfig], ids=lambda c: c.__name__)
def test_configs_are_keyword_only(cls: type) -> None:
    """Fields cannot be passed by position, so adding a field never shifts a caller's arguments."""
    with pytest.raises(TypeError):
        cls("name")
