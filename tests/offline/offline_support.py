"""Helpers for the tests of ``sdxl_dist_log.offline``: a reference log writer and real offline runs made by wandb.

Real runs are made by the installed wandb in a subprocess (the pytest process never calls ``wandb.init``), with
every W&B directory under the given folder.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

from sdxl_dist_log.offline import BLOCK_SIZE, FILE_HEADER, ReadStatus, chunk_crc, iter_payloads
from sdxl_dist_log.testing.wandb_env import wandb_environment

RUN_TIMEOUT_S = 60


def encode_log(payloads: list[bytes]) -> bytes:
    """Write payloads the way wandb-core does: header in block 0, chunks never cross 32 KiB blocks."""
    out = bytearray(FILE_HEADER)
    for payload in payloads:
        rest, first = payload, True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\0" * left
                left = BLOCK_SIZE
            fragment, rest = rest[: left - 7], rest[left - 7 :]
            last = not rest
            kind = 1 if first and last else 2 if first else 4 if last else 3
            out += struct.pack("<IHB", chunk_crc(kind, fragment), len(fragment), kind) + fragment
            first = False
            if last:
                break
    return bytes(out)


def payloads_of(data: bytes) -> tuple[list[bytes], ReadStatus]:
    status = ReadStatus()
    return list(iter_payloads(io.BytesIO(data), status)), status


def subprocess_env(tmp: Path) -> dict[str, str]:
    """This environment without WANDB_*, then offline mode with every W&B directory under ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(wandb_environment(tmp), WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_DISABLE_GIT="true")
    return env


PRELUDE = """
import os, sys
from pathlib import Path
import numpy as np
import wandb
out = Path(sys.argv[1])
settings = wandb.Settings(x_transaction_log_flush_interval=0.5, x_disable_stats=True)
"""

FULL_RUN = """
run = wandb.init(project="proj", name="full", group="grp", job_type="train", tags=["a", "b"], notes="hello",
                 config={"lr": 0.001, "model": {"depth": 3, "attn": {"heads": 8}}, "names": ["x", "y"]},
                 dir=str(out), settings=settings)
for step in range(5):
    run.log({"metrics/loss": 1.0 / (step + 1), "nested": {"a": step}, "system/gpu0/util": 10.0 * step}, step=step)
img = np.zeros((8, 8, 3), dtype=np.uint8); img[..., 0] = 255
run.log({"sample/images": [wandb.Image(img, caption="red"), wandb.Image(img[..., ::-1].copy())]}, step=5)
(out / "weights.txt").write_text("w1")
a = wandb.Artifact("ckpt", type="model", metadata={"step": 1, "opt": {"name": "adam"}})
a.add_file(str(out / "weights.txt"))
run.log_artifact(a, aliases=["latest", "step_1"])
ckdir = out / "ckdir"; (ckdir / "inner").mkdir(parents=True)
(ckdir / "model.bin").write_bytes(b"x" * 10); (ckdir / "inner" / "opt.txt").write_text("o")
a = wandb.Artifact("ckpt", type="model", metadata={"step": 2})
a.add_dir(str(ckdir))
run.log_artifact(a, aliases=["latest", "step_2"])
b = wandb.Artifact("plain", type="dataset"); b.add_file(str(out / "weights.txt"))
run.log_artifact(b)
run.summary["best"] = 0.2
run.finish()
"""

KILLED_RUN = """
run = wandb.init(project="proj", name="killed", dir=str(out), settings=settings)
for step in range(5):
    run.log({"loss": float(step)}, step=step, commit=True)
print("logged", flush=True)
sys.stdin.read()  # until the test kills this process (or closes the pipe)
"""

LOGGER_RUN = """
from sdxl_dist_log import WandbConfig, WandbLogger
config = WandbConfig(project="proj", name="custom-step", mode="offline", dir=str(out), step_metric="global_step",
                     log_system_metrics=False, save_code=False, save_requirements=False,
                     config={"lr": 0.1, "sdxl_dist_log": {"step_metric": "global_step"}})
with WandbLogger(config) as logger:
    for step in range(100, 105):
        logger.log_metrics({"loss": 1.0 / step}, step=step)
"""
"""Our logger with a custom step metric, recorded in the run config the way the logger records its own settings."""


def write_script(tmp: Path, body: str) -> Path:
    script = tmp / "make_run.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    return script


def run_script(tmp: Path, body: str) -> None:
    """Run ``PRELUDE + body`` with ``out = tmp`` to its end; fail with its output when it fails."""
    proc = subprocess.run(
        [sys.executable, str(write_script(tmp, body)), str(tmp)],
        env=subprocess_env(tmp),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def wandb_file(run_dir: Path) -> Path:
    (path,) = run_dir.glob("*.wandb")
    return path


def copy_run(src: Path, parent: Path, name: str | None = None) -> Path:
    dst = parent / (name or src.name)
    shutil.copytree(src, dst)
    return dst
