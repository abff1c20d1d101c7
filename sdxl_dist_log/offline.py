"""Read an offline W&B run back: for tests, the ``sdxl-dist-log inspect`` command and reports.

wandb 0.30+ ships no reader for its ``.wandb`` transaction log, so this module parses it itself. The file is a
LevelDB-style log (as written by ``wandb-core``; checked against real files of wandb 0.31):

* a 7-byte header: ``b":W&B"``, the magic ``0xBEE1`` as a little-endian uint16, the version byte ``0``;
* then 32 KiB blocks, counted from the start of the file (the header sits in the first block), each holding chunks
  of a 7-byte chunk header (CRC uint32 LE, length uint16 LE, type byte: 1 full, 2 first, 3 middle, 4 last) and the
  data; a block tail shorter than 7 bytes is zero padding;
* the CRC is plain zlib/IEEE CRC-32 (not LevelDB's masked CRC-32C) over the type byte followed by the data;
* each reassembled record is a ``wandb.proto.wandb_internal_pb2.Record``.

A run still being written, or killed (SIGKILL, OOM, node failure), leaves a cut or torn tail: reading stops there
and sets ``truncated``; everything before it is returned. Importing this module imports neither wandb nor protobuf:
the protobuf classes load on first read.

Example:
    >>> from sdxl_dist_log.offline import read_run, format_run
    >>> run = read_run("wandb/offline-run-20250101_120000-abc123")  # doctest: +SKIP
    >>> run.column("loss/train")[:2]  # doctest: +SKIP
    [(0, 1.25), (1, 1.1)]
    >>> print(format_run(run))  # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record

__all__ = [
    "BLOCK_SIZE",
    "KEY_SEP",
    "OfflineArtifact",
    "OfflineRun",
    "RecordReader",
    "WandbFileError",
    "find_run_dirs",
    "format_run",
    "iter_payloads",
    "read_records",
    "read_run",
]

HEADER_IDENT = b":W&B"
HEADER_MAGIC = 0xBEE1
HEADER_VERSION = 0
FILE_HEADER = HEADER_IDENT + struct.pack("<HB", HEADER_MAGIC, HEADER_VERSION)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
KEY_SEP = "/"
"""Separator joining the parts of a nested key, ``{"a": {"b": 1}}`` -> ``"a/b"``."""
SYSTEM_PREFIX = "system/"
_INTERNAL_KEY = "_wandb"
_RUN_DIR_RE = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-([A-Za-z0-9_-]+)$")
_CHUNK_HEADER = struct.Struct("<IHB")


class WandbFileError(ValueError):
    """The file is not a W&B transaction log (wrong header); the message names the file."""


# ----------------------------------------------------------------------------------------------------------------
# Low level: chunks -> payloads -> Record protobufs
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class ReadStatus:
    """Where and why reading a log stopped."""

    truncated: bool = False
    """True when the tail is cut, torn or corrupt (a live or killed run); records before it are intact."""
    reason: str | None = None
    """Why reading stopped early, with the byte offset; None when the file ended cleanly."""
    good_offset: int = 0
    """Byte offset just past the last complete record."""


def chunk_crc(chunk_type: int, data: bytes) -> int:
    """The CRC that wandb stores for a chunk: zlib CRC-32 over the type byte, then the data.

    Args:
        chunk_type: 1 full, 2 first, 3 middle, 4 last.
        data: the chunk's payload bytes.

    Returns:
        The unsigned 32-bit CRC.
    """
    return zlib.crc32(data, zlib.crc32(bytes((chunk_type,)))) & 0xFFFFFFFF


def iter_payloads(stream: IO[bytes], status: ReadStatus | None = None) -> Iterator[bytes]:
    """Yield the reassembled record payloads of a W&B log, stopping quietly at a cut or corrupt tail.

    Args:
        stream: a binary stream positioned at the start of the file (the 7-byte header included).
        status: filled in as reading goes: ``truncated``, ``reason`` and ``good_offset``.

    Yields:
        Each record's bytes (a serialized ``Record``).

    Raises:
        WandbFileError: the first bytes are not the W&B header (a shorter prefix of it counts as truncated).
    """
    status = status if status is not None else ReadStatus()
    head = stream.read(len(FILE_HEADER))
    if head != FILE_HEADER:
        if len(head) < len(FILE_HEADER) and FILE_HEADER.startswith(head):
            status.truncated, status.reason = True, f"file ends inside the {len(FILE_HEADER)}-byte header"
            return
        raise WandbFileError(f"not a W&B transaction log: header {head!r}, expected {FILE_HEADER!r}")
    status.good_offset = len(FILE_HEADER)
    block = head + stream.read(BLOCK_SIZE - len(head))
    block_start, pos = 0, len(FILE_HEADER)
    pending: list[bytes] = []
    pending_start: int | None = None

    def stop(reason: str) -> None:
        status.truncated, status.reason = True, reason

    while True:
        if len(block) - pos < CHUNK_HEADER_SIZE:
            if len(block) < BLOCK_SIZE:  # the file ends in this block
                if pos < len(block):
                    stop(f"file ends inside a chunk header at offset {block_start + pos}")
                elif pending:
                    stop(f"record starting at offset {pending_start} has no last chunk")
                return
            # Trailer of a full block (zero padding); the next chunk starts in the next block.
            block_start += BLOCK_SIZE
            block, pos = stream.read(BLOCK_SIZE), 0
            if not block:
                if pending:
                    stop(f"record starting at offset {pending_start} has no last chunk")
                return
            continue
        offset = block_start + pos
        crc, length, ctype = _CHUNK_HEADER.unpack_from(block, pos)
        if crc == 0 and length == 0 and ctype == 0:
            stop(f"zero-filled tail at offset {offset}")
            return
        end = pos + CHUNK_HEADER_SIZE + length
        if end > len(block):
            if len(block) < BLOCK_SIZE:
                stop(f"file ends inside a chunk at offset {offset} ({length} data bytes announced)")
            else:
                stop(f"chunk at offset {offset} overruns its block ({length} data bytes)")
            return
        data = bytes(block[pos + CHUNK_HEADER_SIZE : end])
        if chunk_crc(ctype, data) != crc:
            stop(f"CRC mismatch in chunk at offset {offset}")
            return
        pos = end
        if ctype == FULL:
            if pending:
                stop(f"record starting at offset {pending_start} has no last chunk")
                return
            status.good_offset = block_start + pos
            yield data
        elif ctype == FIRST:
            if pending:
                stop(f"record starting at offset {pending_start} has no last chunk")
                return
            pending, pending_start = [data], offset
        elif ctype in (MIDDLE, LAST):
            if not pending:
                stop(f"chunk of type {ctype} without a first chunk at offset {offset}")
                return
            pending.append(data)
            if ctype == LAST:
                payload, pending, pending_start = b"".join(pending), [], None
                status.good_offset = block_start + pos
                yield payload
        else:
            stop(f"unknown chunk type {ctype} at offset {offset}")
            return


class RecordReader(Iterator["Record"]):
    """An iterator over the ``Record`` protobufs of one ``.wandb`` file; see :func:`read_records`.

    After iteration ends, ``truncated`` and ``reason`` say whether the tail was cut or corrupt.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.status = ReadStatus()
        self._gen = self._records()

    @property
    def truncated(self) -> bool:
        """True when reading stopped at a cut, torn or corrupt tail (a live or killed run)."""
        return self.status.truncated

    @property
    def reason(self) -> str | None:
        """Why reading stopped early, or None."""
        return self.status.reason

    def __iter__(self) -> RecordReader:
        return self

    def __next__(self) -> Record:
        return next(self._gen)

    def close(self) -> None:
        """Stop early and close the file (reading to the end closes it by itself)."""
        self._gen.close()

    def _records(self) -> Iterator[Record]:
        from google.protobuf.message import DecodeError
        from wandb.proto import wandb_internal_pb2 as pb  # lazy: importing it imports wandb

        with open(self.path, "rb") as stream:
            for payload in iter_payloads(stream, self.status):
                record = pb.Record()
                try:
                    record.ParseFromString(payload)
                except DecodeError as exc:
                    self.status.truncated = True
                    self.status.reason = f"record before offset {self.status.good_offset} does not decode: {exc}"
                    return
                yield record


