"""The one ordered writer thread between the journal and W&B, and what it does when the W&B service dies.

Callers (the training thread, the system sampler, a signal handler) only append to the journal and queue an
operation; this thread makes every W&B call, in queue order. When a call fails, the session says whether the W&B
service is gone (its process exited, its connection was lost) or the call itself was refused (a bad value): a
refused call costs that call only; a dead service is reported once, replaced by a new service for the same run id
(a new *part* of the run), and the entries the dead part's file does not hold are sent again, before anything else.

The writer imports nothing of wandb: it talks to a :class:`Session` (``wandb_backend.WandbSession`` in production, a
stand-in in tests).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdxl_dist_log.journal import (
    ENTRIES_PER_SEGMENT,
    HELD_KEYS,
    MEDIA_KINDS,
    ROW_KINDS,
    Counts,
    Journal,
    durable_prefix,
    own_step,
)

RESTARTS = 3
"""How many times one writer replaces a dead W&B service before it gives up (the journal keeps the rest)."""


class Session(Protocol):
    """One W&B run as the writer uses it: the current part, and a way to start the next part of the same run."""

    run_id: str

    def run_file(self) -> str | None:
        """The current part's ``.wandb`` file, or None when there is none to read back (disabled, unknown)."""

    def log(self, row: Mapping[str, Any]) -> None:
        """Write one history row (the step metric included)."""

    def log_images(self, key: str, files: Sequence[str], captions: Sequence[str | None], step: int) -> None:
        """Write one history row of PNG files under ``key`` at ``step``."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], files: Sequence[str],
                  step: int) -> None:
        """Write one history row holding a table under ``key`` at ``step``; a cell ``{"image": i}`` is ``files[i]``."""

    def log_artifact(self, path: str, *, name: str, type: str, aliases: Sequence[str],
                     metadata: Mapping[str, Any]) -> None:
        """Log a file or directory as a new version of artifact ``name``."""

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Set top-level config keys."""

    def update_summary(self, values: Mapping[str, Any]) -> None:
        """Set summary keys (what the writer did: service restarts, entries written again)."""

    def mark_preempting(self) -> None:
        """Record that the run is being preempted and will resume."""

    def finish(self, exit_code: int) -> None:
        """Close the current part with an exit record."""

    def failure(self, exc: BaseException) -> str | None:
        """Why the W&B service is gone, if ``exc`` means that; None when the call itself was refused."""

    def reopen(self, config: Mapping[str, Any], timeout: float) -> None:
        """Start a new service and a new part of the same run id (``resume="allow"``) with ``config``."""

    def detach(self) -> None:
        """Let go of the service (tear it down, or forget a dead one) so that process exit has nothing left to do."""


class Reply:
    """The answer to one queued operation, for a caller that waits (config, artifact, close)."""

    def __init__(self) -> None:
        self._done = threading.Event()  # one per call: a signal handler never waits on a lock someone holds
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self._done.set()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)


@dataclass(eq=False)
class Op:
    """One queued operation. Entries (rows, images, artifacts) carry their journal ``seq``."""

    kind: str
    seq: int | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    reply: Reply | None = None


class Refused(Exception):
    """W&B refused one call while its service is healthy (a bad value, a broken file): that call is lost alone."""


class ServiceLost(Exception):
    """The W&B service is gone and could not be replaced; what is not written stays in the journal."""


