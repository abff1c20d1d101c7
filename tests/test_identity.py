"""Tests of sdxl_dist_log.identity: group, job_type, run id and resume as pure functions of config and launch.

The table in docs/naming.md is this file's parametrization written out; a change of rule changes both.
"""

from __future__ import annotations

import re

import pytest

from sdxl_dist_log.config import WandbConfig
from sdxl_dist_log.identity import (
    CONFIG_SECTION,
    RunIdentity,
    derive_group,
    derive_job_type,
    derive_run_id,
    launch_record,
    propose_identity,
    resume_mode,
)
from sdxl_dist_log.ranks import Launch

SLURM_JOB = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
SLURM_ARRAY = {"SLURM_JOB_ID": "4250", "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7",
               "SLURM_PROCID": "0", "SLURM_NTASKS": "2"}
TORCHRUN = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "TORCHELASTIC_RUN_ID": "exp42"}
SRUN_TORCHRUN = {**SLURM_JOB, **TORCHRUN}
RANDOM_ID = re.compile(r"[0-9a-f]{8}")


def _cfg(**kw) -> WandbConfig:
    return WandbConfig(mode="offline", **kw)


def _launch(env: dict[str, str]) -> Launch:
    return Launch.from_env(env, hostname="h")


# -- group ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        pytest.param({}, {}, None, id="nothing"),
        pytest.param({"group": "mine"}, {**SLURM_ARRAY, "SDXL_DIST_LOG_GROUP": "env"}, "mine", id="config-wins"),
        pytest.param({}, {**SLURM_ARRAY, **TORCHRUN, "SDXL_DIST_LOG_GROUP": "env-group"}, "env-group",
                     id="env-override"),
        pytest.param({}, {"SDXL_DIST_LOG_GROUP": ""}, None, id="empty-env-ignored"),
        pytest.param({}, SLURM_ARRAY, "slurm-array-4242", id="slurm-array"),
        pytest.param({}, {**SLURM_ARRAY, **TORCHRUN}, "slurm-array-4242", id="slurm-array-under-torchrun"),
        pytest.param({}, SLURM_JOB, "slurm-4242", id="slurm-job"),
        pytest.param({}, SRUN_TORCHRUN, "slurm-4242", id="srun-torchrun-slurm-wins"),
        pytest.param({}, TORCHRUN, "torchrun-exp42", id="torchrun"),
        pytest.param({}, {**TORCHRUN, "TORCHELASTIC_RUN_ID": "none"}, None, id="torchrun-default-none-ignored"),
        pytest.param({}, {**TORCHRUN, "TORCHELASTIC_RUN_ID": ""}, None, id="torchrun-empty"),
        pytest.param({}, {**TORCHRUN, "TORCHELASTIC_RUN_ID": "my exp/3:a"}, "torchrun-my-exp-3-a",
                     id="torchrun-sanitized"),
        pytest.param({"group": ""}, SLURM_JOB, "slurm-4242", id="empty-config-is-unset"),
    ],
)
def test_derive_group(config: dict, env: dict[str, str], expected: str | None) -> None:
    assert derive_group(_cfg(**config), _launch(env)) == expected


# -- job_type ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        pytest.param({}, {}, "train-single", id="single"),
        pytest.param({}, TORCHRUN, "train-torchrun", id="torchrun"),
        pytest.param({}, SLURM_JOB, "train-slurm", id="slurm"),
        pytest.param({}, SRUN_TORCHRUN, "train-torchrun", id="srun-torchrun"),
        pytest.param({}, {**SLURM_JOB, "SUBMITIT_EXECUTOR": "slurm"}, "train-submitit", id="submitit"),
        pytest.param({}, {"RANK": "0", "WORLD_SIZE": "1"}, "train-env", id="env"),
        pytest.param({}, {**TORCHRUN, "SDXL_DIST_LOG_JOB_TYPE": "eval"}, "eval", id="env-override"),
        pytest.param({"job_type": "finetune"}, {**TORCHRUN, "SDXL_DIST_LOG_JOB_TYPE": "eval"}, "finetune",
                     id="config-wins"),
    ],
)
def test_derive_job_type(config: dict, env: dict[str, str], expected: str) -> None:
    assert derive_job_type(_cfg(**config), _launch(env)) == expected


