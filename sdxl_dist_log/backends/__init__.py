"""Where logged rows go: the primary rank's W&B run (``wandb_backend``), or nowhere (``NullBackend``)."""

from sdxl_dist_log.backends.base import Backend, NullBackend

__all__ = ["Backend", "NullBackend"]
