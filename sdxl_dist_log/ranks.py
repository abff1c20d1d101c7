"""Where this process sits in the launch, and what the launch is: frozen values computed once from an environment.

This is the one place that interprets environment variables. Nothing here reads ``os.environ`` on its own: the
public constructors (``WandbLogger``, ``UnifiedLogger``) pass it in once (``Launch.from_env(os.environ)``), so the
logic is a pure function that tests drive with parametrized dicts, and nothing below them reads the environment.
torch.distributed, when initialized, is the authority for rank and world size; the environment fills in the rest
(node, launcher, job ids).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from sdxl_dist_log.errors import RankEnvironmentError

Launcher = Literal["torchrun", "slurm", "submitit", "env", "single"]


def _int(env: Mapping[str, str], key: str) -> int | None:
    raw = env.get(key)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise RankEnvironmentError(f"environment variable {key}={raw!r} is not an integer") from None


def _check_below(env: Mapping[str, str], name: str, value: int, bound_name: str, bound: int) -> None:
    if not 0 <= value < bound:
        raise RankEnvironmentError(f"{name}={env.get(name, value)} must be in 0..{bound - 1} ({bound_name}={bound})")


@dataclass(frozen=True, slots=True)
class RankInfo:
    """This process's place in a launch.

    Attributes:
        rank: global rank, 0..world_size-1.
        world_size: number of processes in the launch.
        local_rank: rank among the processes of this node.
        local_world_size: processes on this node.
        node_rank: index of this node in the launch.
        num_nodes: nodes in the launch.
        launcher: what started the process: "torchrun", "slurm", "submitit", "env" (RANK/WORLD_SIZE set by hand or
            by ``torch.multiprocessing``) or "single".
        hostname: this node's host name.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    num_nodes: int = 1
    launcher: Launcher = "single"
    hostname: str = "localhost"

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise RankEnvironmentError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise RankEnvironmentError(f"rank {self.rank} is outside 0..{self.world_size - 1}")
        if not 0 <= self.local_rank < max(self.local_world_size, 1):
            raise RankEnvironmentError(f"local_rank {self.local_rank} is outside 0..{self.local_world_size - 1}")
        if not 0 <= self.node_rank < max(self.num_nodes, 1):
            raise RankEnvironmentError(f"node_rank {self.node_rank} is outside 0..{self.num_nodes - 1}")

    @property
    def is_distributed(self) -> bool:
        """True when the launch has more than one process."""
        return self.world_size > 1

    @property
    def is_node_leader(self) -> bool:
        """True for the one process per node that samples node-wide figures."""
        return self.local_rank == 0

    def is_primary(self, primary_rank: int = 0) -> bool:
        """True for the rank that owns the W&B run."""
        return self.rank == primary_rank

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, hostname: str | None = None) -> RankInfo:
        """Derive the rank from a launcher's environment variables.

        torchrun's variables (RANK/WORLD_SIZE/LOCAL_RANK/...) win over SLURM's, because ``srun torchrun`` sets both
        and torchrun's describe the worker processes. submitit exports SUBMITIT_* beside SLURM_*.

        Args:
            env: the environment, usually ``os.environ``.
            hostname: this node's name; defaults to ``socket.gethostname()``.

        Returns:
            The RankInfo; a single-process value when no launcher variables are set.

        Raises:
            RankEnvironmentError: a variable is not an integer or the values contradict each other.

        Example:
            >>> RankInfo.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).rank
            1
        """
        host = hostname if hostname is not None else socket.gethostname()
        in_slurm_step = "SLURM_PROCID" in env and "SLURM_NTASKS" in env
        if "RANK" in env and "WORLD_SIZE" in env:
            world = _int(env, "WORLD_SIZE") or 1
            local_world = _int(env, "LOCAL_WORLD_SIZE") or world
            node_rank = _int(env, "GROUP_RANK")
            if node_rank is None:
                node_rank = _int(env, "NODE_RANK")
            if node_rank is None:
                node_rank = _int(env, "SLURM_NODEID") or 0
            launcher: Launcher
            if "TORCHELASTIC_RUN_ID" in env:
                launcher = "torchrun"
            elif env.get("SDXL_DIST_LOG_LAUNCHER") == "submitit" or "SUBMITIT_EXECUTOR" in env:
                launcher = "submitit"
            elif in_slurm_step:
                launcher = "slurm"
            else:
                launcher = "env"
            rank = _int(env, "RANK") or 0
            _check_below(env, "RANK", rank, "WORLD_SIZE", world)
            local_rank = _int(env, "LOCAL_RANK")
            if local_rank is None:  # hand-set env: ranks fill nodes in order, so only one per node leads
                local_rank = rank % max(local_world, 1)
            _check_below(env, "LOCAL_RANK", local_rank, "LOCAL_WORLD_SIZE", local_world)
            return cls(
                rank=rank,
                world_size=world,
                local_rank=local_rank,
                local_world_size=local_world,
                node_rank=node_rank,
                num_nodes=max(1, -(-world // max(local_world, 1))),
                launcher=launcher,
                hostname=host,
            )
        if in_slurm_step:
            world = _int(env, "SLURM_NTASKS") or 1
            num_nodes = _int(env, "SLURM_JOB_NUM_NODES") or _int(env, "SLURM_NNODES") or 1
            local_world = _int(env, "SLURM_NTASKS_PER_NODE") or -(-world // num_nodes)
            rank = _int(env, "SLURM_PROCID") or 0
            _check_below(env, "SLURM_PROCID", rank, "SLURM_NTASKS", world)
            return cls(
                rank=rank,
                world_size=world,
                local_rank=_int(env, "SLURM_LOCALID") or 0,
                local_world_size=local_world,
                node_rank=_int(env, "SLURM_NODEID") or 0,
                num_nodes=num_nodes,
                launcher="submitit" if "SUBMITIT_EXECUTOR" in env else "slurm",
                hostname=host,
            )
        return cls(launcher="single", hostname=host)

    def with_process_group(self, rank: int, world_size: int) -> RankInfo:
        """Return a copy whose rank and world size come from an initialized process group."""
        if rank == self.rank and world_size == self.world_size:
            return self
        local_world = self.local_world_size if self.world_size == world_size else 1
        local_world = max(1, min(local_world, world_size))
        return replace(
            self,
            rank=rank,
            world_size=world_size,
            local_rank=rank % local_world,
            local_world_size=local_world,
            node_rank=rank // local_world,
            num_nodes=-(-world_size // local_world),
        )


def _text(env: Mapping[str, str], key: str) -> str | None:
    return env.get(key) or None


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """Everything this package takes from the environment: the rank, the launch's ids and the user's overrides.

    Attributes:
        rank: where this process sits.
        slurm_job_id: ``SLURM_JOB_ID`` (each task of an array has its own).
        slurm_array_job_id: ``SLURM_ARRAY_JOB_ID``: the id shared by the tasks of an array.
        slurm_array_task_id: ``SLURM_ARRAY_TASK_ID``.
        rendezvous_id: torchrun's ``TORCHELASTIC_RUN_ID`` (None when unset or torchrun's placeholder "none").
        run_id: ``SDXL_DIST_LOG_RUN_ID``: a run id chosen outside the training script.
        group: ``SDXL_DIST_LOG_GROUP``: a W&B group chosen outside the training script.
        job_type: ``SDXL_DIST_LOG_JOB_TYPE``: a W&B job type chosen outside the training script.
        gloo_socket_ifname: ``GLOO_SOCKET_IFNAME``: the network interfaces gloo should use (comma-separated).
    """

    rank: RankInfo = field(default_factory=RankInfo)
    slurm_job_id: str | None = None
    slurm_array_job_id: str | None = None
    slurm_array_task_id: str | None = None
    rendezvous_id: str | None = None
    run_id: str | None = None
    group: str | None = None
    job_type: str | None = None
    gloo_socket_ifname: str | None = None

    @property
    def job_id(self) -> str | None:
        """The launch's id: the SLURM array job's, else the SLURM job's, else torchrun's rendezvous id."""
        return self.slurm_array_job_id or self.slurm_job_id or self.rendezvous_id

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, hostname: str | None = None) -> Launch:
        """Read the launch from an environment mapping (usually ``os.environ``), once.

        Raises:
            RankEnvironmentError: as ``RankInfo.from_env``.

        Example:
            >>> Launch.from_env({"SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).job_id
            '42'
        """
        rendezvous = _text(env, "TORCHELASTIC_RUN_ID")
        return cls(
            rank=RankInfo.from_env(env, hostname=hostname),
            slurm_job_id=_text(env, "SLURM_JOB_ID"),
            slurm_array_job_id=_text(env, "SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id=_text(env, "SLURM_ARRAY_TASK_ID"),
            rendezvous_id=None if rendezvous == "none" else rendezvous,
            run_id=_text(env, "SDXL_DIST_LOG_RUN_ID"),
            group=_text(env, "SDXL_DIST_LOG_GROUP"),
            job_type=_text(env, "SDXL_DIST_LOG_JOB_TYPE"),
            gloo_socket_ifname=_text(env, "GLOO_SOCKET_IFNAME"),
        )
