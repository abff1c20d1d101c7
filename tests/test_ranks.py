"""Tests of sdxl_dist_log.ranks: RankInfo and Launch as pure functions of a parametrized environment mapping.

Each launcher's variables are written out as the launcher really sets them, so a change in precedence (torchrun over
SLURM, submitit detection, array ids) shows up as a failing case, not as a wrong W&B group in production.
"""

from __future__ import annotations

import pytest

from sdxl_dist_log.errors import RankEnvironmentError
from sdxl_dist_log.ranks import Launch, RankInfo

HOST = "node-a"

TORCHRUN = {  # torchrun --nnodes 2 --nproc-per-node 4, worker 6 (node 1, local 2)
    "RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
    "TORCHELASTIC_RUN_ID": "exp42", "MASTER_ADDR": "node-a", "MASTER_PORT": "29500",
}
SLURM = {  # srun -N 3 --ntasks-per-node 2, task 3 (node 1, local 1)
    "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "6", "SLURM_NODEID": "1",
    "SLURM_JOB_NUM_NODES": "3", "SLURM_JOB_ID": "1234",
}
# srun launching one torchrun per node: SLURM's variables describe the torchrun agent, torchrun's the worker.
SRUN_TORCHRUN = {
    "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NTASKS": "2", "SLURM_NODEID": "1",
    "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "777",
    **TORCHRUN,
}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            TORCHRUN,
            RankInfo(rank=6, world_size=8, local_rank=2, local_world_size=4, node_rank=1, num_nodes=2,
                     launcher="torchrun", hostname=HOST),
            id="torchrun",
        ),
        pytest.param(
            {**TORCHRUN, "TORCHELASTIC_RUN_ID": "none"},
            RankInfo(rank=6, world_size=8, local_rank=2, local_world_size=4, node_rank=1, num_nodes=2,
                     launcher="torchrun", hostname=HOST),
            id="torchrun-default-rdzv-id-none",
        ),
        pytest.param(
            {k: v for k, v in TORCHRUN.items() if k != "GROUP_RANK"} | {"NODE_RANK": "1"},
            RankInfo(rank=6, world_size=8, local_rank=2, local_world_size=4, node_rank=1, num_nodes=2,
                     launcher="torchrun", hostname=HOST),
            id="torchrun-node-rank-fallback",
        ),
        pytest.param(
            SRUN_TORCHRUN,
            RankInfo(rank=6, world_size=8, local_rank=2, local_world_size=4, node_rank=1, num_nodes=2,
                     launcher="torchrun", hostname=HOST),
            id="srun-torchrun-torchrun-wins-slurm-job-id",
        ),
        pytest.param(
            SLURM,
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="slurm", hostname=HOST),
            id="slurm",
        ),
        pytest.param(
            {**SLURM, "SLURM_JOB_NUM_NODES": "", "SLURM_NNODES": "3"},
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="slurm", hostname=HOST),
            id="slurm-nnodes-fallback",
        ),
        pytest.param(
            {**SLURM, "SLURM_NTASKS_PER_NODE": "2"},
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="slurm", hostname=HOST),
            id="slurm-ntasks-per-node",
        ),
        pytest.param(
            {**SLURM, "SLURM_JOB_ID": "1240", "SLURM_ARRAY_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "6"},
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="slurm", hostname=HOST),
            id="slurm-array-job-id-wins",
        ),
        pytest.param(
            {**SLURM, "SUBMITIT_EXECUTOR": "slurm"},
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="submitit", hostname=HOST),
            id="submitit-slurm-only",
        ),
        pytest.param(
            # submitit's DistributedEnvironment exports RANK/WORLD_SIZE/LOCAL_RANK beside SLURM's variables
            {**SLURM, "RANK": "3", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
             "SDXL_DIST_LOG_LAUNCHER": "submitit"},
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="submitit", hostname=HOST),
            id="submitit-marker-with-rank-vars",
        ),
        pytest.param(
            {**SLURM, "RANK": "3", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
             "SUBMITIT_EXECUTOR": "slurm"},
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="submitit", hostname=HOST),
            id="submitit-executor-with-rank-vars",
        ),
        pytest.param(
            {**SLURM, "RANK": "3", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
            RankInfo(rank=3, world_size=6, local_rank=1, local_world_size=2, node_rank=1, num_nodes=3,
                     launcher="slurm", hostname=HOST),
            id="slurm-with-rank-vars",
        ),
        pytest.param(
            {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost"},
            RankInfo(rank=1, world_size=2, local_rank=1, local_world_size=2, launcher="env", hostname=HOST),
            id="env-by-hand",
        ),
        pytest.param({}, RankInfo(launcher="single", hostname=HOST), id="single"),
        pytest.param({"PATH": "/usr/bin", "RANK": "0"}, RankInfo(launcher="single", hostname=HOST),
                     id="single-rank-without-world-size"),
        pytest.param(
            {"SLURM_JOB_ID": "99"},  # inside an allocation (salloc shell) but not in a step
            RankInfo(launcher="single", hostname=HOST),
            id="single-in-slurm-allocation",
        ),
        pytest.param({"RANK": "", "WORLD_SIZE": ""}, RankInfo(launcher="env", hostname=HOST), id="env-empty-values"),
    ],
)
def test_from_env(env: dict[str, str], expected: RankInfo) -> None:
    assert RankInfo.from_env(env, hostname=HOST) == expected


