"""WandbLogger.log_model and log_config: checkpoints become versions of one artifact, the switches that skip them,
the config merge with secrets redacted, and neither call making the other ranks wait.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdxl_dist_log import CheckpointError, WandbConfig, WandbLogger
from sdxl_dist_log.launch.local import run_ranks, values_or_raise
from sdxl_dist_log.offline import read_run

pytestmark = pytest.mark.timeout(300)

REDACTED = "***redacted***"


def _one_process() -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = dict(mode="offline", dir="out", log_system_metrics=False)
    # a checkpoint directory, changed, then a file: three versions of one artifact
    ckpt = Path("ckpt_dir")
    ckpt.mkdir()
    (ckpt / "unet.safetensors").write_bytes(b"unet v1")
    (ckpt / "optimizer.pt").write_bytes(b"optim v1")
    with WandbLogger(WandbConfig(project="versions", checkpoint_prefix="sdxl-unet", **base)) as wb:
        out["logged_dir"] = wb.log_model(ckpt, metadata={"step": 10, "loss": 0.5}, aliases=["step-10"])
        (ckpt / "unet.safetensors").write_bytes(b"unet v2")
        wb.log_model(str(ckpt), metadata={"step": 20}, aliases=["step-20"])
        (ckpt / "final.pt").write_bytes(b"final")
        wb.log_model(ckpt / "final.pt", aliases=["best"])
        out["versions_run"] = os.path.abspath(wb.run_dir)
    # missing path -> CheckpointError before anything is uploaded; config merge + redaction
    config = WandbConfig(project="cfg", config={"wandb_api_key": "k0", "training": {"lr": 1e-4}}, **base)
    with WandbLogger(config) as wb:
        try:
            wb.log_model("no/such/checkpoint.pt", aliases=["final"])
        except CheckpointError as exc:
            out["missing"] = str(exc)
        wb.log_config({"model": {"type": "sdxl", "params": {"unet": 1}}, "hf": {"token": "abc"}, "api_key": "k1"})
        out["merged"] = wb.log_config({
            "model": {"version": "1.0", "params": {"vae": 2}},
            "db": {"password": "p", "nested": {"secret": "s", "client_secret": "c", "user": "me"}},
            "training": {"epochs": 3},
        })
        out["cfg_run"] = os.path.abspath(wb.run_dir)
    # log_model=False: a no-op
    Path("weights.pt").write_bytes(b"w")
    with WandbLogger(WandbConfig(project="nomodel", log_model=False, **base)) as wb:
        out["no_model"] = [wb.log_model("weights.pt", aliases=a) for a in (None, ["final"], ["best"])]
        out["nomodel_run"] = os.path.abspath(wb.run_dir)
    # log_checkpoints=False: intermediate skipped, "final" and "best" uploaded
    Path("final.pt").write_bytes(b"final")
    Path("best.pt").write_bytes(b"best")
    with WandbLogger(WandbConfig(project="noint", log_checkpoints=False, **base)) as wb:
        out["no_intermediate"] = [wb.log_model("weights.pt", aliases=["step-1"]), wb.log_model("weights.pt"),
                                  wb.log_model("final.pt", aliases=["final"]),
                                  wb.log_model("best.pt", aliases=["best", "step-9"])]
        out["noint_run"] = os.path.abspath(wb.run_dir)
    return out


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, in_child: Callable[..., Any]) -> dict[str, Any]:
    return in_child(_one_process, tmp_path_factory.mktemp("checkpoints"))


# -- log_model ---------------------------------------------------------------------------------------------------------
def test_checkpoint_directory_and_versions_of_one_artifact(logged: dict[str, Any]) -> None:
    """A directory, the same directory changed, then a file: versions v0, v1, v2 of the one artifact
    ``checkpoint_prefix``, each with its own files, digest, aliases and metadata."""
    assert logged["logged_dir"] is True
    run = read_run(logged["versions_run"])
    versions = run.artifact_versions("sdxl-unet")
    assert len(versions) == len(run.artifacts) == 3
    assert [v.version_index for v in versions] == [0, 1, 2]
    assert len({v.digest for v in versions}) == 3
    assert versions[0].files == ["optimizer.pt", "unet.safetensors"]
    assert versions[2].files == ["final.pt"]
    assert "step-10" in versions[0].aliases and "step-20" in versions[1].aliases and "best" in versions[2].aliases
    assert versions[0].metadata["step"] == 10 and versions[0].metadata["loss"] == 0.5
    assert versions[1].metadata["step"] == 20
    assert all(v.type == "model" for v in versions)


def test_log_model_missing_path_raises_before_upload(logged: dict[str, Any]) -> None:
    """A missing checkpoint raises CheckpointError naming the path, and no artifact record is written."""
    assert "no/such/checkpoint.pt" in logged["missing"]
    run = read_run(logged["cfg_run"])
    assert run.artifacts == [] and run.record_counts.get("artifact", 0) == 0


def test_log_model_false_is_a_no_op(logged: dict[str, Any]) -> None:
    """``log_model=False`` skips every call, even "final" and "best" ones, and returns False."""
    assert logged["no_model"] == [False, False, False]
    run = read_run(logged["nomodel_run"])
    assert run.exit_code == 0 and run.artifacts == []


def test_log_checkpoints_false_uploads_only_final_and_best(logged: dict[str, Any]) -> None:
    """``log_checkpoints=False`` skips intermediate checkpoints; those aliased "final" or "best" still upload."""
    assert logged["no_intermediate"] == [False, False, True, True]
    run = read_run(logged["noint_run"])
    assert [a.files for a in run.artifacts] == [["final.pt"], ["best.pt"]]
    assert "final" in run.artifacts[0].aliases and "best" in run.artifacts[1].aliases


# -- log_config --------------------------------------------------------------------------------------------------------
def test_log_config_merges_nested_and_redacts_secrets(logged: dict[str, Any]) -> None:
    """Nested dicts merge key by key with the initial config; secret-looking keys are redacted at every depth,
    in the returned config and in the run, and no secret value reaches the run file."""
    for config in (logged["merged"], read_run(logged["cfg_run"]).config):
        assert config["model"] == {"type": "sdxl", "version": "1.0", "params": {"unet": 1, "vae": 2}}
        assert config["training"] == {"lr": 1e-4, "epochs": 3}
        assert config["wandb_api_key"] == REDACTED and config["api_key"] == REDACTED
        assert config["hf"] == {"token": REDACTED}
        assert config["db"] == {"password": REDACTED,
                                "nested": {"secret": REDACTED, "client_secret": REDACTED, "user": "me"}}
    text = json.dumps(read_run(logged["cfg_run"]).config)
    assert not any(secret in text for secret in ('"k0"', '"k1"', '"abc"', '"p"', '"s"', '"c"'))


# -- across ranks ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_model_and_config_calls_never_block_other_ranks(tmp_path: Path, make_logger: Callable,
                                                        only_run: Callable) -> None:
    """log_model and log_config on every rank or on the primary alone: only the primary uploads, and the ranks are
    still in step for the next collective call."""
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "weights.bin").write_bytes(b"w" * 64)

    def body(rank: int) -> list[bool]:
        with make_logger(str(tmp_path / "runs")) as wb:
            uploaded = [wb.log_model(checkpoint, metadata={"step": 1}, aliases=["latest"])]  # every rank
            if wb.is_primary:
                (checkpoint / "weights.bin").write_bytes(b"v" * 64)
                uploaded.append(wb.log_model(checkpoint, metadata={"step": 2}))  # primary only
                wb.log_config({"lr": 0.1})
            wb.log_config({"batch": 8})
            wb.log_metrics({"x": 1.0}, step=0)  # still in step with each other
            return uploaded

    assert values_or_raise(run_ranks(body, 2, timeout=240)) == [[True, True], [False]]
    run = only_run(tmp_path / "runs")
    versions = [a for a in run.artifacts if a.name == "ckpt"]
    assert len(versions) == 2 and len({a.digest for a in versions}) == 2
    assert versions[0].metadata["step"] == 1 and "latest" in versions[0].aliases
    assert run.config["lr"] == 0.1 and run.config["batch"] == 8
    assert run.rows_with("metrics/x")[0]["metrics/x"] == 1.0