# -- run id -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("config", "env", "expected"),
    [
        pytest.param({"run_id": "abc123"}, {**SLURM_ARRAY, "SDXL_DIST_LOG_RUN_ID": "env"}, "abc123",
                     id="config-wins"),
        pytest.param({}, {**SLURM_ARRAY, "SDXL_DIST_LOG_RUN_ID": "from-env"}, "from-env", id="env-override"),
        pytest.param({}, SLURM_ARRAY, "slurm-4242-7", id="slurm-array"),
        pytest.param({}, {**SLURM_ARRAY, **TORCHRUN}, "slurm-4242-7", id="slurm-array-under-torchrun"),
        pytest.param({}, SLURM_JOB, "slurm-4242", id="slurm-job"),
        pytest.param({}, SRUN_TORCHRUN, "slurm-4242", id="srun-torchrun"),
        pytest.param({}, {"SLURM_ARRAY_JOB_ID": "4242", "SLURM_JOB_ID": "4250"}, "slurm-4250",
                     id="array-without-task-uses-job"),
        pytest.param({"run_id": "my run/1"}, {}, "my-run-1", id="config-sanitized"),
        pytest.param({}, {"SDXL_DIST_LOG_RUN_ID": "  a:b?c  "}, "a-b-c", id="env-sanitized"),
        pytest.param({"run_id": "///"}, {}, "run", id="all-unsafe"),
        pytest.param({"run_id": "ok_id.v2-x"}, {}, "ok_id.v2-x", id="safe-kept"),
        pytest.param({}, {"SLURM_JOB_ID": "12 34"}, "slurm-12-34", id="slurm-sanitized"),
    ],
)
def test_derive_run_id_stable(config: dict, env: dict[str, str], expected: str) -> None:
    run_id, stable = derive_run_id(_cfg(**config), _launch(env))
    assert (run_id, stable) == (expected, True)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({}, id="nothing"),
        pytest.param(TORCHRUN, id="torchrun"),  # the rendezvous id names the group, not the run
        pytest.param({**TORCHRUN, "TORCHELASTIC_RUN_ID": "none"}, id="torchrun-none"),
        pytest.param({"SDXL_DIST_LOG_RUN_ID": "", "SLURM_JOB_ID": ""}, id="empty-values"),
    ],
)
def test_derive_run_id_random_is_not_stable(env: dict[str, str]) -> None:
    first, stable = derive_run_id(_cfg(), _launch(env))
    second, _ = derive_run_id(_cfg(), _launch(env))
    assert stable is False
    assert RANDOM_ID.fullmatch(first)
    assert first != second


# -- resume -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("resume", "stable", "expected"),
    [
        (False, True, "allow"),   # requeued SLURM job: continue its run
        (False, False, None),     # fresh random id: nothing to resume
        (True, False, "allow"),
        (True, True, "allow"),
        ("must", True, "must"),
        ("never", True, "never"),
        ("auto", False, "auto"),
        ("allow", False, "allow"),
    ],
)
def test_resume_mode(resume: bool | str, stable: bool, expected: str | None) -> None:
    assert resume_mode(_cfg(resume=resume), stable) == expected


@pytest.mark.parametrize(
    "env",
    [SLURM_JOB, SLURM_ARRAY, SRUN_TORCHRUN],
    ids=["slurm-job", "slurm-array", "srun-torchrun"],
)
def test_requeue_gets_the_same_run(env: dict[str, str]) -> None:
    """A requeued job keeps SLURM_JOB_ID (and the array ids): same run id, resumed with 'allow'."""
    first = derive_run_id(_cfg(), _launch(env))
    requeued = derive_run_id(_cfg(), _launch({**env, "SLURM_RESTART_COUNT": "1"}))
    assert first == requeued
    assert resume_mode(_cfg(), requeued[1]) == "allow"


# -- the proposal and the launch record -------------------------------------------------------------------------
def test_proposal_of_a_slurm_job_resumes_and_names_by_the_job() -> None:
    proposed, resume = propose_identity(_cfg(tags=["a"]), _launch(SLURM_JOB))
    assert proposed == RunIdentity(run_id="slurm-4242", name="slurm-4242", group="slurm-4242",
                                   job_type="train-slurm", mode="offline", tags=("a",))
    assert resume == "allow"


def test_proposal_keeps_a_configured_name_and_a_fresh_id_is_not_resumed() -> None:
    proposed, resume = propose_identity(_cfg(name="sweep-3"), _launch({}))
    assert proposed.name == "sweep-3" and RANDOM_ID.fullmatch(proposed.run_id)
    assert resume is None


def test_launch_record_carries_the_step_metric_and_the_job() -> None:
    record = launch_record(_cfg(step_metric="global_step"), _launch(SRUN_TORCHRUN))
    assert record == {"launcher": "torchrun", "world_size": 2, "num_nodes": 1, "job_id": "4242",
                      "primary_host": "h", "step_metric": "global_step"}
    assert CONFIG_SECTION == "sdxl_dist_log"


def test_identity_survives_the_json_broadcast() -> None:
    identity = RunIdentity("id", "name", "g", "jt", mode="offline", run_dir="/r", fallback_reason=None, tags=("t",))
    assert RunIdentity.from_json(identity.to_json()) == identity
