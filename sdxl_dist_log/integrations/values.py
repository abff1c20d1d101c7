"""What the frameworks hand a logger, sorted for the rank-aware core: pure functions, no framework imported.

Accelerate's ``accelerator.log(values)`` and Lightning's loggers pass one dict that mixes scalars with images
(diffusers logs ``{"validation": [wandb.Image(...), ...]}``). The core logs scalars in one collective and images in
another, so a dict is split here, the same way on every rank: a key is an image key by the type of its value alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SplitValues:
    """One logging call's values, sorted.

    Attributes:
        scalars: flat key -> scalar value (nested dicts flattened with "/"), for ``log_metrics``.
        images: key -> (images, captions) for ``log_images``; an empty list is a rank with no images this call.
    """

    scalars: dict[str, Any] = field(default_factory=dict)
    images: dict[str, tuple[list[Any], list[str | None]]] = field(default_factory=dict)


def _is_wandb_image(value: Any) -> bool:
    return type(value).__name__ == "Image" and type(value).__module__.startswith("wandb")


def is_image(value: Any) -> bool:
    """Whether ``value`` is one image: a PIL image, a ``wandb.Image``, or an array/tensor of 2 or more dimensions."""
    if _is_wandb_image(value):
        return True
    if type(value).__module__.startswith("PIL."):
        return True
    ndim = getattr(value, "ndim", None)
    return isinstance(ndim, int) and ndim >= 2


def is_image_value(value: Any) -> bool:
    """Whether a logged value is images: one image, or a list/tuple of them (an empty list counts: no images)."""
    if isinstance(value, (list, tuple)):
        return all(is_image(item) for item in value)
    return is_image(value)


def unwrap_image(value: Any) -> tuple[Any, str | None]:
    """An image and its caption; a ``wandb.Image`` gives up the PIL image and caption it holds."""
    if _is_wandb_image(value):
        return value.image, getattr(value, "_caption", None)
    return value, None


def split_values(values: Mapping[str, Any], separator: str = "/") -> SplitValues:
    """Sort a framework's values into scalars and images; nested dicts of scalars are flattened.

    Args:
        values: key -> scalar, image, list of images, or a dict of those.
        separator: joins nested keys (``{"loss": {"train": 1.0}}`` -> ``"loss/train"``).

    Returns:
        The ``SplitValues``; a key keeps its place in the order it came.

    Example:
        >>> split = split_values({"loss": 0.5, "lr": {"unet": 1e-4}, "samples": []})
        >>> split.scalars, list(split.images)
        ({'loss': 0.5, 'lr/unet': 0.0001}, ['samples'])
    """
    out = SplitValues()

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, inner in value.items():
                visit(f"{prefix}{separator}{key}" if prefix else str(key), inner)
        elif is_image_value(value):
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            pairs = [unwrap_image(item) for item in items]
            out.images[prefix] = ([image for image, _ in pairs], [caption for _, caption in pairs])
        else:
            out.scalars[prefix] = value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value

    for key, value in values.items():
        visit(str(key), value)
    return out
