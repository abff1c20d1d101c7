"""A bad call costs that call, never the run: the table of bad inputs, on one rank and on every rank, real processes.

Each case makes one bad call on the ranks in its variant (the others make the same call with good arguments), then
every rank logs a good row at the case's own step. For every case:

- every rank that made the bad call raises the documented type, naming the key, field, path or argument;
- a rank that made a good call does not raise (``on_logging_fault="continue"``, the default): a collective call
  returns as if nothing was logged, and one error per kind of fault, naming the bad ranks and the fix, reaches its
  log;
- nothing of the bad call reaches the run, and the good row after it is reduced over both ranks (the ranks are in
  step and the run is alive): ``metrics/good`` is the mean of 1 and 2.

The two variants run as two 2-rank jobs, every case in a row, so the cases also prove that one bad call leaves the
next ones unharmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdxl_dist_log import (
    CheckpointError,
    ImageInputError,
    LoggingInputError,
    MetricValueError,
    RunConfigError,
    WandbConfig,
    WandbLogger,
)
from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.offline import read_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

IMAGE = np.zeros((4, 4, 3), np.uint8)
PRIMARY_ONLY = frozenset({0})
"""File checks of ``log_model`` happen where the files are read: on the primary."""


@dataclass(frozen=True)
class Case:
    """One bad call: what it is, with which error it fails, the words the error holds."""

    id: str
    bad: Callable[[WandbLogger, Path, int], Any]
    good: Callable[[WandbLogger, Path, int], Any]
    error: type[Exception]
    words: tuple[str, ...]
    bad_ranks: frozenset[int] = frozenset({1})
    """In the one-rank variant, the ranks that make the bad call."""
    collective: bool = True
    checked_on: frozenset[int] | None = None
    """The ranks that check what the call names (``log_model``'s files: the primary, which reads them); every rank
    that makes the call when None."""


def _metrics(wb: WandbLogger, _: Path, at: int, **kwargs: Any) -> Any:
    call = {"metrics": {"loss": 1.0}, "step": at} | kwargs
    return wb.log_metrics(call.pop("metrics"), **call)


def _images(wb: WandbLogger, _: Path, at: int, **kwargs: Any) -> Any:
    call = {"images": [IMAGE], "step": at} | kwargs
    return wb.log_images(call.pop("images"), **call)


def _good_model(wb: WandbLogger, root: Path, _: int) -> Any:
    return wb.log_model(root / "good.pt", aliases=["ok"])


def _make_checkpoints(root: Path) -> None:
    """A good checkpoint file, a directory holding a broken link, and one holding a link to its own top."""
    (root / "good.pt").write_bytes(b"weights")
    (root / "broken").mkdir()
    (root / "broken" / "w.pt").write_bytes(b"w")
    (root / "broken" / "gone").symlink_to(root / "nowhere")
    (root / "loop" / "sub").mkdir(parents=True)
    (root / "loop" / "sub" / "up").symlink_to(root / "loop")


CASES = [
    Case("metrics-string-value", lambda wb, r, s: _metrics(wb, r, s, metrics={"loss": "oops"}), _metrics,
         MetricValueError, ("'loss'", "str")),
    Case("metrics-huge-int", lambda wb, r, s: _metrics(wb, r, s, metrics={"loss": 10**400}), _metrics,
         MetricValueError, ("'loss'", "OverflowError")),
    Case("metrics-int-key", lambda wb, r, s: _metrics(wb, r, s, metrics={"loss": 1.0, 1: 2.0}), _metrics,
         MetricValueError, ("metric key 1",)),
    Case("metrics-none-key", lambda wb, r, s: _metrics(wb, r, s, metrics={"loss": 1.0, None: 2.0}), _metrics,
         MetricValueError, ("metric key None",)),
    Case("metrics-vector", lambda wb, r, s: _metrics(wb, r, s, metrics={"loss": torch.ones(3)}), _metrics,
         MetricValueError, ("'loss'", "(3,)")),
    Case("metrics-not-a-mapping", lambda wb, r, s: _metrics(wb, r, s, metrics=[("loss", 1.0)]), _metrics,
         MetricValueError, ("must be a mapping",)),
    Case("metrics-step-numeric-string", lambda wb, r, s: _metrics(wb, r, s, step=str(s)), _metrics,
         MetricValueError, ("step='", "(str)")),
    Case("metrics-step-word", lambda wb, r, s: _metrics(wb, r, s, step="seven"), _metrics,
         MetricValueError, ("step='seven'",)),
    Case("metrics-step-negative", lambda wb, r, s: _metrics(wb, r, s, step=-5), _metrics,
         MetricValueError, ("step=-5",)),
    Case("metrics-step-float", lambda wb, r, s: _metrics(wb, r, s, step=float(s)), _metrics,
         MetricValueError, ("(float)",)),
    Case("metrics-reduce-op", lambda wb, r, s: _metrics(wb, r, s, reduce="avg"), _metrics,
         MetricValueError, ("'avg'",)),
    Case("metrics-prefix", lambda wb, r, s: _metrics(wb, r, s, prefix=5), _metrics,
         MetricValueError, ("prefix=5",)),
    Case("images-five-channels", lambda wb, r, s: _images(wb, r, s, images=[np.zeros((4, 4, 5), np.uint8)]),
         _images, ImageInputError, ("image 0",)),
    Case("images-fewer-captions", lambda wb, r, s: _images(wb, r, s, images=[IMAGE, IMAGE], captions=["a"]),
         _images, ImageInputError, ("1 captions for 2 images",)),
    Case("images-not-an-image", lambda wb, r, s: _images(wb, r, s, images="sample.png"), _images,
         ImageInputError, ("unsupported type",)),
    Case("images-step", lambda wb, r, s: _images(wb, r, s, step="x"), _images, ImageInputError, ("step='x'",)),
    Case("images-value-range", lambda wb, r, s: _images(wb, r, s, images=[IMAGE.astype(np.float32)],
                                                        value_range=(1.0, 0.0)),
         _images, ImageInputError, ("value_range",)),
    Case("model-broken-link", lambda wb, r, s: wb.log_model(r / "broken"), _good_model, CheckpointError,
         ("gone' is a broken symbolic link",), PRIMARY_ONLY, collective=False, checked_on=PRIMARY_ONLY),
    Case("model-link-loop", lambda wb, r, s: wb.log_model(r / "loop"), _good_model, CheckpointError,
         ("up' is a symbolic link loop",), PRIMARY_ONLY, collective=False, checked_on=PRIMARY_ONLY),
    Case("model-missing", lambda wb, r, s: wb.log_model(r / "missing.pt"), _good_model, CheckpointError,
         ("missing.pt' does not exist",), PRIMARY_ONLY, collective=False, checked_on=PRIMARY_ONLY),
    Case("model-aliases-string", lambda wb, r, s: wb.log_model(r / "good.pt", aliases="latest"), _good_model,
         CheckpointError, ("aliases='latest'",), collective=False),
    Case("model-metadata-object", lambda wb, r, s: wb.log_model(r / "good.pt", metadata={"x": object()}),
         _good_model, CheckpointError, ("'x' is a builtins.object",), collective=False),
    Case("config-object-value", lambda wb, r, s: wb.log_config({"x": object()}), lambda wb, r, s: wb.log_config(
        {"x": 1}), RunConfigError, ("'x' is a builtins.object",), collective=False),
    Case("config-int-key", lambda wb, r, s: wb.log_config({1: "a"}), lambda wb, r, s: wb.log_config({"one": "a"}),
         RunConfigError, ("key 1",), collective=False),
    Case("config-not-a-mapping", lambda wb, r, s: wb.log_config("lr=1"), lambda wb, r, s: wb.log_config({"lr": 1}),
         RunConfigError, ("takes a mapping",), collective=False),
    Case("main-process-metrics", lambda wb, r, s: wb.main_process.log_metrics({"m": "x"}, step=s),
         lambda wb, r, s: wb.main_process.log_metrics({"m": 1.0}, step=s), MetricValueError, ("'m'",),
         collective=False),
    Case("main-process-huge-int", lambda wb, r, s: wb.main_process.log_metrics({"m": 10**400}, step=s),
         lambda wb, r, s: wb.main_process.log_metrics({"m": 1.0}, step=s), MetricValueError, ("'m'", "OverflowError"),
         collective=False),
    Case("main-process-table-row", lambda wb, r, s: wb.main_process.log_table("t", ["a", "b"], [[1]], step=s),
         lambda wb, r, s: wb.main_process.log_table("t", ["a", "b"], [[1, 2]], step=s), LoggingInputError,
         ("row 0 must be a sequence of 2 cells",), collective=False),
]
FIRST_STEP = 100


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _job(root: Path, variant: str) -> Callable[[int], dict[str, Any]]:
    def body(rank: int) -> dict[str, Any]:
        log = logging.getLogger(f"bad-inputs.{variant}.rank{rank}")
        records = _Records()
        log.addHandler(records)
        outcomes: dict[str, Any] = {}
        config = WandbConfig(project="bad-inputs", mode="offline", dir=str(root), log_system_metrics=False,
                             collective_timeout=60.0)
        with WandbLogger(config, logger=log) as wb:
            for index, case in enumerate(CASES):
                step = FIRST_STEP + index
                makes_bad = variant == "all" or rank in case.bad_ranks
                try:
                    value = (case.bad if makes_bad else case.good)(wb, root, step)
                    outcomes[case.id] = {"bad": makes_bad, "raised": None, "value": repr(value)}
                except Exception as exc:  # noqa: BLE001 - the table checks the type
                    outcomes[case.id] = {"bad": makes_bad, "raised": type(exc).__name__, "message": str(exc)}
                wb.log_metrics({"good": float(rank + 1)}, step=step)  # the next good call, on every rank
            final = wb.log_model(root / "good.pt", aliases=["after-the-table"])
            wb.log_config({"after_the_table": True})
            run_dir = wb.run_dir
        return {"outcomes": outcomes, "errors": records.messages, "final_upload": final, "run_dir": run_dir}

    return body


@pytest.fixture(scope="module", params=["one", "all"])
def job(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp(f"bad-{request.param}")
    _make_checkpoints(root)
    ranks = values_or_raise(run_ranks(_job(root, request.param), 2, timeout=360))
    return {"variant": request.param, "ranks": ranks, "run": read_run(ranks[0]["run_dir"])}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_a_bad_call_raises_where_it_was_made_and_the_next_call_logs_with_ranks_in_step(
        job: dict[str, Any], case: Case) -> None:
    for rank, result in enumerate(job["ranks"]):
        outcome = result["outcomes"][case.id]
        if outcome["bad"] and (case.checked_on is None or rank in case.checked_on):
            assert outcome["raised"] == case.error.__name__, (rank, outcome)
            for word in case.words:
                assert word in outcome["message"], (rank, word, outcome["message"])
            if case.collective:  # the error says which call and rank, and that the call is lost on every rank
                assert f"on rank {rank}" in outcome["message"] and "nothing of this call was logged" in outcome[
                    "message"]
        else:
            assert outcome["raised"] is None, (rank, outcome)
    run = job["run"]
    step = FIRST_STEP + CASES.index(case)
    [row] = [r for r in run.rows_with("metrics/good") if r["trainer/step"] == step]
    assert row["metrics/good"] == 1.5  # reduced over both ranks: in step, and the run still takes rows


def test_nothing_of_a_bad_collective_call_reaches_the_run(job: dict[str, Any]) -> None:
    """A bad value on one rank fails the call on every rank: no half-reduced row, no image of the good rank."""
    run = job["run"]
    assert run.rows_with("metrics/loss") == [] and run.rows_with("sample/images") == []
    assert [r["trainer/step"] for r in run.rows_with("metrics/good")] == [FIRST_STEP + i for i in range(len(CASES))]


def test_the_run_outlives_every_bad_call(job: dict[str, Any]) -> None:
    run = job["run"]
    assert job["ranks"][0]["final_upload"] is True
    assert any("after-the-table" in a.aliases for a in run.artifacts)
    assert run.config.get("after_the_table") is True
    assert run.exit_code == 0


def test_a_peer_s_bad_input_is_one_logged_error_per_kind_on_the_good_rank(job: dict[str, Any]) -> None:
    """In the one-rank variant rank 0 made good calls: it raised nothing, and its log holds one error per kind of
    fault (bad metrics, bad images of rank 1), each naming rank 1 and the fix. Where every rank made the bad call,
    each raised its own error and logged none: the others' view of it adds nothing."""
    if job["variant"] == "all":
        assert [r["errors"] for r in job["ranks"]] == [[], []]
        return
    assert job["ranks"][1]["errors"] == []
    errors = job["ranks"][0]["errors"]
    assert len(errors) == 2, errors
    metrics, images = errors
    assert metrics.startswith("MetricValueError: log_metrics at step 100: ranks [1] passed invalid metric values")
    assert images.startswith("ImageInputError: log_images at step 112: ranks [1] passed invalid images")
    assert all("Fix: " in e and "on_logging_fault='raise'" in e for e in errors)
