"""Where logged rows go: the primary rank's W&B backend, or a backend that does nothing on every other rank."""

from sdxl_dist_log.backends.base import Backend, NullBackend, RunIdentity

__all__ = ["Backend", "NullBackend", "RunIdentity"]
