"""An online run whose W&B server cannot be reached: how long until every rank logs offline, and until the process
exits once ``finish()`` returned. Ours beside the plain-wandb pattern most scripts use.

Servers (real local sockets, from sdxl_dist_log.testing.servers, as the tests use them):
- ``closed``: a port nothing listens on (connection refused);
- ``silent``: a listener that accepts every connection and never answers (a proxy or firewall that swallows it);
- ``bad-key``: a malformed API key (the silent listener behind it).

Patterns, each a script of its own run as a fresh process with a fake key and ``WANDB_BASE_URL`` at the server, and
W&B's error reporting left on (as on a user's machine):
- ``ours``: ``WandbLogger(WandbConfig(mode="online", init_timeout=T))``, log one row, ``finish()``;
- ``plain wandb``: ``wandb.login()``, then ``wandb.init(mode="online", settings=wandb.Settings(init_timeout=T))``,
  on any error ``wandb.init(mode="offline")``; log one row, ``finish()``;
- ``ours, 2 ranks``: two ``run_ranks`` processes (gloo); each reports its own constructor time (the exit of a
  ``run_ranks`` child is not an ordinary one, so no exit time there).

Columns: seconds from the first line after ``import torch`` (a training script has torch long before it builds a
logger; wandb's import is counted) to a run that takes rows (the constructor's return, or the offline init's), the
bound ``T + 2``, and seconds from ``finish()``'s return to the process's exit (measured by the parent).

Run:      python benchmarks/bench_unreachable.py
Options:  --init-timeout 5  --servers closed silent bad-key
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sdxl_dist_log.testing.servers import SilentServer, closed_port  # noqa: E402
from sdxl_dist_log.testing.wandb_env import wandb_environment  # noqa: E402

FAKE_KEY = "f" * 40

OURS = textwrap.dedent("""
    import json, sys, time
    import torch  # a training script has it imported long before it builds a logger
    started = time.time()
    from sdxl_dist_log import WandbConfig, WandbLogger
    wb = WandbLogger(WandbConfig(project="bench", mode="online", dir="out", init_timeout=float(sys.argv[1]),
                                 log_system_metrics=False))
    ready = time.time()
    wb.log_metrics({"loss": 1.0}, step=0)
    wb.finish()
    print(json.dumps({"ready": ready - started, "mode": wb.identity.mode, "finished_at": time.time()}), flush=True)
""")

PLAIN = textwrap.dedent("""
    import json, sys, time
    import torch
    started = time.time()
    import wandb
    mode = "online"
    try:
        wandb.login()
        run = wandb.init(project="bench", mode="online", dir="out",
                         settings=wandb.Settings(init_timeout=float(sys.argv[1])))
    except Exception:
        mode = "offline"
        run = wandb.init(project="bench", mode="offline", dir="out")
    ready = time.time()
    run.log({"loss": 1.0})
    run.finish()
    print(json.dumps({"ready": ready - started, "mode": mode, "finished_at": time.time()}), flush=True)
""")

RANKS = textwrap.dedent("""
    import json, sys, time
    import torch.distributed
    from sdxl_dist_log.launch.local import run_ranks, values_or_raise

    def body(rank):
        started = time.time()
        from sdxl_dist_log import WandbConfig, WandbLogger
        wb = WandbLogger(WandbConfig(project="bench", mode="online", dir="out", init_timeout=float(sys.argv[1]),
                                     log_system_metrics=False))
        ready = time.time() - started
        wb.log_metrics({"loss": 1.0}, step=0)
        wb.finish()
        return {"ready": ready, "mode": wb.identity.mode}

    print(json.dumps(values_or_raise(run_ranks(body, 2, timeout=300, env=dict(__import__("os").environ)))))
""")


def run_script(script: str, init_timeout: float, port: int, key: str) -> tuple[dict | list, float]:
    with tempfile.TemporaryDirectory() as work:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env.update(wandb_environment(work))
        env.pop("WANDB_ERROR_REPORTING")  # as on a user's machine (the logger turns W&B's telemetry off itself)
        env.update(WANDB_BASE_URL=f"http://127.0.0.1:{port}", WANDB_API_KEY=key, PYTHONPATH=ROOT)
        with open(os.path.join(work, "script.py"), "w") as f:
            f.write(script)
        proc = subprocess.run([sys.executable, "script.py", str(init_timeout)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        exited = time.time()
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        return json.loads(proc.stdout.strip().splitlines()[-1]), exited


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init-timeout", type=float, default=5.0)
    parser.add_argument("--servers", nargs="+", default=["closed", "silent", "bad-key"])
    opts = parser.parse_args()
    bound = opts.init_timeout + 2.0
    print(f"init_timeout={opts.init_timeout:g} s; bound for 'offline after' = {bound:g} s; wandb "
          f"{__import__('wandb').__version__}; {os.cpu_count()} CPUs")
    print(f"{'server':<8} {'pattern':<14} {'mode':<8} {'offline after (s)':>18} {'within bound':>12} "
          f"{'exit after finish (s)':>22}")
    for server_name in opts.servers:
        server = SilentServer()
        port = closed_port() if server_name == "closed" else server.port
        key = "not-a-key" if server_name == "bad-key" else FAKE_KEY
        try:
            for name, script in (("ours", OURS), ("plain wandb", PLAIN)):
                result, exited = run_script(script, opts.init_timeout, port, key)
                assert isinstance(result, dict)
                print(f"{server_name:<8} {name:<14} {result['mode']:<8} {result['ready']:>18.1f} "
                      f"{'yes' if result['ready'] <= bound else 'NO':>12} {exited - result['finished_at']:>22.1f}")
            ranks, _ = run_script(RANKS, opts.init_timeout, port, key)
            assert isinstance(ranks, list)
            for rank, result in enumerate(ranks):
                print(f"{server_name:<8} {f'ours, rank {rank}':<14} {result['mode']:<8} {result['ready']:>18.1f} "
                      f"{'yes' if result['ready'] <= bound else 'NO':>12} {'-':>22}")
        finally:
            server.close()


if __name__ == "__main__":
    main()