def test_from_env_does_not_read_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    assert RankInfo.from_env({}, hostname=HOST) == RankInfo(hostname=HOST)


def test_from_env_default_hostname() -> None:
    import socket

    assert RankInfo.from_env({}).hostname == socket.gethostname()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2.0"}, "WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, "LOCAL_RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "two"}, "LOCAL_WORLD_SIZE"),
        ({"RANK": "0", "WORLD_SIZE": "2", "GROUP_RANK": "?"}, "GROUP_RANK"),
        ({**SLURM, "SLURM_PROCID": "3a"}, "SLURM_PROCID"),
        ({**SLURM, "SLURM_NTASKS": "six"}, "SLURM_NTASKS"),
        ({**SLURM, "SLURM_LOCALID": " "}, "SLURM_LOCALID"),
        ({**SLURM, "SLURM_NODEID": "n1"}, "SLURM_NODEID"),
        ({**SLURM, "SLURM_JOB_NUM_NODES": "3(x2)"}, "SLURM_JOB_NUM_NODES"),
    ],
)
def test_non_integer_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(RankEnvironmentError, match=rf"\b{variable}=") as info:
        RankInfo.from_env(env, hostname=HOST)
    assert "not an integer" in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"RANK": "2", "WORLD_SIZE": "2"}, id="rank-equals-world"),
        pytest.param({"RANK": "5", "WORLD_SIZE": "2"}, id="rank-above-world"),
        pytest.param({"RANK": "-1", "WORLD_SIZE": "2"}, id="negative-rank"),
        pytest.param({**SLURM, "SLURM_PROCID": "6"}, id="slurm-procid-equals-ntasks"),
    ],
)
def test_rank_outside_world_is_an_error(env: dict[str, str]) -> None:
    with pytest.raises(RankEnvironmentError, match="must be in 0"):
        RankInfo.from_env(env, hostname=HOST)


@pytest.mark.parametrize(
    ("env", "variables"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, ("RANK", "WORLD_SIZE")),
        ({**SLURM, "SLURM_PROCID": "6"}, ("SLURM_PROCID", "SLURM_NTASKS")),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "2"}, ("LOCAL_RANK",)),
    ],
)
def test_rank_outside_world_names_the_variables(env: dict[str, str], variables: tuple[str, ...]) -> None:
    with pytest.raises(RankEnvironmentError) as info:
        RankInfo.from_env(env, hostname=HOST)
    for variable in variables:
        assert variable in str(info.value)


def test_env_by_hand_without_local_rank_has_one_node_leader() -> None:
    infos = [RankInfo.from_env({"RANK": str(r), "WORLD_SIZE": "4"}, hostname=HOST) for r in range(4)]
    assert [i.local_rank for i in infos] == [0, 1, 2, 3]
    assert sum(i.is_node_leader for i in infos) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"world_size": 0},
        {"rank": 1, "world_size": 1},
        {"rank": 0, "world_size": 4, "local_rank": 2, "local_world_size": 2},
        {"rank": 0, "world_size": 4, "node_rank": 2, "num_nodes": 2},
    ],
)
def test_constructor_validates(kwargs: dict[str, int]) -> None:
    with pytest.raises(RankEnvironmentError):
        RankInfo(**kwargs)


@pytest.mark.parametrize(
    ("info", "distributed", "leader", "primary0", "primary1"),
    [
        (RankInfo(), False, True, True, False),
        (RankInfo(rank=1, world_size=2, local_rank=1, local_world_size=2), True, False, False, True),
        (RankInfo(rank=2, world_size=4, local_rank=0, local_world_size=2, node_rank=1, num_nodes=2),
         True, True, False, False),
    ],
)
def test_properties(info: RankInfo, distributed: bool, leader: bool, primary0: bool, primary1: bool) -> None:
    assert info.is_distributed is distributed
    assert info.is_node_leader is leader
    assert info.is_primary() is primary0
    assert info.is_primary(1) is primary1


