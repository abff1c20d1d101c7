"""Test doubles and instruments shared by the tests and benchmarks; production code never imports this package.

Doubles are passed in through constructors (``WandbLogger(nvml=FakeNvml(2))``), never switched on from inside.

- ``fake_nvml``, ``fake_cuda``: an NVML with simulated GPUs and a torch.cuda stand-in, for machines without GPUs;
- ``probe``: counts collectives (with group sizes and bytes) and CUDA host syncs;
- ``wandb_env``: a private, offline W&B environment under a folder;
- ``servers``: a W&B server that never answers and a closed port, as real local sockets;
- ``browser``: opens a report in the system's headless Chromium (Playwright) and says what it drew.
"""
