"""sdxl_dist_log.integrations.values: a framework's mixed dict sorted into scalars and images, the same on every rank."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdxl_dist_log.integrations.values import is_image_value, split_values


@pytest.mark.parametrize(
    ("value", "images"),
    [
        (0.5, False), (3, False), (np.float32(1.0), False), (np.array(2.0), False), ("text", False),
        (np.zeros((4, 4)), True), (np.zeros((2, 3, 8, 8)), True), (Image.new("RGB", (4, 4)), True),
        ([], True), ([np.zeros((4, 4, 3))], True), ([Image.new("L", (2, 2)), np.zeros((4, 4))], True),
        ([1.0, 2.0], False),
    ],
)
def test_a_value_is_images_by_its_type(value: object, images: bool) -> None:
    assert is_image_value(value) is images


def test_split_flattens_nested_scalars_and_keeps_the_order() -> None:
    split = split_values({"b": 1.0, "a": {"x": 2, "y": {"z": np.array(3.0)}}, "img": [np.zeros((4, 4))], "e": []})
    assert split.scalars == {"b": 1.0, "a/x": 2, "a/y/z": 3.0}
    assert list(split.images) == ["img", "e"] and split.images["e"] == ([], [])


def test_wandb_images_give_up_their_picture_and_caption() -> None:
    wandb = pytest.importorskip("wandb")
    picture = Image.new("RGB", (8, 8), color=(255, 0, 0))
    split = split_values({"validation": [wandb.Image(picture, caption="0: a red square"), wandb.Image(picture)]})
    images, captions = split.images["validation"]
    assert captions == ["0: a red square", None]
    assert all(np.asarray(image).shape == (8, 8, 3) for image in images)


def test_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    split = split_values({"loss": torch.tensor(0.5), "samples": torch.zeros(2, 3, 8, 8)})
    assert list(split.scalars) == ["loss"] and list(split.images) == ["samples"]
