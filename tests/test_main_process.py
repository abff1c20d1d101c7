"""Tests of sdxl_dist_log.main_process: calls from one rank, without a collective, checked on every rank.

The backend writes are recorded by the ``write`` the logger would pass; the real run is in
tests/wandb_logger/test_main_process.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.errors import ImageInputError, LoggingInputError, MetricValueError
from sdxl_dist_log.main_process import MainProcessLog


class _Sink:
    def __init__(self) -> None:
        self.writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.warnings: list[tuple[str, str]] = []

    def write(self, method: str, *args: Any, **kwargs: Any) -> None:
        self.writes.append((method, args, kwargs))

    def warn(self, message: str, key: str) -> None:
        self.warnings.append((message, key))


def _main(primary: bool = True, disabled: bool = False, **config: Any) -> tuple[MainProcessLog, _Sink]:
    sink = _Sink()
    cfg = WandbConfig(mode="offline", max_images_to_log=3, **config)
    return MainProcessLog(sink.write, cfg, is_primary=primary, rank=0 if primary else 1, disabled=disabled,
                          warn=sink.warn), sink


def test_metrics_are_this_rank_s_own_values_prefixed_at_the_step() -> None:
    main, sink = _main()
    assert main.log_metrics({"val/loss": torch.tensor(0.25), "n": 3}, step=7) == {"metrics/n": 3.0,
                                                                                  "metrics/val/loss": 0.25}
    assert main.log_metrics({"x": 1}, prefix="") == {"x": 1.0}
    assert sink.writes == [("log_row", ({"metrics/n": 3.0, "metrics/val/loss": 0.25},), {"commit": True, "step": 7}),
                           ("log_row", ({"x": 1.0},), {"commit": True, "step": None})]


def test_images_are_capped_and_keyed_like_log_images() -> None:
    main, sink = _main()
    images = [Image.new("RGB", (8, 8), (255, 0, 0))] * 5
    assert main.log_images(images, captions=[f"p{i}" for i in range(5)], step=3, prefix="validation") == 3
    [(method, (key, arrays, captions), kwargs)] = sink.writes
    assert (method, key, kwargs) == ("log_images", "validation/images", {"step": 3})
    assert [a.shape for a in arrays] == [(8, 8, 3)] * 3 and captions == ["p0", "p1", "p2"]
    assert main.log_images([]) == 0 and len(sink.writes) == 1  # no images: nothing written


def test_tables_hold_numbers_text_none_and_images() -> None:
    main, sink = _main()
    rows = [["a cat", 1, 0.5, None, np.zeros((4, 4, 3), np.uint8)], ["a dog", 2, 1.5, True, torch.ones(3, 4, 4)]]
    assert main.log_table("val/samples", ["prompt", "i", "score", "flag", "image"], rows, step=9) == 2
    [(method, (key, columns, cells), kwargs)] = sink.writes
    assert (method, key, kwargs) == ("log_table", "val/samples", {"step": 9})
    assert columns == ["prompt", "i", "score", "flag", "image"]
    assert cells[0][:4] == ["a cat", 1, 0.5, None] and cells[1][:4] == ["a dog", 2, 1.5, True]
    assert cells[0][4].shape == (4, 4, 3) and cells[1][4].dtype == np.uint8 and cells[1][4].max() == 255


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda m: m.log_metrics({"loss": "x"}), MetricValueError, "'loss'"),
        (lambda m: m.log_metrics({"loss": 1.0, 2: 1.0}), MetricValueError, "metric key 2"),
        (lambda m: m.log_metrics({"loss": 1.0}, step="3"), MetricValueError, "step='3'"),
        (lambda m: m.log_metrics({"loss": 1.0}, prefix=1), MetricValueError, "prefix=1"),
        (lambda m: m.log_images([np.zeros((4, 4, 2))]), ImageInputError, "image 0"),
        (lambda m: m.log_images([np.zeros((4, 4, 3))], captions=["a", "b"]), ImageInputError, "2 captions"),
        (lambda m: m.log_images([np.zeros((4, 4, 3))], step=-1), ImageInputError, "step=-1"),
        (lambda m: m.log_table("", ["a"], []), LoggingInputError, "key=''"),
        (lambda m: m.log_table("t", ["a", "a"], []), LoggingInputError, "distinct"),
        (lambda m: m.log_table("t", "ab", []), LoggingInputError, "columns='ab'"),
        (lambda m: m.log_table("t", ["a"], ["x"]), LoggingInputError, "row 0 must be a sequence of 1 cells"),
        (lambda m: m.log_table("t", ["a"], [[object()]]), LoggingInputError, "row 0, column 'a': object"),
    ],
)
@pytest.mark.parametrize("primary", [True, False], ids=["primary", "other-rank"])
def test_a_bad_argument_raises_on_any_rank_naming_it(call: Any, error: type, words: str, primary: bool) -> None:
    main, sink = _main(primary)
    with pytest.raises(error, match=words.replace("(", r"\(").replace("[", r"\[")):
        call(main)
    assert sink.writes == []


def test_off_the_primary_calls_are_dropped_with_one_warning_per_method() -> None:
    main, sink = _main(primary=False, primary_rank=0)
    assert main.log_metrics({"loss": 1.0}) is None
    assert main.log_metrics({"loss": 2.0}) is None
    assert main.log_images([np.zeros((4, 4, 3), np.uint8)]) == 0
    assert main.log_table("t", ["a"], [[1]]) == 0
    assert sink.writes == []
    keys = [key for _, key in sink.warnings]
    assert keys == ["main:log_metrics", "main:log_metrics", "main:log_images", "main:log_table"]  # once per key
    assert "on rank 1" in sink.warnings[0][0] and "rank == 0" in sink.warnings[0][0]


def test_disabled_returns_at_once_without_looking() -> None:
    main, sink = _main(disabled=True)
    assert main.log_metrics({"loss": "not even checked"}) is None
    assert main.log_images("nor this") == 0
    assert main.log_table("", [], []) == 0
    assert sink.writes == [] and sink.warnings == []
