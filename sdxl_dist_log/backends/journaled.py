"""The primary rank's backend: each call is journaled on the caller's thread and written to W&B by one writer thread.

A logging call costs its caller one journal line (a JSON line handed to the OS), not a W&B call. The row is safe
from then on: if the W&B service dies, the writer starts a new part of the run and writes it again; if the whole
process dies, the next attempt of the run (a requeued job: same run id) writes it first (:meth:`take_over`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sdxl_dist_log.backends.writer import Op, Refused, Reply, RunWriter, Session
from sdxl_dist_log.errors import LoggingInputError
from sdxl_dist_log.journal import (
    MEDIA_KINDS,
    Counts,
    Journal,
    own_step,
    pending_seqs,
    read_attempts,
    settle,
    step_range,
)

CALL_TIMEOUT_S = 60.0
"""How long a config update waits for the writer to say whether W&B took it (a new service may be starting)."""


class JournaledBackend:
    """Journals rows, images and artifacts, then has the writer put them (and config) into the run, in order.

    Thread-safe; safe to call from a signal handler that interrupted one of its own calls (``finish`` then leaves
    the interrupted call's values to the journal instead of waiting for the lock that call holds).

    Args:
        session: the run's first part.
        journal: this attempt's journal.
        step_metric: the key that carries the training step in every row.
        logger: where reports go.
        count: counts a run file's records (``offline.decode.count_records``).
        config: the config the run was started with.
        reopen_timeout: seconds a replacement W&B service may take to start.
    """

    def __init__(self, session: Session, journal: Journal, *, step_metric: str, logger: logging.Logger,
                 count: Counts, config: Mapping[str, Any] | None = None, reopen_timeout: float = 60.0) -> None:
        self.session = session
        self.journal = journal
        self._step_metric = step_metric
        self._log = logger
        self._count = count
        # journal order == queue order: append and put under one lock; re-entrant so that ``finish`` can tell a
        # call of its own thread that a signal interrupted from another thread's call
        self._front = threading.RLock()
        self._pending: dict[str, Any] = {}
        self._pending_step = 0
        self._last_step: int | None = None
        self._preempting = ""
        self._closed: str | None = None  # "finished" or "preempted" once finish was called
        self._warned_closed = False
        self._journal_error = False  # reported once
        self.writer = RunWriter(session, journal, logger=logger, count=count, config=config,
                                reopen_timeout=reopen_timeout)

    # -- rows -------------------------------------------------------------------------------------------------
    def log_row(self, data: Mapping[str, Any], step: int, commit: bool = True) -> None:
        with self._front:
            self._pending.update(data)
            self._pending_step = step
            if commit:
                self._commit_pending()

    def _commit_pending(self) -> None:
        row, self._pending = {**self._pending, self._step_metric: self._pending_step}, {}
        self._entry("row", {"step": self._pending_step, "row": row}, {"row": row, "step": self._pending_step})

    def log_side_row(self, data: Mapping[str, Any], step: int) -> None:
        """Write a row of its own (system figures) at ``step``, leaving values pending from ``commit=False`` alone."""
        row = {**data, self._step_metric: step}
        with self._front:
            self._entry("row", {"step": step, "row": row}, {"row": row, "step": step})

    def log_images(
        self, key: str, images: Sequence[np.ndarray], captions: Sequence[str | None], step: int
    ) -> None:
        """Queue uint8 HWC images; the writer encodes them as PNG files in the journal, then logs those."""
        entry = {"step": step, "key": key, "captions": list(captions), "count": len(images)}
        with self._front:
            self._entry("images", entry, {"key": key, "arrays": list(images), "captions": list(captions),
                                          "step": step})

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        """Queue a table; image cells (uint8 HWC) become PNG files in the journal, the cell ``{"image": i}``."""
        arrays: list[np.ndarray] = []
        cells: list[list[Any]] = []
        for row in rows:
            cells.append([])
            for value in row:
                if isinstance(value, np.ndarray):
                    cells[-1].append({"image": len(arrays)})
                    arrays.append(value)
                else:
                    cells[-1].append(value)
        entry = {"step": step, "key": key, "columns": list(columns), "rows": cells, "count": len(arrays)}
        with self._front:
            self._entry("table", entry, {"key": key, "columns": list(columns), "rows": cells, "arrays": arrays,
                                         "step": step})

    def _entry(self, kind: str, entry: dict[str, Any], payload: dict[str, Any],
               reply: Reply | None = None) -> Op | None:
        """Journal one entry and queue it (the caller holds the front lock). None when the run is finished."""
        if self._closed == "finished":
            if not self._warned_closed:
                self._warned_closed = True
                self._log.warning("W&B run %s is finished; a %s logged after finish() is dropped",
                                  self.session.run_id, kind)
            return None
        step = own_step(entry)
        if step is not None:
            self._last_step = step
        try:
            seq = self.journal.append(kind, entry)
        except OSError as exc:  # the journal's disk is full or gone: the row still goes to W&B, unguarded
            seq = None
            self._log_once_journal_error(exc)
        op = Op(kind, seq, payload, reply)
        if self._closed is None:
            self.writer.put(op)
        elif not self._warned_closed:  # preempted: kept for the next attempt of the run, which writes it first
            self._warned_closed = True
            self._log.warning("W&B run %s was closed for preemption; rows logged from now on are kept in the "
                              "journal %s and written into the run when it resumes", self.session.run_id,
                              self.journal.root)
        return op

    def _log_once_journal_error(self, exc: OSError) -> None:
        if not self._journal_error:
            self._journal_error = True
            self._log.error("journal %s cannot be written (%s); rows go to W&B without it, so a killed service "
                            "or process can lose the last ones", self.journal.root, exc)

    # -- calls that answer ----------------------------------------------------------------------------------------
    def log_artifact(
        self, path: str, *, name: str, type: str, aliases: Sequence[str], metadata: Mapping[str, Any]
    ) -> bool:
        """Log a file or directory as a new version of artifact ``name``; waits for W&B to take it.

        Raises:
            LoggingInputError: W&B refused it (a broken symlink, a symlink loop, an unreadable file), naming why;
                the run goes on.
        """
        fields = {"path": os.path.abspath(path), "name": name, "type": type, "aliases": list(aliases),
                  "metadata": dict(metadata)}
        with self._front:
            closed = self._closed is not None
            op = self._entry("artifact", {"step": self._last_step, **fields}, fields, Reply())
        if op is None or closed:  # finished: dropped; preempted: kept in the journal for the next attempt
            return False
        return bool(self._answer(op, None, f"log_model({path!r}) as artifact {name!r}"))

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Set top-level config keys (merged and redacted by the logger).

        Raises:
            LoggingInputError: W&B refused the values (a value it cannot serialize, a key that is not a string);
                nothing of this call is in the config, and the run goes on.
        """
        if self._closed is not None:
            return
        op = Op("config", payload={"values": dict(values)}, reply=Reply())
        self.writer.put(op)
        self._answer(op, CALL_TIMEOUT_S, f"log_config({sorted(map(str, values))})")

    def _answer(self, op: Op, timeout: float | None, what: str) -> Any:
        assert op.reply is not None
        if not op.reply.wait(timeout):
            self._log.warning("%s: W&B has not answered within %.0f s; it is applied when the writer gets to it",
                              what, timeout or 0)
            return None
        if isinstance(op.reply.error, Refused):
            raise LoggingInputError(f"{what}: W&B refused it: {op.reply.error}") from op.reply.error
        if op.reply.error is not None:
            raise op.reply.error
        return op.reply.value

    # -- preemption and the end -------------------------------------------------------------------------------
    def mark_preempting(self, reason: str = "") -> None:
        """Record at once (in the journal) that the run is being preempted, then mark the run itself."""
        self._preempting = reason or "preempted"
        self.journal.event("signal", signal=self._preempting, step=self._last_step)
        if self._closed is None:
            self.writer.put(Op("mark"))

    def finish(self, exit_code: int, timeout: float) -> None:
        """Write what is queued, close the run (marked preempting if it was) and wait at most ``timeout`` seconds.

        What the run does not hold when it closes (its service died and none could be started in time) stays in
        the journal: the next attempt of the run writes it first.
        """
        if self._closed is not None:
            return
        if self._front._is_owned():  # type: ignore[attr-defined]
            # a signal handler interrupted this thread's own logging call: its values are half-written, and that
            # call journals its row when it resumes
            self._closed = "preempted" if self._preempting else "finished"
        else:
            with self._front:  # another thread's call holds it for a journal line at most
                if self._pending:
                    self._commit_pending()
                self._closed = "preempted" if self._preempting else "finished"
        op = Op("close", payload={"exit_code": exit_code, "preempted": bool(self._preempting)}, reply=Reply())
        started = time.monotonic()
        self.writer.put(op)
        if not op.reply.wait(timeout):
            self._log.warning("W&B run %s did not finish within %.0f s; leaving it to close in the background "
                              "(what it does not hold stays in the journal %s)", self.session.run_id, timeout,
                              self.journal.root)
            return
        if self._closed == "finished":
            self.writer.stop(max(0.0, timeout - (time.monotonic() - started)))
            self.journal.close()

    # -- the previous attempts of this run ---------------------------------------------------------------------
    def take_over(self) -> int:
        """Write first what earlier attempts of this run left unwritten (killed before their run file held it).

        Returns:
            How many entries were taken over.
        """
        total = 0
        for earlier in read_attempts(self.journal.root):
            if earlier.name == self.journal.name or earlier.settled:
                continue
            seqs = pending_seqs(earlier, self._count)
            taken = lost = 0
            with self._front:
                for seq in seqs:
                    if self._replay(earlier.entries[seq], earlier.media.get(seq), earlier.name):
                        taken += 1
                    else:
                        lost += 1
            first, last = step_range(earlier)
            self.journal.event("took_over", attempt=earlier.name, entries=taken, lost=lost, steps=[first, last])
            settle(earlier, by=self.journal.name)
            if taken or lost:
                self._log.warning("attempt %s of W&B run %s ended before its run file held %d of its entries (steps "
                                  "up to %s); they are written first into this attempt's part%s", earlier.name,
                                  self.session.run_id, taken + lost, last,
                                  f" ({lost} could not be: their files are gone)" if lost else "")
            total += taken
        if total:
            self.writer.put(Op("summary", payload={"values": {"sdxl_dist_log/rows_from_earlier_attempts": total}}))
        return total

    def _replay(self, entry: dict[str, Any], media: list[str] | None, earlier: str) -> bool:
        """Journal and queue an earlier attempt's entry as one of this attempt's, marked ``from`` that attempt."""
        kind, origin = entry.get("kind"), {"step": entry.get("step"), "from": earlier}
        if kind == "row" and isinstance(entry.get("row"), dict):
            self._entry("row", {**origin, "row": entry["row"]}, {**origin, "row": entry["row"]})
            return True
        if kind in MEDIA_KINDS and (media is not None or kind == "table") and all(os.path.exists(m)
                                                                               for m in media or ()):
            if len(media or ()) != entry.get("count", len(media or ())):  # some of its files are gone
                return False
            files = self.journal.copy_media(str(self.journal.next_seq), media or ())
            if kind == "images":
                fields = {"key": entry["key"], "captions": entry.get("captions") or [None] * len(files)}
            else:
                fields = {"key": entry["key"], "columns": entry["columns"], "rows": entry["rows"]}
            self._entry(kind, {**origin, **fields, "count": len(files)}, {**origin, **fields, "files": files})
            return True
        if kind == "artifact" and os.path.exists(str(entry.get("path"))):
            fields = {k: entry[k] for k in ("path", "name", "type", "aliases", "metadata")}
            self._entry("artifact", {**origin, **fields}, {**origin, **fields})
            return True
        return False

__all__ = ["CALL_TIMEOUT_S", "JournaledBackend"]
