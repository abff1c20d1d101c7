"""The backends: WandbBackend (the only wandb importer) and NullBackend (every other rank's, which does nothing).

- WandbBackend against a stand-in run: rows carry the step, pending values, a failing run reported once.
- start_backend: an online run that cannot start falls back (no key: at once; no server: after ``init_timeout``),
  on every rank alike; a W&B service killed mid-run never reaches training.
- wandb is imported by this module only: importing the package or building configs does not import it.

Real W&B runs are made in forked children (``in_child``, ``run_ranks``); the pytest process never starts one.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from sdxl_dist_log.backends.base import NullBackend
from sdxl_dist_log.backends.wandb_backend import WandbBackend
from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.offline import find_run_dirs, read_run

pytestmark = pytest.mark.timeout(300)

FAKE_KEY = "f" * 40
NO_SERVER = "http://127.0.0.1:9"  # nothing listens on the discard port
SUBPROCESS_TIMEOUT_S = 90


# -- NullBackend -------------------------------------------------------------------------------------------------------
def test_null_backend_does_nothing(tmp_path: Path) -> None:
    """Every call returns at once with nothing (False for an upload), keeps no state and writes no file."""
    backend = NullBackend()
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"w")
    before = sorted(tmp_path.rglob("*"))
    assert backend.log_row({"a": 1.0}, step=0, commit=False) is None
    assert backend.log_side_row({"system/x": 1.0}, step=0) is None
    assert backend.log_images("k", [np.zeros((2, 2, 3), np.uint8)], ["c"], step=0) is None
    assert backend.log_artifact(str(checkpoint), name="ckpt", type="model", aliases=["best"], metadata={}) is False
    assert backend.update_config({"a": 1}) is None
    assert backend.mark_preempting() is None
    assert backend.finish(exit_code=0, timeout=1.0) is None
    assert vars(backend) == {}
    assert sorted(tmp_path.rglob("*")) == before


# -- WandbBackend against a stand-in run -------------------------------------------------------------------------------
class _Run:
    """Records what WandbBackend asks of a W&B run; ``fail`` makes every call raise, ``block`` holds ``finish``."""

    id = "stand-in"

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.block = threading.Event()
        self.block.set()
        self.calls: list[tuple[str, Any]] = []
        self.config = self

    def _record(self, name: str, value: Any) -> None:
        if self.fail:
            raise RuntimeError("wandb-core is gone")
        self.calls.append((name, value))

    def define_metric(self, name: str, **kwargs: Any) -> None:
        self._record("define_metric", (name, kwargs))

    def log(self, row: dict[str, Any]) -> None:
        self._record("log", dict(row))

    def update(self, values: dict[str, Any], allow_val_change: bool = False) -> None:
        self._record("config", dict(values))

    def mark_preempting(self) -> None:
        self._record("mark_preempting", None)

    def finish(self, exit_code: int = 0) -> None:
        self.block.wait(30)
        self._record("finish", exit_code)


def _backend(run: _Run) -> WandbBackend:
    return WandbBackend(run, step_metric="trainer/step", logger=logging.getLogger("test_wandb_backend"))


def test_every_key_is_plotted_against_the_step_metric() -> None:
    """The run defines the step metric and plots every key against it, so no row is dropped as out of order."""
    run = _Run()
    _backend(run)
    assert run.calls == [("define_metric", ("trainer/step", {})),
                         ("define_metric", ("*", {"step_metric": "trainer/step", "step_sync": True}))]


def test_rows_carry_their_step_and_commit_false_waits_for_the_next_row() -> None:
    """Each committed row carries its step; ``commit=False`` values merge into the next committed row, while a side
    row (system figures) in between leaves them pending."""
    run = _Run()
    backend = _backend(run)
    backend.log_row({"a": 1.0}, step=3)
    backend.log_row({"b": 2.0}, step=4, commit=False)
    backend.log_side_row({"system/x": 9.0}, step=4)
    backend.log_row({"c": 3.0}, step=4)
    assert [value for name, value in run.calls if name == "log"] == [
        {"a": 1.0, "trainer/step": 3}, {"system/x": 9.0, "trainer/step": 4},
        {"b": 2.0, "c": 3.0, "trainer/step": 4}]


def test_finish_writes_values_still_pending() -> None:
    """Values of a last ``commit=False`` call are written before the run closes."""
    run = _Run()
    backend = _backend(run)
    backend.log_row({"last": 1.0}, step=9, commit=False)
    backend.finish(exit_code=0, timeout=30)
    assert run.calls[-2:] == [("log", {"last": 1.0, "trainer/step": 9}), ("finish", 0)]


def test_a_failing_run_is_reported_once_and_then_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    """The first failing call is logged as one error and kept in ``failure``; later calls do nothing, never raise."""
    run = _Run()
    backend = _backend(run)
    run.fail = True
    backend.log_row({"a": 1.0}, step=0)
    backend.update_config({"lr": 0.1})
    backend.mark_preempting()
    backend.finish(exit_code=1, timeout=30)
    assert isinstance(backend.failure, RuntimeError)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "during log" in errors[0] and "training goes on" in errors[0], errors


def test_finish_that_does_not_return_is_left_in_the_background(caplog: pytest.LogCaptureFixture) -> None:
    """A run whose close hangs does not hold the caller past ``timeout``: a warning says it is left to close."""
    run = _Run()
    backend = _backend(run)
    run.block.clear()
    try:
        backend.finish(exit_code=0, timeout=0.2)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("did not finish within" in m for m in warnings), warnings
        assert ("finish", 0) not in run.calls
    finally:
        run.block.set()


def test_settings_flush_the_run_file_every_flush_interval(in_child: Callable[..., Any], tmp_path: Path) -> None:
    """The run file is flushed every ``flush_interval`` (what a killed job loses), and W&B's console capture and
    its own system sampler are off."""
    def settings() -> dict[str, Any]:
        from sdxl_dist_log.backends.wandb_backend import _settings
        from sdxl_dist_log.config import WandbConfig

        made = _settings(WandbConfig(flush_interval=0.25, init_timeout=7.0), "offline")
        return {"flush": made.x_transaction_log_flush_interval, "init_timeout": made.init_timeout,
                "mode": made.mode, "stats": made.x_disable_stats, "console": made.console}

    assert in_child(settings, tmp_path) == {"flush": 0.25, "init_timeout": 7.0, "mode": "offline", "stats": True,
                                           "console": "off"}


# -- start_backend: fallback -------------------------------------------------------------------------------------------
def test_no_key_with_fallback_disabled_starts_nothing(in_child: Callable[..., Any], tmp_path: Path) -> None:
    """Online without an API key and ``fallback_mode="disabled"``: a NullBackend, mode "disabled" with the no-key
    reason, and no run directory."""
    def start() -> dict[str, Any]:
        from sdxl_dist_log.backends.wandb_backend import start_backend
        from sdxl_dist_log.config import WandbConfig
        from sdxl_dist_log.identity import propose_identity
        from sdxl_dist_log.ranks import Launch

        config = WandbConfig(mode="online", fallback_mode="disabled", dir="out")
        proposed, resume = propose_identity(config, Launch.from_env({}))
        backend, identity = start_backend(config, proposed, {}, resume)
        return {"backend": type(backend).__name__, "identity": identity.to_json(), "runs": find_run_dirs("out")}

    started = in_child(start, tmp_path)
    assert started["backend"] == "NullBackend" and started["runs"] == []
    assert started["identity"]["mode"] == "disabled"
    assert started["identity"]["fallback_reason"].startswith("no W&B API key")


def _unreachable_server() -> dict[str, Any]:
    from sdxl_dist_log import LogConfig, UnifiedLogger, WandbConfig, WandbLogger

    os.environ.update(WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL=NO_SERVER)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    records = logging.handlers.BufferingHandler(capacity=10_000)
    logging.getLogger("sdxl_dist_log").addHandler(records)
    out: dict[str, Any] = {}
    with UnifiedLogger(LogConfig(name="online", log_dir="logs", console=False)) as log:
        log.logger.addHandler(records)
        with WandbLogger(WandbConfig(project="online", mode="online", init_timeout=3, dir="out",
                                     log_system_metrics=False), logger=log) as wb:
            out["logged"] = wb.log_metrics({"loss": 2.0}, step=1)
            out["identity"] = wb.identity.to_json()
            out["run_dir"] = os.path.abspath(wb.run_dir) if wb.run_dir else None
    out["run_dirs"] = sorted(os.listdir("out/wandb"))
    out["records"] = [(r.name, r.levelname, r.getMessage()) for r in records.buffer]
    return out


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory, in_child: Callable[..., Any]) -> dict[str, Any]:
    return in_child(_unreachable_server, tmp_path_factory.mktemp("online"))


@pytest.mark.slow
def test_unreachable_server_falls_back_and_training_goes_on(unreachable: dict[str, Any]) -> None:
    """With a key but no server, init gives up (a hang would end the child at its timeout) and the run goes offline;
    the next call logs and returns its values."""
    assert unreachable["identity"]["mode"] == "offline", unreachable["identity"]
    assert "online init failed" in unreachable["identity"]["fallback_reason"]
    assert unreachable["logged"] == {"metrics/loss": 2.0}


@pytest.mark.slow
def test_unreachable_server_falls_back_to_offline_with_one_warning(unreachable: dict[str, Any]) -> None:
    """The offline run keeps the run id and is the only directory with it (the failed attempt's is removed, and a
    fresh wandb-core accepts the id, which the one that saw the failed attempt refuses as in use); one warning says
    why, and the row lands."""
    identity = unreachable["identity"]
    assert [d for d in unreachable["run_dirs"] if "-" + identity["run_id"] in d] == [Path(unreachable["run_dir"]).name]
    warnings = [m for _, level, m in unreachable["records"] if level == "WARNING"]
    assert len(warnings) == 1 and "online init failed" in warnings[0], warnings
    [row] = read_run(unreachable["run_dir"]).rows_with("metrics/loss")
    assert row["trainer/step"] == 1


@pytest.mark.slow
def test_online_init_without_network_falls_back_on_every_rank(tmp_path: Path, make_logger: Callable,
                                                              only_run: Callable) -> None:
    """The primary's fallback reaches every rank (mode and reason), and the ranks then reduce into the offline run."""
    env = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": NO_SERVER}

    def body(rank: int) -> dict[str, Any]:
        with make_logger(str(tmp_path), mode="online", init_timeout=3.0) as wb:
            wb.log_metrics({"x": float(rank)}, step=0)
            return {"mode": wb.identity.mode, "reason": wb.identity.fallback_reason}

    for value in values_or_raise(run_ranks(body, 2, env=env, timeout=240)):
        assert value["mode"] == "offline" and "online init failed" in value["reason"]
    assert only_run(tmp_path).rows_with("metrics/x")[0]["metrics/x"] == 0.5


