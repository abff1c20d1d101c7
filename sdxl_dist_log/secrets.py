"""What counts as a secret, and the pure functions that keep secrets out of the run, its files and the console.

Three ways a secret is recognised, each independent of the others:

- **by its key**: a value under a key that plainly names a credential (``looks_secret``): ``password``,
  ``db_password``, ``client_secret``, ``hf_token``, ``private_key``, ``access_key``, ``api_key``, ``authorization``,
  ``credentials_json``, ...; training keys that merely look alike stay visible: ``max_tokens``, ``num_tokens``,
  ``tokenizer``, ``sort_key``, ``pad_token`` (a tokenizer's special tokens are text, not credentials);
- **by its shape, wherever it is** (``scrub_text``): the password of a URL (``postgres://user:***@host/db``), an HTTP
  ``Bearer``/``Basic`` credential, a PEM private key block, and tokens whose format says what they are (Hugging Face
  ``hf_...``, GitHub ``ghp_...``/``github_pat_...``, GitLab ``glpat-...``, Slack ``xox?-...``, OpenAI/Anthropic
  ``sk-...``, AWS access key ids ``AKIA...``, Google ``AIza...``, JSON web tokens);
- **by the flag before it** on a command line (``scrub_argv``): ``--hub_token hf_...``, ``--password=...``.

A secret is replaced by ``REDACTED``; what is around it (the key, the flag, the URL's host) stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "***redacted***"

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_SECRET_PARTS = ("password", "passwd", "secret", "credential", "authorization", "apikey", "privatekey", "accesskey",
                 "secretkey", "signingkey", "encryptionkey")
"""Parts of a key with its separators removed (``dbpassword``, ``myPrivateKey``) that mark it, wherever they are."""
_KEY_OWNERS = frozenset({"api", "private", "access", "secret", "signing", "encryption", "ssh", "client", "master",
                         "session", "account", "auth"})
"""Words that make the word "key" after them a credential (``private_key``); ``sort_key`` or ``cache_key`` stay."""
_TEXT_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "start", "end", "begin", "special",
                          "image", "audio", "video", "placeholder", "class", "instance", "trigger", "new"})
"""Words before "token" that make it text a model reads (``pad_token``, ``placeholder_token``), not a credential."""

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # a PEM private key block, or its start when the end was cut off
    (re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)(?:.*?(-----END [A-Z ]*PRIVATE KEY-----)|.*)", re.S),
     rf"\1{REDACTED}\2"),
    # the password part of a URL's user info: scheme://user:password@host
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):([^/\s@]+)@"), rf"\1:{REDACTED}@"),
    # an HTTP Authorization header's whole value (Basic, Token, ...), then a bearer token anywhere
    (re.compile(r"""(\bauthorization["']?\s*[:=]\s*["']?)[^"'\n,;}]+""", re.I), rf"\1{REDACTED}"),
    (re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.I), rf"\1{REDACTED}"),
    # tokens whose format names them
    (re.compile(r"\b(?:hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
                r"|glpat-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|sk-[A-Za-z0-9_-]{20,}"
                r"|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
                r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"), REDACTED),
)
_ASSIGNMENT = re.compile(r"""(?P<q>["']?)(?P<key>[A-Za-z_][\w.-]*)(?P=q)(?P<sep>\s*(?:=|:(?!//))\s*)"""
                         r"""(?P<value>"[^"]*"|'[^']*'|[^\s,;&)}\]"']+)""")
"""``key=value``, ``key: value``, ``"key": "value"`` in free text: a printed argparse namespace, a URL query."""


_FLAG = re.compile(r"--?[A-Za-z_]")
"""A command-line flag: ``-x``, ``--name``; not a negative number or a value such as a PEM block."""


def looks_secret(key: Any) -> bool:
    """Whether a value under ``key`` is a credential, from the key's words (snake, kebab, dotted, camelCase).

    Example:
        >>> [looks_secret(k) for k in ("hf_token", "private_key", "dbPassword", "max_tokens", "sort_key", "pad_token")]
        [True, True, True, False, False, False]
    """
    text = str(key)
    words = [w.lower() for w in _WORD.findall(text)]
    if not words:
        return False
    joined = "".join(words)
    if any(part in joined for part in _SECRET_PARTS) or "passphrase" in words:
        return True
    if words[-1] == "token":  # hf_token, access_token, authToken; not token_budget, max_tokens, pad_token
        return len(words) == 1 or words[-2] not in _TEXT_TOKENS
    return any(a in _KEY_OWNERS and b == "key" for a, b in zip(words, words[1:]))


def scrub_text(text: str) -> str:
    """``text`` with every secret recognised by its shape or by the key before it replaced by ``REDACTED``.

    Example:
        >>> scrub_text("db=postgres://me:pw@host/x headers={'Authorization': 'Bearer abc.def.ghi'} max_tokens=77")
        "db=postgres://me:***redacted***@host/x headers={'Authorization': '***redacted***'} max_tokens=77"
    """
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _ASSIGNMENT.sub(_redact_assignment, text)


def _redact_assignment(match: re.Match[str]) -> str:
    if not looks_secret(match["key"]):
        return match[0]
    value = match["value"]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match['q']}{match['key']}{match['q']}{match['sep']}{quote}{REDACTED}{quote}"


def scrub_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the value of every secret-looking flag, and every secret by its shape, redacted.

    ``--hub_token VALUE`` and ``--hub_token=VALUE`` lose VALUE; flags and other values stay as they are.

    Example:
        >>> scrub_argv(["--hub_token", "x1", "--max_tokens", "77", "--db=postgres://u:pw@h/db"])
        ['--hub_token', '***redacted***', '--max_tokens', '77', '--db=postgres://u:***redacted***@h/db']
    """
    out: list[str] = []
    value_is_secret = False
    for arg in argv:
        arg = str(arg)
        is_flag = _FLAG.match(arg) is not None
        if value_is_secret and not is_flag:
            out.append(REDACTED)
            value_is_secret = False
            continue
        value_is_secret = False
        if is_flag:
            flag, equals, _ = arg.partition("=")
            if looks_secret(flag.lstrip("-")):
                out.append(f"{flag}={REDACTED}" if equals else flag)
                value_is_secret = not equals
                continue
        out.append(scrub_text(arg))
    return out


def redact_secrets(values: Mapping[Any, Any]) -> dict[Any, Any]:
    """Copy ``values``, redacting every value under a secret-looking key and every secret in a string, at any depth.

    A mapping under a secret-looking key is searched, not replaced, so its harmless entries stay visible.

    Example:
        >>> redact_secrets({"hf": {"token": "abc"}, "lr": 1e-4, "db": "mysql://root:pw@db/x"})
        {'hf': {'token': '***redacted***'}, 'lr': 0.0001, 'db': 'mysql://root:***redacted***@db/x'}
    """
    return {key: REDACTED if looks_secret(key) and not isinstance(value, Mapping) else _redact_value(value)
            for key, value in values.items()}


def _redact_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return redact_secrets(value)
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(item) for item in value)
    return value


__all__ = ["REDACTED", "looks_secret", "redact_secrets", "scrub_argv", "scrub_text"]