class RunWriter:
    """Writes queued operations into the run on one thread, replacing a dead W&B service (bounded) when it must.

    Args:
        session: the run's current part.
        journal: the attempt's journal (entries are already in it when their operation is queued).
        logger: where the one report per service death, and refused calls, go.
        count: counts a run file's records from an offset (``offline.decode.count_records``).
        config: the run config the first part was started with; config updates are merged into it, so a new
            part starts with the whole config.
        reopen_timeout: seconds a new service may take to start.
        restarts: how many dead services one writer replaces before giving up.
    """

    def __init__(self, session: Session, journal: Journal, *, logger: logging.Logger, count: Counts,
                 config: Mapping[str, Any] | None = None, reopen_timeout: float = 60.0,
                 restarts: int = RESTARTS) -> None:
        self._session = session
        self._journal = journal
        self._log = logger
        self._count = count
        self._config = dict(config or {})
        self._reopen_timeout = reopen_timeout
        self._max_restarts = restarts
        self._queue: queue.SimpleQueue[Op | None] = queue.SimpleQueue()  # C-level put: safe in a signal handler
        self._part = 1
        self._new_part()
        self._next_fresh = journal.next_seq
        self._marked_part = 0
        self._restarts = 0
        self._resent = 0
        self._steps: list[Any] = [None, None]
        self._refusals: set[str] = set()
        self._skipped = 0
        self.state = "open"
        """"open", then "closed" after a close, or "lost" when no service could be had."""
        self.held_total = 0
        journal.event("part", part=1, run_file=session.run_file(), from_seq=self._next_fresh, replay=[])
        self._thread = threading.Thread(target=self._run, name="sdxl-dist-log-wandb-writer", daemon=True)
        self._thread.start()

    # -- the callers' side ----------------------------------------------------------------------------------------
    def _new_part(self) -> None:
        """Nothing sent to the current part yet, nothing known to be in its file (a new part's file starts empty)."""
        self._sent: list[Op] = []  # entries sent to the current part and not yet known to be in its file
        self._since_confirm = 0
        self._exit_seen = False
        self._held = dict.fromkeys(HELD_KEYS, 0)  # what a ``confirmed`` event records

    def put(self, op: Op) -> None:
        """Queue one operation; returns at once (safe from a signal handler)."""
        self._queue.put(op)

    def stop(self, timeout: float) -> None:
        """End the thread after what is queued (it is a daemon: a stuck W&B call never holds the process)."""
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the thread ---------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            op = self._queue.get()
            if op is None:
                return
            try:
                value = self._handle(op)
            except BaseException as exc:  # answered to the caller, or reported here: never kills the thread
                if op.reply is None:
                    self._log.error("W&B writer: %s failed: %s: %s", op.kind, type(exc).__name__, exc)
                else:
                    op.reply.set(error=exc)
                continue
            if op.reply is not None:
                op.reply.set(value)

    def _handle(self, op: Op) -> Any:
        if op.kind == "barrier":
            return True
        if op.kind == "close":
            return self._close(op)
        if self.state != "open":
            return False  # entries stay in the journal for the next attempt
        try:
            self._apply(op)
        except Refused as exc:
            self._refused(op, exc)
            if op.reply is not None:
                raise  # the waiting caller raises it
            return False
        except ServiceLost as exc:
            self._give_up(str(exc))
            return False
        return True

    def _apply(self, op: Op) -> None:
        """Send ``op``; on a dead service, start a new part, send again what the dead one lacks, then ``op``."""
        todo = deque([op])
        while todo:
            current = todo[0]
            try:
                self._send(current)
            except Exception as exc:
                why = self._session.failure(exc)
                if why is None:
                    todo.popleft()
                    if current is op:
                        raise Refused(f"{type(exc).__name__}: {exc}") from exc
                    self._refused(current, exc)  # an entry sent before is refused now: report it, go on
                    continue
                # ``op`` is always last: what the dead part lacks goes to the new part before it
                todo = deque(self._recover(why, list(todo)[:-1]) + [op])
                continue
            todo.popleft()
            if current.seq is not None:
                self._sent.append(current)
                self._note_step(current)
                if current is op:
                    self._next_fresh = current.seq + 1
                self._since_confirm += 1
                if self._since_confirm >= ENTRIES_PER_SEGMENT:
                    self._confirm()

    def _send(self, op: Op) -> None:
        p, session = op.payload, self._session
        if op.kind == "row":
            session.log(p["row"])
        elif op.kind in MEDIA_KINDS:
            if "files" not in p:
                p["files"] = self._journal.save_media(str(op.seq if op.seq is not None else f"x{id(op)}"),
                                                      p.pop("arrays"))
                if op.seq is not None:
                    self._journal.event("media", seq=op.seq, files=p["files"])
            if op.kind == "images":
                session.log_images(p["key"], p["files"], p["captions"], p["step"])
            else:
                session.log_table(p["key"], p["columns"], p["rows"], p["files"], p["step"])
        elif op.kind == "artifact":
            session.log_artifact(p["path"], name=p["name"], type=p["type"], aliases=p["aliases"],
                                 metadata=p["metadata"])
        elif op.kind == "config":
            session.update_config(p["values"])
            self._config.update(p["values"])  # what a new part starts with: never values W&B refused
        elif op.kind == "summary":
            session.update_summary(p["values"])
        elif op.kind == "mark":
            session.mark_preempting()
            self._marked_part = self._part
        elif op.kind == "finish":
            if p["preempted"] and self._marked_part != self._part:
                session.mark_preempting()  # the mark belongs to the part that ends: a new part gets it too
            session.finish(p["exit_code"])
        else:
            raise ValueError(f"unknown operation {op.kind!r}")

    def _note_step(self, op: Op) -> None:
        step = own_step(op.payload)
        if step is not None:
            self._steps = [step if self._steps[0] is None else min(self._steps[0], step),
                           step if self._steps[1] is None else max(self._steps[1], step)]

    def _refused(self, op: Op, exc: BaseException) -> None:
        if op.seq is not None:
            self._skipped += 1
            self._journal.event("skipped", seq=op.seq, reason=f"{exc}")
            if op.seq >= self._next_fresh:
                self._next_fresh = op.seq + 1
        message = f"{exc}"
        if op.reply is None and message not in self._refusals:  # a waiting caller gets the error itself
            self._refusals.add(message)
            self._log.error("W&B run %s refused a %s (%s); that %s is not logged, logging goes on",
                            self._session.run_id, op.kind, message, op.kind)

    # -- read back what the file holds ----------------------------------------------------------------------------
    def _confirm(self) -> None:
        """Count the current part's file from where the last count stopped; forget the entries it holds."""
        self._since_confirm = 0
        held = self._held
        run_file = self._session.run_file()
        if run_file is not None:
            try:
                counts, held["offset"] = self._count(run_file, held["offset"])
            except (OSError, ValueError):
                counts = {}
            held["file_rows"] += counts.get("history", 0)
            held["file_artifacts"] += counts.get("artifact", 0)
            self._exit_seen = self._exit_seen or counts.get("exit", 0) > 0
        done = durable_prefix([o.kind for o in self._sent], held["file_rows"] - held["rows"],
                              held["file_artifacts"] - held["artifacts"])
        if not done:
            return
        confirmed, self._sent = self._sent[:done], self._sent[done:]
        rows = sum(1 for o in confirmed if o.kind in ROW_KINDS)
        held["ops"] += done
        held["rows"] += rows
        held["artifacts"] += done - rows
        self.held_total += done
        self._journal.event("confirmed", part=self._part, steps=self._steps, **held)
        self._journal.prune(min([o.seq for o in self._sent if o.seq is not None] + [self._next_fresh]))

    def _confirm_closed(self, settled: bool, wait_s: float = 2.0) -> None:
        """Count a closed part: its service writes the last records just after ``finish`` returns, so count until
        the exit record shows (``settled``: the service is gone, the file is final), at most ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            self._confirm()
            if settled or self._exit_seen or time.monotonic() > deadline:
                return
            time.sleep(0.02)

    # -- a dead service -----------------------------------------------------------------------------------------
    def _recover(self, why: str, waiting: list[Op]) -> list[Op]:
        """Replace the dead service; returns the entries to send to the new part first, in order.

        Raises:
            ServiceLost: too many restarts, or the new service did not start.
        """
        self._log.warning("W&B service of run %s is gone (%s); starting a new one for the same run id",
                          self._session.run_id, why)
        self._session.detach()
        self._confirm()
        resend = sorted(self._sent + [o for o in waiting if o.seq is not None], key=lambda o: o.seq or 0)
        self._journal.event("service_lost", part=self._part, reason=why, resend=len(resend), steps=self._steps)
        if self._restarts >= self._max_restarts:
            raise ServiceLost(f"{why}; {self._restarts} new services were started already")
        self._restarts += 1
        started = time.monotonic()
        try:
            self._session.reopen(self._config, self._reopen_timeout)
        except Exception as exc:
            raise ServiceLost(f"{why}; a new service did not start: {type(exc).__name__}: {exc}") from exc
        self._part += 1
        self._new_part()
        self._resent += len(resend)
        self._journal.event("part", part=self._part, run_file=self._session.run_file(), from_seq=self._next_fresh,
                            replay=[o.seq for o in resend], reason=why,
                            started_in=round(time.monotonic() - started, 3))
        try:  # what the run cannot show otherwise: its service was replaced, and entries were written again
            self._session.update_summary({"sdxl_dist_log/service_restarts": self._restarts,
                                          "sdxl_dist_log/rows_written_again": self._resent})
        except Exception:  # noqa: BLE001 - a summary is a nicety; the next call finds out whether the part is alive
            pass
        self._log.warning("W&B run %s continues in a new service (part %d, started in %.1f s); %d entries its "
                          "last service had not written are written again", self._session.run_id, self._part,
                          time.monotonic() - started, len(resend))
        return resend

    def _give_up(self, why: str) -> None:
        if self.state == "lost":
            return
        self.state = "lost"
        self._log.error("W&B run %s: %s. Logging to W&B stops here, training goes on; every row from now on is "
                        "kept in the journal %s and written into the run when it resumes",
                        self._session.run_id, why, self._journal.root)
        self._session.detach()

    # -- the end ------------------------------------------------------------------------------------------------
    def _close(self, op: Op) -> bool:
        preempted = bool(op.payload.get("preempted"))
        closed, failed = False, False
        if self.state == "open":
            try:
                self._apply(Op("finish", payload={"exit_code": op.payload["exit_code"], "preempted": preempted}))
                closed = True
            except ServiceLost as exc:
                self._give_up(str(exc))
            except Refused as exc:
                failed = True
                self._log.error("W&B run %s could not be finished: %s", self._session.run_id, exc)
        detach = closed and (preempted or self._restarts > 0)
        if detach:  # the process is about to end: nothing may be left for W&B's exit hook; the file is final
            self._session.detach()
        if closed:
            self._confirm_closed(settled=detach)
        pending = self._journal.next_seq - self.held_total - self._skipped
        if closed and not pending:
            self._journal.drop_entries()
        state = ("preempted" if preempted else "finished") if closed else "failed" if failed else self.state
        self.state = "closed" if closed or failed else self.state
        self._journal.event("closed", state=state, exit_code=op.payload["exit_code"], upto=self._next_fresh,
                            pending=pending, steps=self._steps, parts=self._part)
        return closed
