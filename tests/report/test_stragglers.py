"""The straggler view's data (sdxl_dist_log.report.stragglers): sections, who was slowest, where each rank runs."""

from __future__ import annotations

import numpy as np

from sdxl_dist_log.report.columns import Column
from sdxl_dist_log.report.stragglers import rank_places, straggler_sections


def col(steps: list[float], values: list[float]) -> Column:
    return Column(np.array(steps, dtype=float), np.zeros(len(steps)), np.array(values, dtype=float))


def test_sections_collect_scores_slowest_and_spread() -> None:
    columns = {
        "straggler/data/score/rank0": col([0, 1, 2], [1.0, 1.0, 1.0]),
        "straggler/data/score/rank1": col([0, 1, 2], [2.0, 1.9, 0.9]),
        "straggler/data/slowest_rank": col([0, 1, 2], [1, 1, 0]),
        "straggler/data/spread": col([0, 1, 2], [2.0, 1.9, 1.1]),
        "straggler/fwd_bwd/score/rank0": col([0], [1.0]),
        "metrics/loss": col([0], [1.0]),
        "straggler/data/other": col([0], [1.0]),
    }
    data, fwd = straggler_sections(columns)
    assert (data.name, sorted(data.scores), fwd.name) == ("data", [0, 1], "fwd_bwd")
    assert data.spread is columns["straggler/data/spread"] and data.slowest is not None
    assert data.slowest_counts() == ([(1, 2), (0, 1)], 3)
    assert data.median_score(1) == 1.9 and data.median_score(7) is None
    assert fwd.slowest is None and fwd.spread is None


def test_slowest_counts_from_the_scores_when_the_run_has_no_slowest_rank() -> None:
    columns = {
        "straggler/opt/score/rank0": col([0, 1, 2, 3], [1.0, 3.0, np.nan, 1.0]),
        "straggler/opt/score/rank1": col([0, 1, 2, 3], [1.5, 1.0, 1.2, 1.0]),
    }
    (section,) = straggler_sections(columns)
    # step 2: one rank reported, step 3: a tie; neither names a slowest rank
    assert section.slowest_counts() == ([(0, 1), (1, 1)], 4)


def test_ties_and_noise_name_no_slowest_rank() -> None:
    # all ranks equal: the logger names rank 0 (the lowest on ties) with a spread of 1.0
    columns = {"straggler/data/score/rank0": col([0, 1, 2], [1.0, 1.0, 0.99]),
               "straggler/data/score/rank1": col([0, 1, 2], [1.0, 1.0, 1.01]),
               "straggler/data/slowest_rank": col([0, 1, 2], [0, 0, 1]),
               "straggler/data/spread": col([0, 1, 2], [1.0, 1.000000000000001, 1.02])}
    (section,) = straggler_sections(columns)
    assert section.slowest_counts() == ([], 3)
    assert section.slowest_counts(min_spread=1.01) == ([(1, 1)], 3)


def test_a_run_without_straggler_keys_has_no_sections() -> None:
    assert straggler_sections({"metrics/loss": col([0], [1.0])}) == []


def test_rank_places_from_the_loggers_config_entry() -> None:
    config = {"sdxl_dist_log": {"ranks": {"0": {"host": "n1", "gpu": 3}, "rank1": {"host": "n2", "gpu": "1"},
                                          "2": {"gpu": 0}, "x": {"host": "h"}, "3": "n4", "4": {}}}}
    assert rank_places(config) == {0: "n1/gpu3", 1: "n2/gpu1", 2: "gpu0"}
    assert rank_places({"sdxl_dist_log": {"ranks": [{"host": "a", "gpu": 0}, {"host": "b", "gpu": 0}]}}) == {
        0: "a/gpu0", 1: "b/gpu0"}
    assert rank_places({}) == {} and rank_places({"sdxl_dist_log": {"ranks": 5}}) == {}
