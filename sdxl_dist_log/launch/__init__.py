"""Launching ranks: on this machine (``local.run_ranks``), or on SLURM through submitit (``submit``).

``submit`` resolves on first use, so importing this package does not import submitit.
"""

from sdxl_dist_log.launch.ports import free_port

__all__ = ["free_port", "submit"]


def __getattr__(name: str):  # submitit is imported only when submitting
    if name == "submit":
        from sdxl_dist_log.launch.submit import submit

        return submit
    raise AttributeError(name)
