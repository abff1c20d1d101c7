"""The backends: WandbBackend (the only wandb importer) and NullBackend (every other rank's, which does nothing).

- WandbSession against a stand-in run: the step metric, and which failures mean the service is gone.
- start_backend: an online run that cannot start falls back (no key: at once; no server: after ``init_timeout``),
  on every rank alike.
- A W&B service killed mid-run is replaced and no row is lost; a bad input costs that call only (the writer's
  logic in detail is in test_writer.py).
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
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import psutil
import pytest

from sdxl_dist_log.backends.base import NullBackend
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


# -- WandbSession against a stand-in run --------------------------------------------------------------------------
class _Run:
    """Records what WandbSession asks of a W&B run at its start."""

    id = "stand-in"

    def __init__(self, root: Path) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.settings = SimpleNamespace(root_dir=str(root), sync_file=str(root / "run-stand-in.wandb"))

    def define_metric(self, name: str, **kwargs: Any) -> None:
        self.calls.append(("define_metric", (name, kwargs)))


def test_every_key_is_plotted_against_the_step_metric(tmp_path: Path) -> None:
    """Each part of the run defines the step metric and plots every key against it, so no row is dropped as out of
    order; the run file is known by its absolute path (the script may change directory later)."""
    from sdxl_dist_log.backends.wandb_backend import WandbSession

    run = _Run(tmp_path)
    session = WandbSession(run, step_metric="trainer/step")
    assert run.calls == [("define_metric", ("trainer/step", {})),
                         ("define_metric", ("*", {"step_metric": "trainer/step", "step_sync": True}))]
    assert session.run_file() == str(tmp_path / "run-stand-in.wandb") and session.root_dir == str(tmp_path)


@pytest.mark.parametrize(("exc", "dead"), [(ConnectionResetError("Connection lost"), True),
                                          (BrokenPipeError(), True), (TypeError("not JSON serializable"), False),
                                          (FileNotFoundError("broken symlink"), False)],
                         ids=["reset", "pipe", "bad-value", "bad-file"])
def test_a_broken_connection_means_the_service_is_gone_a_bad_value_does_not(tmp_path: Path, exc: BaseException,
                                                                          dead: bool) -> None:
    from sdxl_dist_log.backends.wandb_backend import WandbSession

    session = WandbSession(_Run(tmp_path), step_metric="s")
    assert (session.failure(exc) is not None) is dead


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


# -- a dead W&B service, bad inputs -------------------------------------------------------------------------------
def _services() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "wandb-core" in p.name()]


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["crashed", "terminated"])
def test_a_dead_wandb_service_is_replaced_and_no_row_is_lost(tmp_path: Path, how: int) -> None:
    """wandb-core dies mid-run (a crash; SLURM's SIGTERM reaching it): the logger says so once, brings up a new
    service for the same run id, and the run's parts together hold every row exactly once; the checkpoint and
    config logged afterwards land, and the last part's summary counts the restart."""
    def body(rank: int) -> dict[str, Any]:
        from sdxl_dist_log import WandbConfig, WandbLogger

        records = logging.handlers.BufferingHandler(capacity=10_000)
        logging.getLogger("sdxl_dist_log").addHandler(records)
        checkpoint = tmp_path / "model.pt"
        checkpoint.write_bytes(b"w" * 16)
        wb = WandbLogger(WandbConfig(project="t", mode="offline", dir=str(tmp_path / "runs"),
                                     log_system_metrics=False))
        for step in range(5):
            wb.log_metrics({"loss": float(step)}, step=step)
        services = _services()
        for service in services:
            service.send_signal(how)
        psutil.wait_procs(services, timeout=30)
        for step in range(5, 10):
            logged = wb.log_metrics({"loss": float(step)}, step=step)  # must not raise
        uploaded = wb.log_model(checkpoint)
        wb.log_config({"lr": 0.1})
        wb.finish()
        messages = [(r.levelname, r.getMessage()) for r in records.buffer if r.levelno >= logging.WARNING]
        return {"services": len(services), "logged": logged, "uploaded": uploaded, "messages": messages,
                "after": len(_services())}

    [value] = values_or_raise(run_ranks(body, 1, backend=None, timeout=240))
    assert value["services"] == 1 and value["logged"] == {"metrics/loss": 9.0} and value["uploaded"] is True
    assert [level for level, _ in value["messages"]] == ["WARNING", "WARNING"], value["messages"]
    assert "is gone" in value["messages"][0][1] and "continues in a new service" in value["messages"][1][1]
    parts = [read_run(d) for d in find_run_dirs(tmp_path / "runs")]
    assert len(parts) == 2 and {p.run_id for p in parts} == {parts[0].run_id}
    steps = [row["trainer/step"] for part in parts for row in part.rows_with("metrics/loss")]
    assert sorted(steps) == list(range(10))
    last = parts[-1]
    assert last.exit_code == 0 and last.config.get("lr") == 0.1 and [a.name for a in last.artifacts] == ["ckpt"]
    assert last.summary["sdxl_dist_log/service_restarts"] == 1


def _bad_inputs() -> dict[str, Any]:
    from sdxl_dist_log.backends.wandb_backend import start_backend
    from sdxl_dist_log.config import WandbConfig
    from sdxl_dist_log.errors import LoggingInputError
    from sdxl_dist_log.identity import propose_identity
    from sdxl_dist_log.ranks import Launch

    broken, loop = Path("broken"), Path("loop")
    broken.mkdir()
    (broken / "weights.pt").write_bytes(b"w")
    (broken / "gone").symlink_to("/nonexistent/file")
    loop.mkdir()
    (loop / "self").symlink_to("self")
    config = WandbConfig(mode="offline", dir="out")
    proposed, resume = propose_identity(config, Launch.from_env({}))
    backend, identity = start_backend(config, proposed, {"lr": 0.1}, resume)
    errors: dict[str, str] = {}
    calls = {"object value": lambda: backend.update_config({"x": object()}),
             "int key": lambda: backend.update_config({1: "a"}),
             "broken symlink": lambda: backend.log_artifact(str(broken), name="c", type="model", aliases=[],
                                                            metadata={}),
             "symlink loop": lambda: backend.log_artifact(str(loop), name="c", type="model", aliases=[],
                                                          metadata={})}
    for step, (name, call) in enumerate(calls.items()):
        try:
            call()
        except LoggingInputError as exc:
            errors[name] = str(exc)
        backend.log_row({"good": float(step)}, step=step)  # the next call works
    backend.update_config({"batch": 8})
    backend.finish(0, 60)
    return {"errors": errors, "run_dir": identity.run_dir}


def test_a_bad_input_costs_that_call_only(in_child: Callable[..., Any], tmp_path: Path) -> None:
    """A config value W&B cannot serialize, a key that is not a string, a checkpoint directory with a broken symlink
    or a symlink loop: each raises LoggingInputError naming the call and the cause, and the run goes on (every row
    after it and the next config update land)."""
    done = in_child(_bad_inputs, tmp_path)
    errors = done["errors"]
    assert sorted(errors) == ["broken symlink", "int key", "object value", "symlink loop"], errors
    assert "log_config(['x'])" in errors["object value"] and "not JSON serializable" in errors["object value"]
    assert "log_config(['1'])" in errors["int key"]
    assert "/nonexistent/file" in errors["broken symlink"] or "gone" in errors["broken symlink"]
    assert "symbolic links" in errors["symlink loop"]
    run = read_run(done["run_dir"])
    assert [row["good"] for row in run.rows_with("good")] == [0.0, 1.0, 2.0, 3.0]
    assert run.config["batch"] == 8 and "x" not in run.config and run.exit_code == 0


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
