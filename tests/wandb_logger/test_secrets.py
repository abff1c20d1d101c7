"""No secret reaches a file under the run or log directories, nor the console; the look-alikes and the rest of the
run's environment record stay.

One real training script, run as a process of its own (its ``sys.argv`` is what W&B records), plants secrets where
users put them: on the command line (``--hub_token hf_...``, a database URL with a password, ``--api-key=...``), in
the run config (a private key, an AWS access key, an ``Authorization: Bearer`` header, a URL with a password), in
``log_config``, and in a printed argparse namespace. Then every byte of every file under the W&B directory (the
``.wandb`` file's environment record, config and history; W&B's debug logs; ``files/``) and the log directory, and
everything printed, is searched for each of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log.offline import find_run_dirs, read_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SECRETS = {
    "hub_token": "hf_" + "Zq8Rt2Lm9Vx4Nc7Bw1Ks5Pd3Fg6Hj0Ty2",
    "db_password": "Tr41ner-Pa55w0rd",
    "api_key_flag": "k3y-from-the-flag-98765",
    "private_key": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
    "aws_access_key": "AKIAQX7EXAMPLEKEY123",
    "bearer": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ0cmFpbmVyIn0.c2lnbmF0dXJl",
    "config_url_password": "cfg-url-secret-4242",
    "aws_secret": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLE",
    "credentials": "/home/trainer/.config/gcloud/creds-77.json",
    "namespace_token": "hf_" + "Pp0Oo9Ii8Uu7Yy6Tt5Rr4Ee3Ww2Qq1Aa9",
}
LOOK_ALIKES = {"max_tokens": 77, "num_tokens": 12, "tokenizer": "clip-vit-large", "sort_key": "val_loss"}

SCRIPT = textwrap.dedent('''
    import argparse, json, sys
    from sdxl_dist_log import LogConfig, UnifiedLogger, WandbConfig, WandbLogger

    secrets = json.loads(open("secrets.json").read())
    parser = argparse.ArgumentParser()
    for flag in ("--hub_token", "--db_url", "--api-key", "--max_tokens", "--tokenizer"):
        parser.add_argument(flag)
    args = parser.parse_args()
    config = {
        "private_key": "-----BEGIN PRIVATE KEY-----\\n" + secrets["private_key"] + "\\n-----END PRIVATE KEY-----",
        "access_key": secrets["aws_access_key"],
        "headers": {"Authorization": "Bearer " + secrets["bearer"]},
        "database": "postgres://trainer:" + secrets["config_url_password"] + "@db.internal:5432/runs",
        "max_tokens": 77, "num_tokens": 12, "tokenizer": "clip-vit-large", "sort_key": "val_loss",
    }
    with UnifiedLogger(LogConfig(name="train", log_dir="logs", progress=False)) as log:
        log.info("arguments: %s", args)  # what training scripts print first
        log.info("resolved: %s", argparse.Namespace(hub_token=secrets["namespace_token"], max_tokens=77))
        with WandbLogger(WandbConfig(project="secrets", mode="offline", dir="runs", config=config,
                                     log_system_metrics=False), logger=log) as wb:
            wb.log_config({"aws": {"secret_access_key": secrets["aws_secret"]},
                           "credentials_path": secrets["credentials"], "args": vars(args)})
            wb.log_metrics({"loss": 0.5}, step=0)
            print("run_dir=" + wb.run_dir)
''')


@pytest.fixture(scope="module")
def script_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("secrets")
    (work / "train.py").write_text(SCRIPT)
    (work / "secrets.json").write_text(json.dumps(SECRETS))
    home = work / "wandb_home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    for name, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        (home / sub).mkdir(parents=True)
        env[name] = str(home / sub)
    env.update(WANDB_SILENT="true", WANDB_ERROR_REPORTING="false")
    argv = ["--hub_token", SECRETS["hub_token"], "--db_url", f"postgres://trainer:{SECRETS['db_password']}@db/x",
            f"--api-key={SECRETS['api_key_flag']}", "--max_tokens", "77", "--tokenizer", "clip-vit-large"]
    proc = subprocess.run([sys.executable, "train.py", *argv], cwd=work, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (work / "secrets.json").unlink()  # the test's own copy is not a leak
    [run_dir] = find_run_dirs(work / "runs")
    return {"work": work, "console": proc.stdout + proc.stderr, "run": read_run(run_dir)}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_planted_secret_is_in_no_file_and_not_on_the_console(script_run: dict[str, Any], name: str) -> None:
    secret = SECRETS[name].encode()
    files = _files(script_run["work"] / "runs") + _files(script_run["work"] / "logs")
    assert any(p.suffix == ".wandb" for p in files) and any(p.suffix == ".log" for p in files)
    leaks = [str(p) for p in files if secret in p.read_bytes()]
    assert leaks == [], f"{name} leaked into {leaks}"
    assert SECRETS[name] not in script_run["console"]


def test_the_look_alikes_stay_visible(script_run: dict[str, Any]) -> None:
    run = script_run["run"]
    for key, value in LOOK_ALIKES.items():
        assert run.config[key] == value, key
    assert run.config["args"]["max_tokens"] == "77" and run.config["args"]["tokenizer"] == "clip-vit-large"
    args = run.environment["args"]
    assert args[args.index("--max_tokens") + 1] == "77" and args[args.index("--tokenizer") + 1] == "clip-vit-large"
    log = next((script_run["work"] / "logs").glob("train.rank0.log")).read_text()
    assert "max_tokens=77" in log and "tokenizer='clip-vit-large'" in log


def test_secrets_are_replaced_where_they_were_not_dropped(script_run: dict[str, Any]) -> None:
    run = script_run["run"]
    args = run.environment["args"]
    assert args[args.index("--hub_token") + 1] == "***redacted***"
    assert "--db_url" in args and "postgres://trainer:***redacted***@db/x" in args
    assert run.config["database"] == "postgres://trainer:***redacted***@db.internal:5432/runs"
    assert run.config["headers"] == {"Authorization": "***redacted***"}
    assert run.config["aws"] == {"secret_access_key": "***redacted***"}


def test_the_rest_of_the_environment_record_is_kept(script_run: dict[str, Any]) -> None:
    env = script_run["run"].environment
    assert env["program"].endswith("train.py") and env["host"] and env["python"].startswith("CPython")
