"""The rare paths' exchanges with the primary, in the simulator: objects and bytes reach the primary only, and a
decision that fails there reaches every rank as an error (real gloo processes run them in test_collectives.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sdxl_dist_log.errors import CollectiveError
from sdxl_dist_log.exchange import bytes_to_primary, decided_at_primary
from sdxl_dist_log.testing.simulate import SimulatedJob
from sdxl_dist_log.topology import Layout


@pytest.mark.parametrize("per_node", [1, 2, 8])
def test_objects_and_bytes_reach_the_primary_only(per_node: int) -> None:
    job = SimulatedJob(Layout.regular(8, per_node))
    total = lambda everyone: sum(o["rank"] for o in everyone)  # noqa: E731
    out = job.run({r: decided_at_primary(job.topology(r), {"rank": r}, total) for r in range(8)})
    assert set(out.values()) == {28}
    sizes = {1: 3, 6: 5}
    payloads = {r: np.full(sizes.get(r, 0), r, np.uint8) for r in range(8)}
    job.reset()
    got = job.run({r: bytes_to_primary(job.topology(r), sizes, payloads[r]) for r in range(8)})
    assert {r: v.tolist() for r, v in got[0].items()} == {1: [1, 1, 1], 6: [6] * 5}
    if per_node < 8:  # point to point: only the two senders (and their leaders, forwarding) send anything
        senders = {r for r, record in job.records.items() if record.messages_sent}
        assert senders <= {1, 6} | set(job.topology(0).leaders)
        assert all(v is None for r, v in got.items() if r != 0)


@pytest.mark.parametrize("per_node", [2, 8])
def test_a_decision_that_fails_reaches_every_rank_as_an_error(per_node: int) -> None:
    def broken(everyone: list[int]) -> int:
        raise KeyError("a defect")

    job = SimulatedJob(Layout.regular(8, per_node))
    out = job.run({r: decided_at_primary(job.topology(r), r, broken) for r in range(8)})
    assert all(type(v) is CollectiveError and "KeyError" in str(v) for v in out.values())
