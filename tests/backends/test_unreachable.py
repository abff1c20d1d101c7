"""An online run whose W&B server cannot be reached: real local sockets, real wandb, real processes.

Three servers a cluster job meets: a closed port (connection refused), a listener that accepts and never answers (a
proxy or firewall that swallows the request), and a malformed API key. In each, every rank must log offline after
the one bound wandb is given (``init_timeout``), and the process must exit when the script ends. No test asserts
on time (docs/performance.md has the measured times, from benchmarks/bench_unreachable.py): they assert on the
mechanism, and the subprocess and ``run_ranks`` timeouts catch a hang.

- wandb is given what is left of ``init_timeout`` as its only wait (``_settings``), counted from the logger's
  construction;
- the credentials check sends nothing to the server (``wandb.login`` would ask it for the user name, outside the
  bound): the silent listener sees the run's own requests only, never a ``viewer`` query;
- nothing reaches the server after ``finish()`` returned: W&B's own telemetry, which would export to that server at
  exit and wait for it, is off in the Python process (wandb-core may still report while the failed attempt's
  service runs; it is let go without waiting);
- the run falls back to offline on every rank, with the reason, keeping its run id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.backends.wandb_backend import MIN_ONLINE_ATTEMPT_S
from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.testing.servers import SilentServer, closed_port
from sdxl_dist_log.testing.wandb_env import wandb_environment

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

FAKE_KEY = "f" * 40
FINISHED = b"FINISHED-MARKER"
PROCESS_TIMEOUT_S = 120  # a hang's bound, not a measurement


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _child_env(tmp_path: Path, port: int, key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(wandb_environment(tmp_path))
    # as on a user's machine: error reporting left on, so W&B's telemetry would run if the logger did not stop it
    env.pop("WANDB_ERROR_REPORTING")
    env.update(WANDB_BASE_URL=f"http://127.0.0.1:{port}", WANDB_API_KEY=key, PYTHONPATH=str(Path.cwd()))
    return env


SCRIPT = textwrap.dedent("""
    import json, socket, sys
    from sdxl_dist_log import WandbConfig, WandbLogger

    port = int(sys.argv[1])
    config = WandbConfig(project="unreachable", mode="online", dir="out", init_timeout=2.0,
                         log_system_metrics=False, run_id="keepmyid")
    with WandbLogger(config) as wb:
        wb.log_metrics({"loss": 1.0}, step=0)
        identity = wb.identity
    with socket.create_connection(("127.0.0.1", port)) as marker:  # finish() has returned
        marker.sendall(b"FINISHED-MARKER")
    print(json.dumps({"mode": identity.mode, "reason": identity.fallback_reason, "run_id": identity.run_id,
                      "run_dir": identity.run_dir}))
""")


def _run_script(tmp_path: Path, port: int, key: str = FAKE_KEY, marker_port: int | None = None) -> dict[str, Any]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "script.py").write_text(SCRIPT)
    proc = subprocess.run([sys.executable, "script.py", str(marker_port or port)], cwd=work,
                          env=_child_env(tmp_path, port, key), capture_output=True, text=True,
                          timeout=PROCESS_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_wandb_is_given_what_is_left_of_init_timeout(in_child: Callable[..., Any], tmp_path: Path) -> None:
    """``init_timeout`` counts from the logger's construction: wandb's own bound is the time left to the deadline,
    never less than ``MIN_ONLINE_ATTEMPT_S``, and it is the one wait the online attempt has."""

    def attempt() -> list[float]:
        from sdxl_dist_log.backends import wandb_backend
        from sdxl_dist_log.identity import RunIdentity

        given: list[float] = []

        class Stop(BaseException):
            pass

        def record(*args: Any, init_timeout: float | None = None, **kwargs: Any) -> Any:
            given.append(wandb_backend._settings(WandbConfig(mode="online"), "online", init_timeout).init_timeout)
            raise Stop

        wandb_backend._missing_credentials = lambda wandb: None  # a key is there (no service started for it)
        wandb_backend._init = record
        config = WandbConfig(mode="online", init_timeout=30.0, dir="out")
        for deadline in (time.monotonic() + 20.0, time.monotonic() - 5.0):
            try:
                wandb_backend.start_backend(config, RunIdentity("id", "n", None, None), {}, None, deadline=deadline)
            except Stop:
                pass
        return given

    left, late = in_child(attempt, tmp_path)
    assert MIN_ONLINE_ATTEMPT_S < left < 20.0  # what was left: importing wandb came out of the 20 s
    assert late == MIN_ONLINE_ATTEMPT_S


def test_a_server_that_never_answers(tmp_path: Path, silent_server: SilentServer) -> None:
    result = _run_script(tmp_path, silent_server.port)
    assert result["mode"] == "offline" and result["run_id"] == "keepmyid"
    assert result["reason"].startswith("online init failed: CommError")
    requests = [data for data in silent_server.received if not data.startswith(FINISHED)]
    assert requests, "the online attempt never reached the server"
    paths = {data.split(b" ", 2)[1] for data in requests}
    # the run's upsert (retried until init_timeout), and wandb-core's own telemetry while it runs
    assert paths <= {b"/graphql", b"/sdk/otel/v1/metrics", b"/sdk/otel/v1/logs"}, paths
    assert not any(b"viewer" in data.lower() for data in requests)  # no user-name lookup outside the bound
    assert silent_server.received_after(FINISHED) == []  # no telemetry export at exit
    assert len(list((Path(result["run_dir"]).parent).glob("*-keepmyid"))) == 1  # the failed attempt's dir is gone


def test_a_closed_port(tmp_path: Path, silent_server: SilentServer) -> None:
    result = _run_script(tmp_path, closed_port(), marker_port=silent_server.port)
    assert result["mode"] == "offline" and result["run_id"] == "keepmyid"
    assert "connection refused" in result["reason"]
    assert [d for d in silent_server.received if not d.startswith(FINISHED)] == []
    assert silent_server.received_after(FINISHED) == []


def test_a_malformed_key_is_rejected_without_asking_the_server(tmp_path: Path, silent_server: SilentServer) -> None:
    result = _run_script(tmp_path, silent_server.port, key="not-a-key")
    assert result["mode"] == "offline"
    assert result["reason"].startswith("W&B credentials rejected")
    assert [d for d in silent_server.received if not d.startswith(FINISHED)] == []  # nothing was sent at all


def test_every_rank_logs_offline_behind_a_silent_server(tmp_path: Path, silent_server: SilentServer) -> None:
    """Two ranks: the primary's bounded attempt decides, and rank 1 learns the fallback (mode and reason) from it."""

    def body(rank: int) -> dict[str, Any]:
        from sdxl_dist_log import WandbConfig, WandbLogger

        config = WandbConfig(project="unreachable", mode="online", dir=str(tmp_path / "out"), init_timeout=2.0,
                             log_system_metrics=False)
        with WandbLogger(config) as wb:
            wb.log_metrics({"loss": float(rank)}, step=0)
            return {"mode": wb.identity.mode, "reason": wb.identity.fallback_reason}

    env = {k: v for k, v in _child_env(tmp_path, silent_server.port, FAKE_KEY).items() if k.startswith("WANDB_")}
    results = values_or_raise(run_ranks(body, 2, timeout=240, env=env))
    assert [r["mode"] for r in results] == ["offline", "offline"]
    assert results[0]["reason"] == results[1]["reason"] and "CommError" in results[0]["reason"]