def read_records(path: str | os.PathLike[str]) -> RecordReader:
    """Iterate over the records of a ``.wandb`` file, stopping at a truncated or corrupt tail.

    Args:
        path: the ``run-<id>.wandb`` file.

    Returns:
        A :class:`RecordReader`: an iterator of ``wandb_internal_pb2.Record`` whose ``truncated`` and ``reason``
        are set once iteration has ended.

    Raises:
        OSError: the file cannot be opened (raised on first iteration).
        WandbFileError: the file does not start with the W&B header (raised on first iteration).

    Example:
        >>> reader = read_records("run-abc123.wandb")  # doctest: +SKIP
        >>> kinds = [r.WhichOneof("record_type") for r in reader]; reader.truncated  # doctest: +SKIP
        False
    """
    return RecordReader(path)


# ----------------------------------------------------------------------------------------------------------------
# Decoding values and keys
# ----------------------------------------------------------------------------------------------------------------


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def _item_value(item: Any) -> Any:
    """The decoded value of a history/summary/config item (``value_json``, or the typed oneof if present)."""
    if item.value_json:
        try:
            return json.loads(item.value_json)
        except ValueError:
            return item.value_json
    which = item.WhichOneof("value") if "value" in {o.name for o in item.DESCRIPTOR.oneofs} else None
    if which is None or which == "none":
        return None
    value = getattr(item, which)
    if which == "json":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def _del_path(tree: dict[str, Any], path: list[str]) -> None:
    node: Any = tree
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def is_media(value: Any) -> bool:
    """True for a W&B media value (a dict with ``_type``, e.g. ``images/separated``), kept whole when flattening."""
    return isinstance(value, dict) and "_type" in value