# -- a dead W&B service ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_dead_wandb_service_never_crashes_training(tmp_path: Path) -> None:
    """SLURM signals every process of a job step on requeue; wandb-core dies while training goes on: later calls
    return (metrics still reduced, no upload), and one error is logged."""
    def body(rank: int) -> dict[str, Any]:
        from sdxl_dist_log import WandbConfig, WandbLogger

        records = logging.handlers.BufferingHandler(capacity=10_000)
        logging.getLogger("sdxl_dist_log").addHandler(records)
        checkpoint = tmp_path / "model.pt"
        checkpoint.write_bytes(b"w" * 16)
        wb = WandbLogger(WandbConfig(project="t", mode="offline", dir=str(tmp_path / "runs"),
                                     log_system_metrics=False))
        wb.log_metrics({"loss": 1.0}, step=0)
        services = [p for p in psutil.Process().children(recursive=True) if "wandb" in " ".join(p.cmdline())]
        for service in services:
            service.send_signal(signal.SIGKILL)
        psutil.wait_procs(services, timeout=30)
        logged = wb.log_metrics({"loss": 2.0}, step=1)  # must not raise
        uploaded = wb.log_model(checkpoint)
        wb.log_config({"lr": 0.1})
        wb.finish()
        errors = [r.getMessage() for r in records.buffer if r.levelno >= logging.ERROR]
        return {"services": len(services), "logged": logged, "uploaded": uploaded, "errors": errors}

    [value] = values_or_raise(run_ranks(body, 1, backend=None, timeout=240))
    assert value["services"] >= 1
    assert value["logged"] == {"metrics/loss": 2.0} and value["uploaded"] is False
    assert len(value["errors"]) == 1 and "training goes on" in value["errors"][0]


# -- the import boundary -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [
    "import sdxl_dist_log",
    "from sdxl_dist_log import WandbLogger, WandbConfig, UnifiedLogger, LogConfig",
    "from sdxl_dist_log import WandbConfig, LogConfig; WandbConfig(mode='offline', tags=['a']); LogConfig(); "
    "WandbConfig.from_dict({'project': 'p', 'metric_reduce': {'tok/*': 'sum'}}); LogConfig.from_dict({})",
], ids=["import-package", "import-names", "construct-configs"])
def test_wandb_is_not_imported_by_import_or_configs(code: str) -> None:
    """Importing the package, its names, or building configs leaves wandb unimported (a fresh interpreter)."""
    check = f"{code}\nimport sys\nassert 'wandb' not in sys.modules, sorted(m for m in sys.modules if 'wandb' in m)"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
