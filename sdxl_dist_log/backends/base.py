"""The backend Protocol and the backend of non-primary ranks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class Backend(Protocol):
    """What the logger needs from a run. Every method is called on the primary rank only.

    The logger owns the step: every row arrives with the step it belongs to. ``mark_preempting`` and ``finish`` may
    be called from a signal handler that interrupted another call of the same backend on the same thread.
    """

    @property
    def run(self) -> Any | None:
        """The underlying W&B run object (what ``WandbLogger.run`` hands out), or None when there is none."""

    def log_row(self, data: Mapping[str, Any], step: int, commit: bool = True) -> None:
        """Write one row of values at ``step``; ``commit=False`` keeps them to merge into the next committed row."""

    def log_side_row(self, data: Mapping[str, Any], step: int) -> None:
        """Write a row of its own (system figures), leaving values pending from ``commit=False`` alone."""

    def log_images(
        self, key: str, images: Sequence[np.ndarray], captions: Sequence[str | None], step: int
    ) -> None:
        """Write uint8 HWC images under ``key`` at ``step``."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        """Write a table under ``key`` at ``step``; cells are numbers, strings, None or uint8 HWC images."""

    def log_artifact(
        self, path: str, *, name: str, type: str, aliases: Sequence[str], metadata: Mapping[str, Any]
    ) -> bool:
        """Upload a file or directory as a new version of the artifact ``name``; False if the run could not."""

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Set top-level config keys (values already merged and redacted)."""

    def mark_preempting(self, reason: str = "") -> None:
        """Tell W&B the run is being preempted and will resume; ``reason`` names the signal."""

    def finish(self, exit_code: int, timeout: float) -> None:
        """Close the run within ``timeout`` seconds (marked preempting if ``mark_preempting`` was called)."""


class NullBackend:
    """The backend of every non-primary rank (and of ``mode="disabled"``): it does nothing, by design."""

    run: Any | None = None

    def log_row(self, data: Mapping[str, Any], step: int, commit: bool = True) -> None:
        pass

    def log_side_row(self, data: Mapping[str, Any], step: int) -> None:
        pass

    def log_images(
        self, key: str, images: Sequence[np.ndarray], captions: Sequence[str | None], step: int
    ) -> None:
        pass

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int) -> None:
        pass

    def log_artifact(
        self, path: str, *, name: str, type: str, aliases: Sequence[str], metadata: Mapping[str, Any]
    ) -> bool:
        return False

    def update_config(self, values: Mapping[str, Any]) -> None:
        pass

    def mark_preempting(self, reason: str = "") -> None:
        pass

    def finish(self, exit_code: int, timeout: float) -> None:
        pass
