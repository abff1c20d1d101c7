"""Adapters that put the rank-aware logger where training scripts already log: HF Accelerate and PyTorch Lightning.

Each adapter is a small translation over one ``WandbLogger`` (the same core every other path uses), built lazily on
the first call that every rank makes, once the framework has set up its process group:

- ``sdxl_dist_log.integrations.accelerate.SdxlTracker``: an Accelerate tracker (``Accelerator(log_with=[...])``);
  needs ``pip install 'sdxl-dist-log[accelerate]'``.
- ``sdxl_dist_log.integrations.lightning.SdxlLightningLogger``: a Lightning ``Logger`` (``Trainer(logger=...)``);
  needs ``pip install 'sdxl-dist-log[lightning]'``.

Neither framework is imported by ``sdxl_dist_log`` itself; only importing an adapter module imports its framework.
"""
