"""Which ``log_model`` calls upload, from what, under which artifact name: pure decisions and checks, no W&B here.

W&B hashes every file of a checkpoint directory, following symbolic links, when the artifact is built: a broken link
or a link loop fails it there, deep inside the upload. ``checked_source`` finds both (and unreadable files) first, so
the call fails with the path named and nothing reaches the run.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from typing import Any

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.errors import CheckpointError, RunConfigError
from sdxl_dist_log.runconfig import checked_config

FINAL_ALIASES = frozenset({"best", "final"})
"""Aliases that mark a checkpoint worth keeping even with ``log_checkpoints=False``."""


def wanted(config: WandbConfig, aliases: Sequence[str]) -> bool:
    """Whether the config uploads a checkpoint with these aliases (``log_model``, ``log_checkpoints``)."""
    return config.log_model and (config.log_checkpoints or bool(FINAL_ALIASES.intersection(aliases)))


def checked_arguments(
    path: Any, aliases: Any, name: Any, type: Any, metadata: Any
) -> tuple[list[str], dict[str, Any]]:
    """Check ``log_model``'s arguments (not the files): the same on every rank, so every rank that calls it raises.

    Returns:
        The aliases as a list and the metadata as a plain dict.

    Raises:
        CheckpointError: an argument is of the wrong type or empty; the message names it.
    """
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise CheckpointError(f"log_model: path={path!r} must be a non-empty str or os.PathLike")
    if aliases is None:
        aliases = []
    if isinstance(aliases, str) or not isinstance(aliases, Sequence):
        raise CheckpointError(f"log_model: aliases={aliases!r} must be a list of strings, e.g. ['latest']")
    for i, alias in enumerate(aliases):
        if not isinstance(alias, str) or not alias or "/" in alias or ":" in alias:
            raise CheckpointError(f"log_model: aliases[{i}]={alias!r} must be a non-empty string without '/' or ':'")
    if name is not None and (not isinstance(name, str) or not name):
        raise CheckpointError(f"log_model: name={name!r} must be a non-empty string or None")
    if not isinstance(type, str) or not type:
        raise CheckpointError(f"log_model: type={type!r} must be a non-empty string such as 'model'")
    try:
        details = checked_config(metadata or {}, where="log_model metadata")
    except RunConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return list(aliases), details


def checked_source(path: str | os.PathLike[str]) -> str:
    """``path`` as an absolute string, checked to be a readable file or a directory W&B can walk.

    Raises:
        CheckpointError: nothing is at ``path``; or it (or a file under it) is a broken symbolic link, a link loop,
            or cannot be read; the message names the path, and the link's target.
    """
    source = os.path.abspath(os.fspath(path))
    if not os.path.lexists(source):
        raise CheckpointError(f"log_model: checkpoint {source!r} does not exist; nothing was uploaded")
    _check_entry(source)
    if os.path.isdir(source):
        _check_tree(source)
    return source


def _check_entry(path: str) -> None:
    try:
        os.stat(path)  # follows links: fails exactly on a broken link or a loop
    except OSError as exc:
        if os.path.islink(path):
            what = "a symbolic link loop" if exc.errno == errno.ELOOP else "a broken symbolic link"
            raise CheckpointError(f"log_model: {path!r} is {what} (-> {os.readlink(path)!r}); nothing was "
                                  "uploaded") from None
    if not os.path.isdir(path) and not os.access(path, os.R_OK):
        raise CheckpointError(f"log_model: {path!r} cannot be read (permissions); nothing was uploaded")


def _check_tree(root: str) -> None:
    """Walk ``root`` as W&B does (following links); a directory met twice on one branch is a loop."""
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [(root, frozenset())]
    while stack:
        directory, ancestors = stack.pop()
        info = os.stat(directory)
        identity = (info.st_dev, info.st_ino)
        if identity in ancestors:
            raise CheckpointError(f"log_model: {directory!r} is a symbolic link loop (-> "
                                  f"{os.path.realpath(directory)!r}); nothing was uploaded")
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise CheckpointError(f"log_model: directory {directory!r} cannot be listed ({exc.strerror}); "
                                  "nothing was uploaded") from None
        for entry in entries:
            _check_entry(entry.path)
            if entry.is_dir(follow_symlinks=True):
                stack.append((entry.path, ancestors | {identity}))


def artifact_name(name: str) -> str:
    """``name`` with every character W&B does not allow in an artifact name replaced by "-".

    Raises:
        CheckpointError: nothing usable is left.

    Example:
        >>> artifact_name("ckpt/step 1000")
        'ckpt-step-1000'
    """
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip("-.")
    if not cleaned:
        raise CheckpointError(f"log_model: artifact name {name!r} has no usable characters")
    return cleaned


def upload_metadata(source: str, step: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What every checkpoint version records: where it came from and the step, then the caller's metadata."""
    return {"source_path": source, "step": step, **metadata}