def test_frozen() -> None:
    with pytest.raises(AttributeError):
        RankInfo().rank = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("base", "rank", "world", "expected"),
    [
        pytest.param(  # the group agrees with the environment: the same object back
            RankInfo(rank=6, world_size=8, local_rank=2, local_world_size=4, node_rank=1, num_nodes=2),
            6, 8, RankInfo(rank=6, world_size=8, local_rank=2, local_world_size=4, node_rank=1, num_nodes=2),
            id="unchanged",
        ),
        pytest.param(  # same world, rank renumbered: keep the node layout
            RankInfo(rank=6, world_size=8, local_rank=2, local_world_size=4, node_rank=1, num_nodes=2),
            5, 8, RankInfo(rank=5, world_size=8, local_rank=1, local_world_size=4, node_rank=1, num_nodes=2),
            id="same-world-new-rank",
        ),
        pytest.param(  # the environment knew nothing (mp.spawn): one process per node is the safe assumption
            RankInfo(launcher="single", hostname="h"),
            1, 2, RankInfo(rank=1, world_size=2, local_rank=0, local_world_size=1, node_rank=1, num_nodes=2,
                           launcher="single", hostname="h"),
            id="different-world",
        ),
    ],
)
def test_with_process_group(base: RankInfo, rank: int, world: int, expected: RankInfo) -> None:
    got = base.with_process_group(rank, world)
    assert got == expected
    if (rank, world) == (base.rank, base.world_size):
        assert got is base


def test_with_process_group_keeps_launch_fields() -> None:
    base = RankInfo.from_env(SLURM, hostname=HOST)
    got = base.with_process_group(0, 6)
    assert (got.launcher, got.hostname) == ("slurm", HOST)
    assert (got.rank, got.local_rank, got.node_rank) == (0, 0, 0)


# -- Launch: the launch's ids and the user's overrides, read in the same one pass -------------------------------
@pytest.mark.parametrize(
    ("env", "job_id", "fields"),
    [
        pytest.param(TORCHRUN, "exp42", {"rendezvous_id": "exp42"}, id="torchrun"),
        pytest.param({**TORCHRUN, "TORCHELASTIC_RUN_ID": "none"}, None, {"rendezvous_id": None},
                     id="torchrun-placeholder-none"),
        pytest.param(SLURM, "1234", {"slurm_job_id": "1234"}, id="slurm"),
        pytest.param(SRUN_TORCHRUN, "777", {"slurm_job_id": "777", "rendezvous_id": "exp42"}, id="srun-torchrun"),
        pytest.param({**SLURM, "SLURM_ARRAY_JOB_ID": "1200", "SLURM_ARRAY_TASK_ID": "6"}, "1200",
                     {"slurm_array_job_id": "1200", "slurm_array_task_id": "6"}, id="slurm-array"),
        pytest.param({"SLURM_JOB_ID": "99"}, "99", {"slurm_job_id": "99"}, id="single-in-slurm-allocation"),
        pytest.param({}, None, {}, id="single"),
        pytest.param({"SDXL_DIST_LOG_RUN_ID": "r", "SDXL_DIST_LOG_GROUP": "g", "SDXL_DIST_LOG_JOB_TYPE": "eval"},
                     None, {"run_id": "r", "group": "g", "job_type": "eval"}, id="overrides"),
        pytest.param({"SDXL_DIST_LOG_RUN_ID": "", "SLURM_JOB_ID": ""}, None, {"run_id": None, "slurm_job_id": None},
                     id="empty-values-are-unset"),
    ],
)
def test_launch_from_env(env: dict[str, str], job_id: str | None, fields: dict[str, str | None]) -> None:
    launch = Launch.from_env(env, hostname=HOST)
    assert launch.rank == RankInfo.from_env(env, hostname=HOST)
    assert launch.job_id == job_id
    for name, value in fields.items():
        assert getattr(launch, name) == value, name


def test_launch_is_read_from_the_mapping_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "from-os-environ")
    monkeypatch.setenv("SDXL_DIST_LOG_GROUP", "from-os-environ")
    launch = Launch.from_env({}, hostname=HOST)
    assert (launch.slurm_job_id, launch.group) == (None, None)
