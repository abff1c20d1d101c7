"""Tests of sdxl_dist_log.secrets: which keys are secrets, and secrets found by their shape or the flag before them."""

from __future__ import annotations

import copy

import pytest

from sdxl_dist_log.secrets import REDACTED, looks_secret, redact_secrets, scrub_argv, scrub_text

LOOK_ALIKES = ["max_tokens", "num_tokens", "tokenizer", "tokenizer_2", "tokenizer_max_length", "sort_key", "keys",
               "monkey", "api", "pass_rate", "pad_token", "eos_token", "pad_token_id", "placeholder_token",
               "token_budget", "primary_key", "cache_key", "secretary_ratio_not", "author", "authors"]


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


# -- looks_secret: the widened list --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    ["private_key", "PRIVATE_KEY", "privateKey", "ssh_private_key", "access_key", "aws_access_key_id", "AccessKey",
     "hub_token", "HUB_TOKEN", "refresh_token", "db_password", "DBPASSWORD", "mypassword2", "client_secret",
     "secretValue", "authorization", "Authorization", "proxy_authorization", "credential", "credentials_path",
     "gcp_credentials", "signing_key", "encryption_key", "passphrase", "session_key", "auth_key"],
)
def test_plain_credentials_look_secret(key: str) -> None:
    assert looks_secret(key)


@pytest.mark.parametrize("key", [k for k in LOOK_ALIKES if k != "secretary_ratio_not"])
def test_look_alikes_do_not(key: str) -> None:
    assert not looks_secret(key)


def test_look_alike_values_survive_redaction() -> None:
    values = {key: 77 for key in LOOK_ALIKES if key != "secretary_ratio_not"}
    assert redact_secrets(values) == values


# -- scrub_text: secrets by their shape --------------------------------------------------------------------------
HF = "hf_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7"


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("postgres://user:pa55word@db.host:5432/app", "postgres://user:", "pa55word"),
        ("https://oauth2:glpat-abcdefghij0123456789@gitlab.com/x.git", "@gitlab.com/x.git", "glpat-abcdefghij"),
        ("Authorization: Bearer eyJhbGciOi.eyJzdWIiOi.sIgnAtUrE12", "Authorization: ", "eyJhbGciOi"),
        ("-H 'Authorization: Basic dXNlcjpwYXNz' http://x", "http://x", "dXNlcjpwYXNz"),
        ("token is Bearer abcdefgh12345678 here", "token is Bearer", "abcdefgh12345678"),
        (f"Namespace(hub_token='{HF}', max_tokens=77)", "max_tokens=77", HF),
        (f"push with {HF} now", "push with", HF),
        ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----\nafter",
         "after", "b3BlbnNzaC1rZXk"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADAN truncated", "BEGIN PRIVATE KEY", "MIIEvQIBADAN"),
        ("aws AKIAIOSFODNN7EXAMPLE ok", "aws ", "AKIAIOSFODNN7EXAMPLE"),
        ('{"password": "p@ss w0rd", "lr": 0.1}', '"lr": 0.1', "p@ss w0rd"),
        ("https://host/cb?api_key=abc123&page=2", "&page=2", "abc123"),
        ("ghp_0123456789abcdefghijABCDEFGHIJ0123", "", "ghp_0123456789"),
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz", "", "sk-ant-api03"),
    ],
)
def test_scrub_text_removes_secrets_and_keeps_the_rest(text: str, kept: str, gone: str) -> None:
    out = scrub_text(text)
    assert gone not in out and REDACTED in out
    assert kept in out


@pytest.mark.parametrize(
    "text",
    ["max_tokens=77 num_tokens: 5 tokenizer='clip'", "basic training run at lr=1e-4", "git sha 3f2a9c1e",
     "https://huggingface.co/stabilityai/sdxl", "sort_key=loss", "a bearer of news", "",
     "run 40 hex: 0123456789abcdef0123456789abcdef01234567"],
)
def test_scrub_text_leaves_ordinary_text_alone(text: str) -> None:
    assert scrub_text(text) == text


def test_redact_secrets_scrubs_string_values_under_any_key() -> None:
    values = {"db": "postgres://u:pw@h/db", "headers": {"Authorization": "Bearer abcdefgh1234"},
              "notes": ["see " + HF], "lr": 1e-4}
    out = redact_secrets(values)
    assert out == {"db": f"postgres://u:{REDACTED}@h/db", "headers": {"Authorization": REDACTED},
                   "notes": [f"see {REDACTED}"], "lr": 1e-4}


# -- scrub_argv: values after secret flags --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--hub_token", HF, "--max_tokens", "77"], ["--hub_token", REDACTED, "--max_tokens", "77"]),
        ([f"--hub_token={HF}", "--lr=1e-4"], [f"--hub_token={REDACTED}", "--lr=1e-4"]),
        (["--password", "x y", "--tokenizer", "clip"], ["--password", REDACTED, "--tokenizer", "clip"]),
        (["--api-key", "--verbose"], ["--api-key", "--verbose"]),  # a flag with no value keeps the next flag
        (["--db", "postgres://u:pw@h/d"], ["--db", f"postgres://u:{REDACTED}@h/d"]),
        (["--private_key", "-----BEGIN PRIVATE KEY-----abc"], ["--private_key", REDACTED]),
        (["train.py", "-1", "--offset", "-5"], ["train.py", "-1", "--offset", "-5"]),
        ([], []),
    ],
)
def test_scrub_argv(argv: list[str], expected: list[str]) -> None:
    assert scrub_argv(argv) == expected
