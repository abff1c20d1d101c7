"""The primary's journal: every row is on local disk before it goes to W&B, until the run file is known to hold it.

Why: W&B's ``wandb-core`` keeps what it was sent in memory and writes its ``.wandb`` file only every flush interval,
and a preemption signals it too (SLURM signals every process of the step with ``proctrack/linuxproc``), so rows
logged shortly before the signal are in no file. The journal is what survives: an append-only JSON-lines file per
attempt (one logger's lifetime on the primary), written and flushed on the caller's thread (the OS has it even if
the process is killed the next instant).

Files, under ``<WandbConfig.dir>/journal/<run id>/`` (see docs/slurm.md):

* ``<attempt>.rows-<n>.jsonl``: one entry per row, image row or artifact, each with its ``seq`` (0, 1, ...). An
  entry is needed until the run file holds it; whole segments are deleted once all their entries are held.
* ``<attempt>.events.jsonl``: what happened: the parts of the run (each W&B service this attempt wrote to, its run
  file, the entries it was sent), confirmations (how many it holds), a preemption signal, the close, and later a
  ``settled`` line when a next attempt has taken over what this one could not write.
* ``<attempt>.media/``: the PNG files of image entries.

A part holds a prefix of what it was sent, in order: ``wandb-core`` writes one stream in order of arrival. So the
entries a part holds are found by counting its file's history and artifact records (:func:`durable_prefix`); the
rest are written again, into a new part of the same run or by the next attempt.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

JOURNAL_DIR = "journal"
"""The folder under ``WandbConfig.dir`` that holds the journals, one subfolder per run id."""
ENTRIES_PER_SEGMENT = 1000
"""Entries per rows file: a segment is deleted as a whole once the run holds all of its entries."""
ROW_KINDS = ("row", "images", "table")
"""Entry kinds that become one history record each; ``artifact`` entries become one artifact record each."""
MEDIA_KINDS = ("images", "table")  # entries whose pixels the writer saves as PNG files in the journal first
HELD_KEYS = ("ops", "rows", "artifacts", "offset", "file_rows", "file_artifacts")
"""What a part's ``confirmed`` event records: the entries, rows and artifacts its file holds, and the file's counts
up to ``offset``, where the next count starts."""

Counts = Callable[[str, int], tuple[Mapping[str, int], int]]
"""``count(run_file, start) -> (record kind -> count, end offset)``: ``offline.decode.count_records``."""


def journal_root(wandb_dir: str | os.PathLike[str], run_id: str) -> Path:
    """The folder holding the journals of every attempt of run ``run_id``."""
    return Path(wandb_dir) / JOURNAL_DIR / run_id


def durable_prefix(kinds: Sequence[str], rows: int, artifacts: int) -> int:
    """How many of the entries a part was sent, in order, its run file holds.

    Args:
        kinds: the kind of each entry sent to the part, in the order sent.
        rows: history records in the part's file (each ``row``/``images``/``table`` entry is one).
        artifacts: artifact records in the part's file.

    Returns:
        The length of the longest prefix of ``kinds`` with at most ``rows`` row entries and ``artifacts`` artifact
        entries: those are held; everything after is not known to be (and is written again).

    Example:
        >>> durable_prefix(["row", "row", "artifact", "row"], rows=2, artifacts=0)
        2
    """
    held = {"row": 0, "artifact": 0}
    for index, kind in enumerate(kinds):
        group = "row" if kind in ROW_KINDS else "artifact"
        held[group] += 1
        if held["row"] > rows or held["artifact"] > artifacts:
            return index
    return len(kinds)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_plain)
"""One encoder for every line: ``json.dumps`` with options builds a new one per call, on the caller's thread."""
_dumps = _ENCODER.encode


