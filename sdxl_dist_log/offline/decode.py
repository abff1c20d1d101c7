"""Record protobufs -> Python values: parse each payload as a ``Record`` and fold the records into an OfflineRun
(the items of history, summary and config records are decoded by ``items``).

The only module of the package that touches wandb's protobuf classes, and only when a file is read: importing it
imports neither wandb nor protobuf.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdxl_dist_log.offline.items import finish_fold, fold_update, history_row, item_value
from sdxl_dist_log.offline.logfile import ReadStatus, iter_payloads
from sdxl_dist_log.offline.model import OfflineArtifact, OfflineRun, flatten

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record

_INTERNAL_KEY = "_wandb"


# ----------------------------------------------------------------------------------------------------------------
# Payloads -> Record protobufs
# ----------------------------------------------------------------------------------------------------------------


class RecordReader(Iterator["Record"]):
    """An iterator over the ``Record`` protobufs of one ``.wandb`` file; see :func:`read_records`.

    After iteration ends, ``truncated`` and ``reason`` say whether the tail was cut or corrupt.
    """

    def __init__(self, path: str | os.PathLike[str], start: int = 0) -> None:
        self.path = Path(path)
        self.start = start
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
            for payload in iter_payloads(stream, self.status, self.start):
                record = pb.Record()
                try:
                    record.ParseFromString(payload)
                except DecodeError as exc:
                    self.status.truncated = True
                    self.status.reason = f"record before offset {self.status.good_offset} does not decode: {exc}"
                    return
                yield record


def read_records(path: str | os.PathLike[str], start: int = 0) -> RecordReader:
    """Iterate over the records of a ``.wandb`` file, stopping at a truncated or corrupt tail.

    Args:
        path: the ``run-<id>.wandb`` file.
        start: a record boundary to resume from (``reader.status.good_offset`` of an earlier read); 0 for all.

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
    return RecordReader(path, start)


def count_records(path: str | os.PathLike[str], start: int = 0) -> tuple[Counter[str], int]:
    """Count the records of a ``.wandb`` file by kind, from ``start`` to the last complete record.

    Cheap to repeat on a file that grows (a live run): pass the returned offset back as ``start``.

    Args:
        path: the ``run-<id>.wandb`` file.
        start: a record boundary to resume from (an offset this function returned); 0 for the whole file.

    Returns:
        (record kind -> count, e.g. ``{"history": 12, "artifact": 1, ...}``; the offset just past the last
        complete record read).

    Raises:
        OSError: the file cannot be read.
        WandbFileError: the file does not start with the W&B header.
    """
    reader = RecordReader(path, start)
    counts = Counter(record.WhichOneof("record_type") for record in reader)
    return counts, reader.status.good_offset


def _message_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


# ----------------------------------------------------------------------------------------------------------------
# Records -> the run
# ----------------------------------------------------------------------------------------------------------------


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


def _telemetry_dict(telemetry: Any) -> dict[str, Any]:
    data = _message_dict(telemetry)
    data.pop("_info", None)
    features = data.pop("feature", {})
    data["features"] = sorted(name for name, on in features.items() if on)
    return data


def decode_records(run: OfflineRun, records: Iterable[Any], *, summary: bool = True) -> None:
    """Fold ``records`` (``Record`` protobufs, in file order) into ``run``: identity, config, history, summary, ...

    Args:
        run: the run to fill; its ``config``, ``summary``, ``files`` and ``record_counts`` are replaced.
        records: e.g. a :class:`RecordReader`.
        summary: False leaves ``run.summary`` empty and skips the items of the summary records (still counted).
    """
    counts: Counter[str] = Counter()
    config: dict[str, Any] = {}
    folded: dict[str, Any] = {}
    seen_artifacts: dict[str, list[str]] = {}
    files: dict[str, None] = {}
    for record in records:
        kind = record.WhichOneof("record_type") or "unknown"
        counts[kind] += 1
        if kind == "history":
            run.history.append(history_row(record.history))
        elif kind == "summary":
            if summary:
                fold_update(folded, record.summary)
        elif kind == "config":
            fold_update(config, record.config)
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
                fold_update(config, r.config)
            if summary and r.HasField("summary"):
                fold_update(folded, r.summary)
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
                sample[item.key] = item_value(item)
            run.stats.append(sample)
        elif kind == "preempting":
            run.preempting = True
    config.pop(_INTERNAL_KEY, None)
    folded.pop(_INTERNAL_KEY, None)
    run.config = finish_fold(config)
    run.summary = flatten(finish_fold(folded))
    run.files = list(files)
    run.record_counts = dict(counts)
