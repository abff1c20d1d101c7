"""Launch helpers: run naming per launch, and submission to SLURM through submitit (``submit``)."""

from sdxl_dist_log.launch.naming import derive_group, derive_job_type, derive_run_id, resume_mode
from sdxl_dist_log.launch.ports import free_port

__all__ = ["derive_group", "derive_job_type", "derive_run_id", "free_port", "resume_mode", "submit"]


def __getattr__(name: str):  # submitit is imported only when submitting
    if name == "submit":
        from sdxl_dist_log.launch.submit import submit

        return submit
    raise AttributeError(name)
