"""Which ranks reached a logging call, through the process group's key-value store. Best effort throughout: the
store's host may be gone, and then nobody can be named.

A rank waiting in a logging collective posts its rank under the call's key (``post``); when the wait fails, or runs
long, the ranks without a post are the ones that never came (``absent``, ``missing_now``). Pure store calls: no
torch.distributed import here (``collectives.py`` passes the store in).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

_log = logging.getLogger("sdxl_dist_log")


class Presence:
    """Posts and reads the ranks present at each logging call (by call sequence number) in one store namespace.

    Args:
        store: the process group's store (``set``/``append``/``check``/``get``).
        namespace: the logger's key prefix.
        rank: this rank.
        world_size: ranks in the job.
    """

    def __init__(self, store: Any, namespace: str, rank: int, world_size: int) -> None:
        self._store = store
        self._namespace = namespace
        self._rank = rank
        self._world_size = world_size

    def _key(self, sequence: int) -> str:
        return f"{self._namespace}/present/{sequence}"

    def _present(self, key: str) -> set[int]:
        return {int(r) for r in self._store.get(key).decode().split(",") if r}

    def post(self, sequence: int) -> None:
        """Say this rank has reached call ``sequence``."""
        try:
            self._store.append(self._key(sequence), f"{self._rank},")
        except Exception as exc:  # the store's host may be gone; naming ranks is best effort
            _log.debug("could not post presence: %s", exc)

    def missing_now(self, sequence: int) -> list[int] | None:
        """The other ranks without a post for call ``sequence``, read once without waiting; None if unreadable."""
        try:
            key = self._key(sequence)
            present = self._present(key) if self._store.check([key]) else set()
        except Exception as exc:  # the store's host may be gone: the timeout's error says so later
            _log.debug("could not read presence: %s", exc)
            return None
        return sorted(set(range(self._world_size)) - present - {self._rank})

    def absent(self, sequence: int, grace: float) -> list[int] | None:
        """Ranks that never posted for call ``sequence``, after posting this rank and waiting ``grace`` seconds for
        stragglers; None when the store cannot be read. Bounded even when the store itself hangs."""
        result: list[list[int] | None] = [None]
        key = self._key(sequence)

        def read() -> None:
            try:
                self.post(sequence)
                deadline = time.monotonic() + grace
                present: set[int] = set()
                while True:
                    if self._store.check([key]):
                        present = self._present(key)
                    if len(present) >= self._world_size or time.monotonic() >= deadline:
                        break
                    time.sleep(0.05)
                result[0] = sorted(set(range(self._world_size)) - present)
            except Exception as exc:  # the store's host may be gone: the error message says so instead
                _log.debug("could not read presence: %s", exc)

        reader = threading.Thread(target=read, name="sdxl-dist-log-presence", daemon=True)
        reader.start()
        reader.join(grace + 2.0)  # bounded: the store itself may hang if its host died
        return result[0]


__all__ = ["Presence"]
