"""Tests of sdxl_dist_log.presence: which ranks reached a logging call, through a real (in-process) store."""

from __future__ import annotations

from typing import Any

import pytest

from sdxl_dist_log.presence import Presence

dist = pytest.importorskip("torch.distributed")


def _ranks(store: Any, world: int = 4) -> list[Presence]:
    return [Presence(store, "ns/0", rank, world) for rank in range(world)]


def test_missing_now_names_the_other_ranks_without_a_post() -> None:
    ranks = _ranks(dist.HashStore())
    assert ranks[0].missing_now(7) == [1, 2, 3]  # nobody posted yet: the others are missing, never this rank
    ranks[2].post(7)
    ranks[0].post(7)
    assert ranks[0].missing_now(7) == [1, 3]
    assert ranks[0].missing_now(8) == [1, 2, 3]  # another call: its own key


def test_absent_posts_this_rank_and_names_the_ranks_that_never_came() -> None:
    ranks = _ranks(dist.HashStore())
    for rank in (1, 2):
        ranks[rank].post(3)
    assert ranks[0].absent(3, grace=0.0) == [3]
    ranks[3].post(3)
    assert ranks[0].absent(3, grace=5.0) == []  # everyone is there: no wait for the grace


class _GoneStore:
    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any) -> None:
            raise RuntimeError("store's host is gone")

        return fail


def test_a_store_that_cannot_be_read_names_nobody() -> None:
    presence = Presence(_GoneStore(), "ns/0", 0, 2)
    presence.post(1)  # best effort: no error
    assert presence.missing_now(1) is None
    assert presence.absent(1, grace=0.0) is None
