"""Tests of sdxl_dist_log.runconfig: secret redaction and nested merge of the run config."""

from __future__ import annotations

import copy

import pytest

from sdxl_dist_log.runconfig import REDACTED, deep_merge, redact_secrets


# -- redact_secrets ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    [
        "api_key", "API_KEY", "apikey", "apiKey", "ApiKey", "api-key", "wandb_api_key", "WANDB_API_KEY",
        "token", "hf_token", "HF_TOKEN", "access_token", "authToken",
        "password", "db_password", "Password", "passwd",
        "secret", "client_secret", "aws_secret_access_key", "SECRET_KEY",
        "credential", "credentials", "gcp_credentials_json",
    ],
)
def test_secret_keys_are_redacted(key: str) -> None:
    assert redact_secrets({key: "s3cr3t", "lr": 1e-4}) == {key: REDACTED, "lr": 1e-4}


@pytest.mark.parametrize("value", ["abc", 12345, None, ["a", "b"], b"bytes"])
def test_any_non_mapping_secret_value_is_redacted(value) -> None:
    assert redact_secrets({"token": value}) == {"token": REDACTED}


@pytest.mark.parametrize(
    "key",
    ["lr", "batch_size", "model", "resolution", "seed", "keys", "monkey", "api", "pass_rate", "steps", "optimizer"],
)
def test_non_secret_keys_untouched(key: str) -> None:
    value = {"nested": 1} if key == "model" else 0.5
    assert redact_secrets({key: value}) == {key: value}


def test_nested_at_any_depth() -> None:
    values = {
        "lr": 1e-4,
        "hub": {"repo": "me/sdxl", "hf_token": "hf_abc", "deep": {"aws": {"secret": "x", "region": "eu"}}},
        "wandb": {"project": "p", "api_key": "k"},
    }
    assert redact_secrets(values) == {
        "lr": 1e-4,
        "hub": {"repo": "me/sdxl", "hf_token": REDACTED, "deep": {"aws": {"secret": REDACTED, "region": "eu"}}},
        "wandb": {"project": "p", "api_key": REDACTED},
    }


def test_secret_named_mapping_is_recursed_not_replaced() -> None:
    values = {"secrets": {"wandb_api_key": "k", "note": "public"}}
    assert redact_secrets(values) == {"secrets": {"wandb_api_key": REDACTED, "note": "public"}}


def test_input_not_mutated() -> None:
    values = {"a": {"token": "t", "b": {"password": "p"}}, "c": [1, 2]}
    before = copy.deepcopy(values)
    out = redact_secrets(values)
    assert values == before
    assert out is not values and out["a"] is not values["a"] and out["a"]["b"] is not values["a"]["b"]


def test_non_string_keys() -> None:
    assert redact_secrets({1: "x", ("token",): "y"}) == {1: "x", ("token",): REDACTED}


def test_empty() -> None:
    assert redact_secrets({}) == {}


@pytest.mark.parametrize("key", ["tokenizer", "tokenizer_2", "tokenizer_max_length", "max_tokens", "num_tokens"])
def test_token_count_keys_are_not_secrets(key: str) -> None:
    assert redact_secrets({key: 77}) == {key: 77}


def test_secrets_inside_lists_are_redacted() -> None:
    values = {"datasets": [{"name": "laion", "hf_token": "hf_abc"}, {"name": "coco"}]}
    assert redact_secrets(values) == {"datasets": [{"name": "laion", "hf_token": REDACTED}, {"name": "coco"}]}


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
