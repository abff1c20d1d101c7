"""The backend Protocol and the backend of non-primary ranks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class RunIdentity:
    """Who the run is: decided on the primary, broadcast to every rank at start.

    Attributes:
        run_id: W&B run id (stable across SLURM requeues of one job).
        name: display name.
        group: W&B group (one per launch or experiment).
        job_type: W&B job type.
        mode: the mode the run really has: "online", "offline" or "disabled" (after any fallback).
        run_dir: the run's directory on the primary's filesystem, or None.
        fallback_reason: why the run is not in the mode asked for, or None.
    """

    run_id: str
    name: str
    group: str | None
    job_type: str | None
    mode: str = "offline"
    run_dir: str | None = None
    fallback_reason: str | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunIdentity:
        values = dict(data)
        values["tags"] = tuple(values.get("tags") or ())
        return cls(**values)


class Backend(Protocol):
    """What the logger needs from a run. Every method is called on the primary rank only, under the logger's lock."""

    def log_row(self, data: Mapping[str, Any], step: int | None, commit: bool = True) -> None:
        """Write one row of values at ``step`` (the last step when None); ``commit=False`` keeps them for the next."""

    def log_side_row(self, data: Mapping[str, Any], step: int | None) -> None:
        """Write a row of its own (system figures), leaving values pending from ``commit=False`` alone."""

    def log_images(
        self, key: str, images: Sequence[np.ndarray], captions: Sequence[str | None], step: int | None
    ) -> None:
        """Write uint8 HWC images under ``key`` at ``step``."""

    def log_artifact(
        self, path: str, *, name: str, type: str, aliases: Sequence[str], metadata: Mapping[str, Any]
    ) -> bool:
        """Upload a file or directory as a new version of the artifact ``name``; False if the run could not."""

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Set top-level config keys (values already merged and redacted)."""

    def mark_preempting(self) -> None:
        """Tell W&B the run is being preempted and will resume."""

    def flush(self) -> None:
        """Push what is buffered to the run file."""

    def finish(self, exit_code: int, timeout: float) -> None:
        """Close the run within ``timeout`` seconds."""


class NullBackend:
    """The backend of every non-primary rank (and of ``mode="disabled"``): it does nothing, by design."""

    def log_row(self, data: Mapping[str, Any], step: int | None, commit: bool = True) -> None:
        pass

    def log_side_row(self, data: Mapping[str, Any], step: int | None) -> None:
        pass

    def log_images(
        self, key: str, images: Sequence[np.ndarray], captions: Sequence[str | None], step: int | None
    ) -> None:
        pass

    def log_artifact(
        self, path: str, *, name: str, type: str, aliases: Sequence[str], metadata: Mapping[str, Any]
    ) -> bool:
        return False

    def update_config(self, values: Mapping[str, Any]) -> None:
        pass

    def mark_preempting(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def finish(self, exit_code: int, timeout: float) -> None:
        pass
