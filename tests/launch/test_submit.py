"""Pure parts of sdxl_dist_log.launch.submit: executor resolution, sbatch options, SLURM parameters, the env export.

No SLURM and no job: the export runs against a job environment written into ``os.environ``, as submitit's executors
write it for each task.
"""

from __future__ import annotations

import os

import cloudpickle
import pytest

from sdxl_dist_log.launch.submit import (
    DistributedTask,
    PlainDistributedTask,
    export_distributed_env,
    parse_sbatch_options,
    resolve_executor,
    slurm_parameters,
)

_DIST_KEYS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _task() -> None:
    """A stand-in for a training function."""


@pytest.mark.parametrize(
    ("executor", "sbatch", "expected"),
    [("auto", "/usr/bin/sbatch", "slurm"), ("auto", None, "local"), ("slurm", None, "slurm"), ("local", "x", "local")],
)
def test_resolve_executor(executor: str, sbatch: str | None, expected: str) -> None:
    assert resolve_executor(executor, which=lambda name: sbatch) == expected


def test_resolve_executor_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="executor"):
        resolve_executor("debug")


def test_parse_sbatch_options() -> None:
    assert parse_sbatch_options(["qos=high", "--exclusive", "comment=a=b"]) == {
        "qos": "high", "exclusive": True, "comment": "a=b"}
    assert parse_sbatch_options(None) == {} and parse_sbatch_options(()) == {}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_sbatch_options(["=x"])


def test_slurm_parameters() -> None:
    p = slurm_parameters(nodes=2, tasks_per_node=8, gpus_per_node=8, partition="gpu", timeout_min=30, mem_gb=64,
                         account="proj", slurm_additional_parameters={"qos": "high", "mail_type": "END"})
    assert p["nodes"] == 2 and p["ntasks_per_node"] == 8 and p["gpus_per_node"] == 8 and p["time"] == 30
    assert p["partition"] == "gpu" and p["account"] == "proj" and p["mem"] == 64
    assert p["additional_parameters"] == {"qos": "high", "mail-type": "END", "requeue": True}
    q = slurm_parameters(checkpointable=False)
    assert "gpus_per_node" not in q and "partition" not in q and "additional_parameters" not in q
    with pytest.raises(ValueError):
        slurm_parameters(tasks_per_node=0)


def test_task_classes_pickle_and_checkpointable() -> None:
    from submitit.helpers import Checkpointable

    task = DistributedTask(_task, (), {}, master_port=None)
    assert isinstance(task, Checkpointable) and hasattr(task, "checkpoint")
    assert not hasattr(PlainDistributedTask(_task), "checkpoint")
    clone = cloudpickle.loads(cloudpickle.dumps(task))
    assert clone.fn.__name__ == "_task"


# ------------------------------------------------------------------------------------------------------------------
# export_distributed_env: submitit's TorchDistributedEnvironment, plus what the local executor needs besides
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture
def task_env(monkeypatch: pytest.MonkeyPatch):
    """Sets a task's job environment; values inherited from the submitting process are there to be overwritten."""
    for key in _DIST_KEYS:
        monkeypatch.setenv(key, "inherited")
    monkeypatch.delenv("MASTER_PORT")

    def set_env(**env: str) -> None:
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return set_env


def _local(rank: int, ntasks: int, job_id: str = "123") -> dict[str, str]:
    return {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_GLOBALID": str(rank), "SUBMITIT_LOCAL_LOCALID": str(rank),
            "SUBMITIT_LOCAL_NTASKS": str(ntasks), "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
            "SUBMITIT_LOCAL_JOB_ID": job_id}


def test_export_local_task_uses_loopback_and_the_port_chosen_at_submit_time(task_env) -> None:
    task_env(**_local(1, 2))
    expected = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "RANK": "1", "WORLD_SIZE": "2",
                "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert export_distributed_env(29500) == expected
    assert {key: os.environ[key] for key in _DIST_KEYS} == expected


def test_export_local_task_keeps_a_master_port_from_the_environment(task_env) -> None:
    task_env(**_local(0, 4), MASTER_PORT="4242")
    exported = export_distributed_env()
    assert exported is not None
    assert (exported["MASTER_PORT"], exported["RANK"], exported["WORLD_SIZE"], exported["LOCAL_WORLD_SIZE"]) == (
        "4242", "0", "4", "4")


def test_export_local_port_from_the_job_id_agrees_across_tasks(task_env, monkeypatch: pytest.MonkeyPatch) -> None:
    ports = []
    for rank in (0, 1):
        monkeypatch.delenv("MASTER_PORT", raising=False)
        task_env(**_local(rank, 2, job_id="777"))
        exported = export_distributed_env()
        assert exported is not None and exported["RANK"] == str(rank)
        ports.append(exported["MASTER_PORT"])
    assert ports[0] == ports[1] and 20000 <= int(ports[0]) <= 60000


def test_export_nothing_for_a_single_local_task_or_outside_a_job(task_env, monkeypatch: pytest.MonkeyPatch) -> None:
    task_env(**_local(0, 1))
    assert export_distributed_env() is None
    assert os.environ["RANK"] == "inherited"
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    assert export_distributed_env() is None


def test_export_slurm_task_master_is_the_first_node(task_env) -> None:
    task_env(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="4242", SLURM_NTASKS="4", SLURM_JOB_NUM_NODES="2",
             SLURM_NODEID="1", SLURM_JOB_NODELIST="gpu[007-008]", SLURM_PROCID="3", SLURM_LOCALID="1",
             CUDA_VISIBLE_DEVICES="0,1")
    exported = export_distributed_env(1111)  # a SLURM job derives its port from the job id, whatever was passed
    assert exported is not None
    port = exported.pop("MASTER_PORT")
    assert exported == {"MASTER_ADDR": "gpu007", "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                        "LOCAL_WORLD_SIZE": "2"}
    assert port != "1111" and 20000 <= int(port) <= 60000
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # left as SLURM set it: the task may use every GPU