class Journal:
    """The journal of one attempt: entries appended by callers, events by anyone (a signal handler included).

    ``append`` is not locked: the caller serializes it (the backend appends and queues under one lock, so the
    journal's order is the order rows reach W&B). ``event`` takes its own re-entrant lock and writes one line in
    one call, so a signal handler that interrupts another ``event`` on the same thread cannot tear a line.

    Args:
        root: the run's journal folder (:func:`journal_root`); created if missing.
        run_id: the W&B run id, recorded in the first event.
        clock: seconds since the epoch, for the events.
    """

    def __init__(self, root: str | os.PathLike[str], *, run_id: str, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        started = clock()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
        self.name = f"{stamp}-{int(started * 1000) % 1000:03d}-{os.getpid()}"
        for again in range(1, 1000):  # a second logger of this process in the same millisecond
            if not (self.root / f"{self.name}.events.jsonl").exists():
                break
            self.name = f"{stamp}-{int(started * 1000) % 1000:03d}-{os.getpid()}.{again}"
        self.events_path = self.root / f"{self.name}.events.jsonl"
        self.media_dir = self.root / f"{self.name}.media"
        self._events: IO[str] = open(self.events_path, "a", encoding="utf-8")
        self._event_lock = threading.RLock()
        self._rows: IO[str] | None = None
        self._segments: list[tuple[int, Path]] = []  # (first seq, path), oldest first
        self.next_seq = 0
        self.event("attempt", run_id=run_id, pid=os.getpid(), host=socket.gethostname())

    # -- writing ------------------------------------------------------------------------------------------------
    def append(self, kind: str, data: Mapping[str, Any]) -> int:
        """Write one entry and hand it to the OS; returns its seq. A value JSON cannot hold is kept as its repr.

        Raises:
            OSError: the disk refused the line (full, gone): the caller decides what that costs.
        """
        seq = self.next_seq
        record = {"seq": seq, "kind": kind, **data}
        try:
            line = _dumps(record)
        except (TypeError, ValueError):
            line = json.dumps(record, separators=(",", ":"), default=repr)
        stream = self._rows if self._rows is not None and seq % ENTRIES_PER_SEGMENT else self._roll(seq)
        stream.write(line + "\n")
        stream.flush()
        self.next_seq = seq + 1
        return seq

    def _roll(self, seq: int) -> IO[str]:
        if self._rows is not None:
            self._rows.close()
        path = self.root / f"{self.name}.rows-{seq // ENTRIES_PER_SEGMENT:06d}.jsonl"
        self._rows = open(path, "a", encoding="utf-8")
        self._segments.append((seq, path))
        return self._rows

    def event(self, name: str, **fields: Any) -> None:
        """Append one event line (``{"event": name, "time": ..., **fields}``); never raises (disk trouble is moot
        here: the entries are what matter)."""
        line = _dumps({"event": name, "time": round(self._clock(), 3), **fields}) + "\n"
        with self._event_lock:
            try:
                self._events.write(line)
                self._events.flush()
            except (OSError, ValueError):  # closed or full: the next attempt sees an attempt without this event
                pass

    def save_media(self, name: str, images: Sequence[np.ndarray]) -> list[str]:
        """Encode uint8 HWC images as PNG files ``<name>-<i>.png`` (``name``: the entry's seq); returns their paths."""
        from PIL import Image

        paths = self._media_paths(name, len(images))
        for image, path in zip(images, paths):
            Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(path)
        return paths

    def copy_media(self, name: str, sources: Sequence[str]) -> list[str]:
        """Copy PNG files (an earlier attempt's) in as ``<name>-<i>.png``, as ``save_media`` names them."""
        paths = self._media_paths(name, len(sources))
        for source, path in zip(sources, paths):
            shutil.copyfile(source, path)
        return paths

    def _media_paths(self, name: str, count: int) -> list[str]:
        """Where an entry's images go; ``prune`` finds them by the ``<seq>-`` prefix."""
        self.media_dir.mkdir(exist_ok=True)
        return [str(self.media_dir / f"{name}-{index}.png") for index in range(count)]

    def prune(self, lowest_needed: int) -> None:
        """Delete the rows segments (and media) whose entries all lie below ``lowest_needed``, the smallest seq the
        run does not hold yet. The segment being written is kept."""
        below = None
        while len(self._segments) > 1 and self._segments[1][0] <= lowest_needed:
            self._segments.pop(0)[1].unlink(missing_ok=True)
            below = self._segments[0][0]
        if below is not None and self.media_dir.is_dir():
            for media in self.media_dir.iterdir():
                if media.name.split("-", 1)[0].isdigit() and int(media.name.split("-", 1)[0]) < below:
                    media.unlink(missing_ok=True)

    def drop_entries(self) -> None:
        """Delete every rows segment and the media (the run holds every entry); the events stay. Later entries
        start a new segment."""
        if self._rows is not None:
            self._rows.close()
            self._rows = None
        for _, path in self._segments:
            path.unlink(missing_ok=True)
        self._segments.clear()
        shutil.rmtree(self.media_dir, ignore_errors=True)

    def close(self) -> None:
        """Close the files (entries and events already written stay)."""
        if self._rows is not None:
            self._rows.close()
            self._rows = None
        with self._event_lock:
            self._events.close()


# -- reading ----------------------------------------------------------------------------------------------------
@dataclass
class AttemptLog:
    """One attempt's journal as read back: its events and the entries not yet deleted."""

    name: str
    events_path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    entries: dict[int, dict[str, Any]] = field(default_factory=dict)
    media: dict[int, list[str]] = field(default_factory=dict)

    def first(self, name: str) -> dict[str, Any] | None:
        """The first event called ``name``, or None."""
        return next((e for e in self.events if e.get("event") == name), None)

    def last(self, name: str) -> dict[str, Any] | None:
        """The last event called ``name``, or None."""
        return next((e for e in reversed(self.events) if e.get("event") == name), None)

    def all(self, name: str) -> list[dict[str, Any]]:
        """Every event called ``name``, in order."""
        return [e for e in self.events if e.get("event") == name]

    @property
    def close_s(self) -> float | None:
        """Seconds from the (first) preemption signal to the run's (last) close, by journal times; None without
        both."""
        signal, closed = self.first("signal"), self.last("closed")
        return closed["time"] - signal["time"] if signal is not None and closed is not None else None

    @property
    def settled(self) -> bool:
        """True when nothing of this attempt is left to write: closed with everything held, or taken over."""
        closed = self.last("closed")
        if self.last("settled") is not None:
            return True
        return closed is not None and not closed.get("pending") and not any(s >= closed["upto"] for s in self.entries)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:  # the torn last line of a killed process
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def read_attempt(events_path: str | os.PathLike[str]) -> AttemptLog:
    """Read one attempt's events and remaining entries (a torn last line, from a killed process, is skipped)."""
    path = Path(events_path)
    name = path.name.removesuffix(".events.jsonl")
    log = AttemptLog(name=name, events_path=path, events=_json_lines(path))
    for segment in sorted(path.parent.glob(f"{name}.rows-*.jsonl")):
        for entry in _json_lines(segment):
            if isinstance(entry.get("seq"), int):
                log.entries[entry["seq"]] = entry
    for event in log.all("media"):
        log.media[int(event["seq"])] = list(event.get("files") or [])
    return log


def read_attempts(root: str | os.PathLike[str]) -> list[AttemptLog]:
    """Every attempt journaled under a run's journal folder, oldest first; empty when there is none."""
    base = Path(root)
    if not base.is_dir():
        return []
    return [read_attempt(p) for p in sorted(base.glob("*.events.jsonl"), key=_started_order)]


def _started_order(events_path: Path) -> tuple[str, int]:
    """Sort key of an attempt's events file: its start stamp, then its ``.N`` suffix (a later logger, same ms)."""
    name = events_path.name.removesuffix(".events.jsonl")
    stamp, _, again = name.partition(".")
    return stamp, int(again or 0)


def sent_to_parts(log: AttemptLog) -> list[tuple[dict[str, Any], list[int]]]:
    """Each part of an attempt with the seqs it was sent, in order (replayed ones first, skipped ones left out)."""
    parts = log.all("part")
    skipped = {int(e["seq"]) for e in log.all("skipped")}
    closed = log.last("closed")
    end = int(closed["upto"]) if closed and isinstance(closed.get("upto"), int) else max(log.entries, default=-1) + 1
    out = []
    for index, part in enumerate(parts):
        stop = int(parts[index + 1]["from_seq"]) if index + 1 < len(parts) else end
        fresh = [s for s in range(int(part["from_seq"]), stop) if s not in skipped]
        out.append((part, [int(s) for s in part.get("replay", [])] + fresh))
    return out


def pending_seqs(log: AttemptLog, count: Counts) -> list[int]:
    """The seqs of entries the attempt's run files do not hold, in order: what a next attempt must write.

    Args:
        log: the attempt, from :func:`read_attempt`.
        count: counts a run file's records from an offset (``offline.decode.count_records``); a file that cannot
            be read counts as empty, so its entries are written again rather than lost.
    """
    held: set[int] = set()
    last_confirmed = {e.get("part"): e for e in log.all("confirmed")}  # the last one of each part wins
    for part, sent in sent_to_parts(log):
        confirmed = last_confirmed.get(part.get("part"), dict.fromkeys(HELD_KEYS, 0))
        base_ops, base_rows, base_artifacts, offset, rows, artifacts = (confirmed[k] for k in HELD_KEYS)
        if part.get("run_file"):
            try:
                more, offset = count(part["run_file"], offset)
                rows += more.get("history", 0)
                artifacts += more.get("artifact", 0)
            except (OSError, ValueError):
                pass
        rest = sent[base_ops:]
        kinds = [str(log.entries.get(s, {}).get("kind", "row")) for s in rest]
        held.update(sent[:base_ops])
        held.update(rest[: durable_prefix(kinds, rows - base_rows, artifacts - base_artifacts)])
    skipped = {int(e["seq"]) for e in log.all("skipped")}
    return [s for s in sorted(log.entries) if s not in held and s not in skipped]


def settle(log: AttemptLog, *, by: str) -> None:
    """Mark an earlier attempt as taken over by attempt ``by`` and delete its entries and media; its events stay
    (``inspect`` reads them)."""
    with open(log.events_path, "a", encoding="utf-8") as events:
        events.write(_dumps({"event": "settled", "time": round(time.time(), 3), "by": by}) + "\n")
    for segment in log.events_path.parent.glob(f"{log.name}.rows-*.jsonl"):
        segment.unlink(missing_ok=True)
    shutil.rmtree(log.events_path.parent / f"{log.name}.media", ignore_errors=True)


def own_step(entry: Mapping[str, Any]) -> float | None:
    """The training step of an entry (or an operation's payload) the attempt logged itself; None for one without a
    numeric step, and for one it wrote for an earlier attempt (marked ``from``: that step is the earlier one's)."""
    step = entry.get("step")
    if "from" in entry or not isinstance(step, (int, float)) or (isinstance(step, float) and math.isnan(step)):
        return None
    return step


def step_range(log: AttemptLog) -> tuple[float | None, float | None]:
    """The first and last training step this attempt logged itself (not what it wrote for an earlier attempt),
    from its events and its remaining entries."""
    own = ("confirmed", "service_lost", "closed")  # a took_over event's steps are the earlier attempt's
    steps = [e["steps"] for e in log.events
             if e.get("event") in own and isinstance(e.get("steps"), list) and len(e["steps"]) == 2]
    firsts = [s[0] for s in steps if isinstance(s[0], (int, float))]
    lasts = [s[1] for s in steps if isinstance(s[1], (int, float))]
    for entry in log.entries.values():
        step = own_step(entry)
        if step is not None:
            firsts.append(step)
            lasts.append(step)
    return (min(firsts) if firsts else None, max(lasts) if lasts else None)


__all__ = ["ENTRIES_PER_SEGMENT", "HELD_KEYS", "JOURNAL_DIR", "AttemptLog", "Journal", "durable_prefix",
           "journal_root", "own_step", "pending_seqs", "read_attempt", "read_attempts", "sent_to_parts", "settle",
           "step_range"]