def flatten(tree: Mapping[str, Any], sep: str = KEY_SEP, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``sep``-joined keys, keeping media dicts (those with ``_type``) as single values.

    Args:
        tree: a nested mapping.
        sep: the separator between key parts.
        prefix: prepended to every key.

    Returns:
        A flat dict; an empty nested dict disappears.

    Example:
        >>> flatten({"a": {"b": 1}, "img": {"_type": "images/separated", "count": 2}})
        {'a/b': 1, 'img': {'_type': 'images/separated', 'count': 2}}
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not is_media(value):
            out.update(flatten(value, sep, name + sep))
        else:
            out[name] = value
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class OfflineArtifact:
    """One ``run.log_artifact`` call as an offline run recorded it (an ``artifact`` record).

    Offline records carry no server version numbers: ``version_index`` counts the distinct digests logged under
    this name in this run (0, 1, ...), which equals the server's ``v<N>`` only for a new artifact collection.
    """

    name: str
    type: str
    aliases: list[str]
    """Sorted (wandb keeps them as a set, so the recorded order varies); ``latest`` is added by wandb itself."""
    metadata: dict[str, Any]
    digest: str
    files: list[str]
    """Paths inside the artifact (manifest entries), sorted."""
    description: str = ""
    size: int = 0
    """Sum of the manifest entries' sizes in bytes."""
    version_index: int = 0
    tags: list[str] = field(default_factory=list)

    @property
    def local_version(self) -> str:
        """``v<version_index>``: the version within this run (see the class docstring)."""
        return f"v{self.version_index}"


@dataclass
class OfflineRun:
    """An offline W&B run decoded from its ``.wandb`` file and ``files/`` directory; see :func:`read_run`."""

    path: Path
    """The run directory (``.../offline-run-<time>-<id>``)."""
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    """Config values as logged (JSON-decoded, nested dicts kept nested); W&B's own ``_wandb`` entry dropped."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One dict per history row: ``"metrics/loss"``-style keys (nested keys joined with ``/``), ``_step``,
    ``_runtime``, ``_timestamp``; media values stay whole dicts with ``_type``."""
    summary: dict[str, Any] = field(default_factory=dict)
    """The final summary, flattened like history rows; ``_wandb`` dropped."""
    artifacts: list[OfflineArtifact] = field(default_factory=list)
    media_files: list[str] = field(default_factory=list)
    """Files under ``files/media``, relative to ``files/`` (``media/images/...``), sorted."""
    exit_code: int | None = None
    """The exit record's code; None without an exit record (the run is live or was killed)."""
    truncated: bool = False
    """True when the ``.wandb`` file ends in a cut or corrupt tail."""
    truncation_reason: str | None = None
    record_counts: dict[str, int] = field(default_factory=dict)
    """Number of records by ``Record`` oneof name (``history``, ``summary``, ``artifact``, ...)."""
    wandb_file: Path | None = None
    start_time: float | None = None
    """Run start, seconds since the epoch."""
    runtime: int | None = None
    """Seconds, from the exit record."""
    wandb_version: str = ""
    """``producer`` of the header record (the writing wandb version)."""
    telemetry: dict[str, Any] = field(default_factory=dict)
    """The last telemetry record: ``features`` (names set true), ``python_version``, ``cli_version``, ..."""
    environment: dict[str, Any] = field(default_factory=dict)
    """The environment record's non-empty fields (os, python, host, program, args, gpu, ...)."""
    files: list[str] = field(default_factory=list)
    """Paths named by ``files`` records (relative to ``files/``), in order, without repeats."""
    stats: list[dict[str, Any]] = field(default_factory=list)
    """wandb's own system-metric samples (``stats`` records): ``_timestamp`` plus its keys."""
    preempting: bool = False
    """True when the run recorded ``mark_preempting()``."""

    @property
    def finished(self) -> bool:
        """True when the run has an exit record (``finish`` ran)."""
        return self.exit_code is not None

    def keys(self) -> list[str]:
        """All history keys, sorted."""
        return sorted({key for row in self.history for key in row})

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        """The history rows that contain ``key``, in order."""
        return [row for row in self.history if key in row]

    def column(self, key: str) -> list[tuple[int, Any]]:
        """``(step, value)`` for each history row holding ``key``; step is ``_step``, else the row's index.

        Example:
            >>> OfflineRun(Path("."), history=[{"_step": 3, "a": 1.0}, {"_step": 4}]).column("a")
            [(3, 1.0)]
        """
        out = []
        for index, row in enumerate(self.history):
            if key in row:
                step = row.get("_step", index)
                out.append((step if isinstance(step, int) else index, row[key]))
        return out

    def artifact_versions(self, name: str) -> list[OfflineArtifact]:
        """The artifacts logged under ``name`` (without ``:version``), in logging order."""
        return [a for a in self.artifacts if a.name == name]


def _message_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


def _artifact_files(manifest: Any) -> tuple[list[str], int]:
    paths = [entry.path for entry in manifest.contents]
    size = sum(entry.size for entry in manifest.contents)
    if not paths and manifest.manifest_file_path:
        try:
            with gzip.open(manifest.manifest_file_path, "rt") as lines:
                for line in lines:
                    if line.strip():
                        entry = json.loads(line)
                        paths.append(entry.get("path", ""))
                        size += int(entry.get("size") or 0)
        except (OSError, ValueError):
            pass  # a staged manifest that is gone or cut: the artifact keeps its other fields
    return sorted(paths), size


def _decode_artifact(record: Any, seen: dict[str, list[str]]) -> OfflineArtifact:
    try:
        metadata = json.loads(record.metadata) if record.metadata else {}
    except ValueError:
        metadata = {"_raw": record.metadata}
    files, size = _artifact_files(record.manifest)
    digests = seen.setdefault(record.name, [])
    if record.digest not in digests:
        digests.append(record.digest)
    return OfflineArtifact(
        name=record.name,
        type=record.type,
        aliases=sorted(record.aliases),
        metadata=metadata if isinstance(metadata, dict) else {"_value": metadata},
        digest=record.digest,
        files=files,
        description=record.description,
        size=size,
        version_index=digests.index(record.digest),
        tags=list(record.tags),
    )


def _apply_config(config: dict[str, Any], record: Any) -> None:
    for item in record.update:
        _set_path(config, _item_path(item), _item_value(item))
    for item in record.remove:
        _del_path(config, _item_path(item))


def _apply_summary(summary: dict[str, Any], record: Any) -> None:
    for item in record.update:
        _set_path(summary, _item_path(item), _item_value(item))
    for item in record.remove:
        _del_path(summary, _item_path(item))


def _history_row(record: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for item in record.item:
        _set_path(tree, _item_path(item), _item_value(item))
    row = flatten(tree)
    if "_step" not in row and record.HasField("step"):
        row["_step"] = record.step.num
    return row


def _decode_records(run: OfflineRun, records: Iterable[Any]) -> None:
    counts: Counter[str] = Counter()
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    seen_artifacts: dict[str, list[str]] = {}
    files: dict[str, None] = {}
    for record in records:
        kind = record.WhichOneof("record_type") or "unknown"
        counts[kind] += 1
        if kind == "history":
            run.history.append(_history_row(record.history))
        elif kind == "summary":
            _apply_summary(summary, record.summary)
        elif kind == "config":
            _apply_config(config, record.config)
        elif kind == "run":
            r = record.run
            for attr, value in (
                ("run_id", r.run_id),
                ("project", r.project),
                ("entity", r.entity),
                ("name", r.display_name),
                ("group", r.run_group),
                ("job_type", r.job_type),
                ("notes", r.notes),
            ):
                if value:
                    setattr(run, attr, value)
            if len(r.tags):
                run.tags = list(r.tags)
            if r.HasField("start_time"):
                run.start_time = r.start_time.seconds + r.start_time.nanos / 1e9
            if r.HasField("config"):
                _apply_config(config, r.config)
            if r.HasField("summary"):
                _apply_summary(summary, r.summary)
            if r.HasField("telemetry"):
                run.telemetry = _telemetry_dict(r.telemetry)
        elif kind == "artifact":
            run.artifacts.append(_decode_artifact(record.artifact, seen_artifacts))
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
            run.runtime = record.exit.runtime
        elif kind == "files":
            for item in record.files.files:
                files[item.path] = None
        elif kind == "header":
            run.wandb_version = record.header.version_info.producer
        elif kind == "telemetry":
            run.telemetry = _telemetry_dict(record.telemetry)
        elif kind == "environment":
            env = _message_dict(record.environment)
            env.pop("_info", None)
            run.environment.update(env)
        elif kind == "stats":
            sample: dict[str, Any] = {"_timestamp": record.stats.timestamp.seconds + record.stats.timestamp.nanos / 1e9}
            for item in record.stats.item:
                sample[item.key] = _item_value(item)
            run.stats.append(sample)
        elif kind == "preempting":
            run.preempting = True
    config.pop(_INTERNAL_KEY, None)
    summary.pop(_INTERNAL_KEY, None)
    run.config = config
    run.summary = flatten(summary)
    run.files = list(files)
    run.record_counts = dict(counts)


def _telemetry_dict(telemetry: Any) -> dict[str, Any]:
    data = _message_dict(telemetry)
    data.pop("_info", None)
    features = data.pop("feature", {})
    data["features"] = sorted(name for name, on in features.items() if on)
    return data


# ----------------------------------------------------------------------------------------------------------------
# Finding runs
# ----------------------------------------------------------------------------------------------------------------


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and _RUN_DIR_RE.match(path.name) is not None


def _run_sort_key(path: Path) -> tuple[str, float, str]:
    match = _RUN_DIR_RE.match(path.name)
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = 0.0
    return (match.group(1) if match else "", mtime, path.name)


def find_run_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Find run directories (``offline-run-*``, ``run-*``) at ``root``, in it, or in ``root/wandb``, oldest first.

    Args:
        root: a run directory, a directory holding runs (a ``WANDB_DIR/wandb``), or one whose ``wandb/`` does.

    Returns:
        The run directories sorted by the time in their names (then modification time); empty when none.
        The ``latest-run`` symlink is not listed twice.
    """
    base = Path(root)
    if _is_run_dir(base):
        return [base]
    found: dict[Path, Path] = {}
    for parent in (base, base / "wandb"):
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if _is_run_dir(child):
                found.setdefault(child.resolve(), child)
    return sorted(found.values(), key=_run_sort_key)


def _wandb_file(run_dir: Path) -> Path:
    candidates = sorted(run_dir.glob("*.wandb"))
    if len(candidates) == 1:
        return candidates[0]
    match = _RUN_DIR_RE.match(run_dir.name)
    if match and (run_dir / f"run-{match.group(2)}.wandb") in candidates:
        return run_dir / f"run-{match.group(2)}.wandb"
    if not candidates:
        raise ValueError(f"no .wandb file in run directory {run_dir}")
    raise ValueError(f"several .wandb files in {run_dir}: {', '.join(str(c) for c in candidates)}")


def _media_files(run_dir: Path) -> list[str]:
    files_dir = run_dir / "files"
    media = files_dir / "media"
    if not media.is_dir():
        return []
    return sorted(p.relative_to(files_dir).as_posix() for p in media.rglob("*") if p.is_file())


def read_run(path: str | os.PathLike[str]) -> OfflineRun:
    """Read an offline run: its records, config, history, summary, artifacts and media files.

    Args:
        path: a run directory, its ``.wandb`` file, or a directory holding exactly one run (directly or under
            ``wandb/``).

    Returns:
        The decoded :class:`OfflineRun`; ``truncated`` is set when the file ends in a cut or corrupt tail, and
        ``exit_code`` is None when the run never finished (live or killed).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` holds no run or several (the message lists them), or a run directory has no ``.wandb``
            file; :class:`WandbFileError` when the file is not a W&B log.

    Example:
        >>> run = read_run(tmp_path / "wandb")  # doctest: +SKIP
        >>> run.exit_code, len(run.history)  # doctest: +SKIP
        (0, 100)
    """
    given = Path(path)
    if not given.exists():
        raise FileNotFoundError(f"no such run file or directory: {given}")
    if given.is_file():
        wandb_file, run_dir = given, given.parent
    else:
        if _is_run_dir(given) or any(given.glob("*.wandb")):
            run_dir = given
        else:
            runs = find_run_dirs(given)
            if len(runs) != 1:
                what = "no run directories" if not runs else f"{len(runs)} run directories"
                listing = "".join(f"\n  {r}" for r in runs)
                raise ValueError(
                    f"{given} holds {what} (looked for offline-run-*/run-* in it and in its wandb/); "
                    f"pass one run directory{':' if runs else ''}{listing}"
                )
            run_dir = runs[0]
        wandb_file = _wandb_file(run_dir)
    reader = read_records(wandb_file)
    run = OfflineRun(path=run_dir, wandb_file=wandb_file)
    _decode_records(run, reader)
    run.truncated, run.truncation_reason = reader.truncated, reader.reason
    if not run.run_id:
        match = _RUN_DIR_RE.match(run_dir.name)
        run.run_id = match.group(2) if match else wandb_file.stem.removeprefix("run-")
    run.media_files = _media_files(run_dir)
    return run


# ----------------------------------------------------------------------------------------------------------------
# The readable summary
# ----------------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        text = json.dumps(value, separators=(",", ":"), default=str)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _config_lines(config: Mapping[str, Any], indent: str = "  ") -> list[str]:
    lines = []
    for key, value in config.items():
        if isinstance(value, dict) and value:
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in flatten(value, ".").items())
            text = f"{key}: {{{inner}}}"
            lines.append(indent + (text if len(text) <= 110 else text[:107] + "..."))
        else:
            lines.append(f"{indent}{key}: {_fmt(value)}")
    return lines


def _key_line(key: str, values: list[Any]) -> str:
    media = [v for v in values if is_media(v)]
    numbers = [v for v in values if _is_number(v)]
    parts = [f"{len(values)} rows"]
    if media:
        kinds = Counter(str(v.get("_type")) for v in media)
        for kind, rows in sorted(kinds.items()):
            if kind.startswith("images"):
                count = sum(int(v.get("count", 1)) for v in media if v.get("_type") == kind)
                parts.append(f"{count} images in {rows} entries")
            else:
                parts.append(f"{rows} {kind}")
    if numbers:
        finite = [float(v) for v in numbers if math.isfinite(v)]
        parts.append(f"first={_fmt(numbers[0])} last={_fmt(numbers[-1])}")
        if finite:
            parts.append(f"min={_fmt(min(finite))} max={_fmt(max(finite))}")
        if len(finite) < len(numbers):
            parts.append(f"{len(numbers) - len(finite)} non-finite")
    other = len(values) - len(media) - len(numbers)
    if other:
        last = next(v for v in reversed(values) if not is_media(v) and not _is_number(v))
        parts.append(f"{other} other (last={_fmt(last)})")
    return f"{key}: " + ", ".join(parts)


def format_run(run: OfflineRun, step_key: str = "trainer/step") -> str:
    """A readable multi-line summary of a run, as ``sdxl-dist-log inspect RUN_DIR`` prints it.

    Args:
        run: a run from :func:`read_run`.
        step_key: the key that carries the training step (``WandbConfig.step_metric``); its range is shown.

    Returns:
        Identity, exit state, config, one line per history key (count, first/last/min/max; images counted),
        ``system/`` keys in their own block, artifacts with versions, aliases and metadata, media file count.
    """
    lines = [f"run {run.run_id}  ({run.path})"]
    ident = [
        ("project", run.project),
        ("entity", run.entity),
        ("name", run.name),
        ("group", run.group),
        ("job_type", run.job_type),
        ("tags", ", ".join(run.tags)),
        ("notes", run.notes),
        ("wandb", run.wandb_version),
    ]
    lines += [f"  {label}: {value}" for label, value in ident if value]
    if run.exit_code is None:
        lines.append("  exit: no exit record: live or killed")
    else:
        runtime = f" after {run.runtime} s" if run.runtime else ""
        lines.append(f"  exit: code {run.exit_code}{runtime}")
    if run.truncated:
        lines.append(f"  truncated: yes ({run.truncation_reason})")
    else:
        lines.append("  truncated: no")
    if run.preempting:
        lines.append("  preempting: marked")
    counts = ", ".join(f"{k}={v}" for k, v in sorted(run.record_counts.items()))
    lines.append(f"  records: {counts or 'none'}")

    lines.append(f"config ({len(run.config)} keys):")
    lines += _config_lines(run.config)

    columns: dict[str, list[Any]] = {}
    for row in run.history:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    trained = [row[step_key] for row in run.history if isinstance(row.get(step_key), (int, float))]
    steps = [row["_step"] for row in run.history if isinstance(row.get("_step"), int)]
    if trained:  # the training step every sdxl_dist_log row carries; W&B's _step only counts rows
        step_text = f", {step_key} {min(trained):g}..{max(trained):g}"
    else:
        step_text = f", steps {min(steps)}..{max(steps)}" if steps else ""
    lines.append(f"history: {len(run.history)} rows{step_text}")
    user = sorted(k for k in columns if not k.startswith("_") and not k.startswith(SYSTEM_PREFIX))
    system = sorted(k for k in columns if k.startswith(SYSTEM_PREFIX))
    lines += [f"  {_key_line(key, columns[key])}" for key in user]
    if system:
        rows = sum(1 for row in run.history if any(k.startswith(SYSTEM_PREFIX) for k in row))
        lines.append(f"system: {len(system)} keys in {rows} rows")
        lines += [f"  {_key_line(key[len(SYSTEM_PREFIX):], columns[key])}" for key in system]
    if run.stats:
        lines.append(f"wandb system stats: {len(run.stats)} samples")

    lines.append(f"artifacts: {len(run.artifacts)}")
    for art in run.artifacts:
        aliases = ", ".join(art.aliases) or "-"
        lines.append(
            f"  {art.name}:{art.local_version} ({art.type}) aliases [{aliases}], {len(art.files)} files, "
            f"{art.size} bytes, digest {art.digest[:12]}"
        )
        if art.metadata:
            lines.append(f"    metadata: {_fmt(art.metadata)}")
    lines.append(f"media files: {len(run.media_files)}")
    return "\n".join(lines)
