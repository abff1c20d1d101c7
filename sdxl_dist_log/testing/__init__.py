"""Test doubles and instruments shared by the tests and benchmarks: never imported by the logger itself.

- ``fake_nvml``: an NVML with simulated GPUs, passed to ``WandbLogger(nvml=...)`` where no GPU exists;
- ``probe``: counts collectives (with group sizes and bytes) and CUDA host syncs;
- ``wandb_env``: a private, offline W&B environment under a folder.
"""
