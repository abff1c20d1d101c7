"""Pure image conversion for logging: PIL / numpy / torch images -> contiguous uint8 HWC arrays, and captions.

Everything here is a pure function: no ranks, no collectives, no wandb. What ``to_uint8_hwc`` returns travels to the
primary rank as uint8 bytes (``images/transport.py``), never as pickles.

torch is never imported by this module: a torch tensor can only exist when torch is already in ``sys.modules``, so
numpy and PIL inputs never pay for (or require) torch.

Input rules of ``to_uint8_hwc`` (CHW tensors, fp16/bf16 and [-1, 1] floats are the common traps):

=============  ==========================================================================================
layout         numpy / PIL: HW, HWC (C in 1, 3, 4); CHW when unambiguous (first axis in 1, 3, 4, last
               axis not, H and W both > 4); a 4-D numpy array is a batch of such images.
               torch: HW, CHW, HWC when unambiguous (last axis in 1, 3, 4, first not, H and W both > 4),
               BCHW (a batch becomes several images; BHWC when unambiguous). When both ends could be
               channels, torch reads CHW and numpy reads HWC.
float          float16/32/64, bfloat16: mapped from ``value_range`` to 0..255, clamped (never wrapped),
               rounded to nearest (halves up), NaN -> 0.
uint8          passed through (the result may share memory with a uint8 numpy input or CPU tensor).
bool           False -> 0, True -> 255.
other ints     must already lie in 0..255, else ``ImageInputError`` with the min and max.
output         C-contiguous uint8 arrays of shape (H, W, C), C in {1, 3, 4}; grayscale stays (H, W, 1).
=============  ==========================================================================================
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from sdxl_dist_log.errors import ImageInputError

__all__ = ["CHANNELS", "normalize_captions", "to_uint8_hwc"]

CHANNELS = (1, 3, 4)
"""Channel counts an image may have: gray, RGB, RGBA."""

_PIL_PASSTHROUGH = ("L", "RGB", "RGBA")
_PIL_ALPHA_MODES = ("LA", "La", "PA", "RGBa")


def _where(index: int, batch: int | None, shape: Sequence[int], dtype: object) -> str:
    at = f"image {index}" if batch is None else f"image {index} (batch index {batch})"
    return f"{at}: shape {tuple(int(s) for s in shape)}, dtype {dtype}"


def image_error(index: int, batch: int | None, shape: Sequence[int], dtype: object, problem: str) -> ImageInputError:
    """The error for one bad image, naming its index (and batch index), shape and dtype."""
    return ImageInputError(f"{_where(index, batch, shape, dtype)}: {problem}")


# --------------------------------------------------------------------------------------------------- conversion


def has_images(images: Any) -> bool:
    """False for None and an empty list or tuple (a rank with no samples this call); True for anything else."""
    return images is not None and not (isinstance(images, (list, tuple)) and len(images) == 0)


def to_uint8_hwc(images: Any, *, value_range: tuple[float, float] = (0.0, 1.0)) -> list[np.ndarray]:
    """Convert one image, a batch, or a list of images to a list of contiguous uint8 (H, W, C) arrays.

    Args:
        images: one image or a list/tuple of images. An image is a ``PIL.Image.Image`` (any mode: "1" -> L,
            "P"/"PA" -> RGB or RGBA, "LA" -> RGBA, "I;16" scaled 0..65535 -> 0..255, "I" read as integers that
            must lie in 0..255, "F" read as 0..255 floats like PIL does, CMYK/YCbCr/LAB/HSV -> RGB), a numpy array
            or a torch tensor (CPU or CUDA; moved to the CPU once per tensor). A 4-D tensor or array is a batch and
            yields one image per batch entry. See the module docstring for layouts and dtypes.
        value_range: ``(low, high)`` of float inputs: ``low`` maps to 0 and ``high`` to 255; values outside are
            clamped. Use ``(-1.0, 1.0)`` for diffusion model outputs. Ignored for integer and bool inputs.

    Returns:
        One C-contiguous uint8 array of shape (H, W, C), C in {1, 3, 4}, per image, in input order (batches
        expanded in place).

    Raises:
        ImageInputError: an image has an unsupported type, dtype or number of dimensions (5-D and more), is empty,
            has no channel axis of size 1, 3 or 4 (e.g. 2 or 5 channels), or holds integers outside 0..255.
            The message names the image index, the batch index inside a batch, the shape and the dtype.
            Also when ``value_range`` is not two finite numbers with low < high.

    Example:
        >>> import numpy as np
        >>> [a.shape for a in to_uint8_hwc(np.zeros((2, 3, 8, 8), np.float32))]
        [(8, 8, 3), (8, 8, 3)]
    """
    low, high = _check_value_range(value_range)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    out: list[np.ndarray] = []
    for index, item in enumerate(items):
        out.extend(_convert_item(item, index, low, high))
    return out


def checked_images(
    images: Any, captions: str | Sequence[str | None] | None, value_range: tuple[float, float]
) -> tuple[list[np.ndarray], list[str | None]]:
    """The images of one logging call as uint8 HWC arrays, with one caption (or None) each; none for None or ``[]``.

    Raises:
        ImageInputError: as ``to_uint8_hwc`` and ``normalize_captions``.
    """
    arrays = to_uint8_hwc(images, value_range=value_range) if has_images(images) else []
    return arrays, normalize_captions(captions, len(arrays))


def _check_value_range(value_range: object) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value_range)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ImageInputError(f"value_range={value_range!r} must be a pair (low, high) of numbers") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ImageInputError(f"value_range={value_range!r} must be finite with low < high")
    return low, high


def _convert_item(item: Any, index: int, low: float, high: float) -> list[np.ndarray]:
    if isinstance(item, Image.Image):
        return [_pil_to_hwc(item, index)]
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(item, torch.Tensor):
        return _tensor_to_hwc(item, index, low, high, torch)
    if isinstance(item, np.ndarray) or hasattr(item, "__array_interface__") or hasattr(item, "__array__"):
        try:
            array = np.asarray(item)
        except Exception as exc:  # noqa: BLE001 - any foreign array type may fail its own way
            raise ImageInputError(f"image {index}: {type(item).__name__} cannot be read as an array: {exc}") from exc
        return _array_to_hwc(array, index, low, high, layout="hwc", dtype_name=str(array.dtype))
    raise ImageInputError(
        f"image {index}: unsupported type {type(item).__module__}.{type(item).__qualname__}; "
        "expected a PIL.Image, a numpy array or a torch tensor"
    )


def _tensor_to_hwc(tensor: Any, index: int, low: float, high: float, torch: Any) -> list[np.ndarray]:
    shape = tuple(tensor.shape)
    dtype = tensor.dtype
    if dtype.is_complex:
        raise image_error(index, None, shape, dtype, "complex images are not supported")
    # Validate the shape before any device transfer, so a bad input costs no copy.
    _resolve_layout(shape, index, dtype, layout="chw")
    try:
        t = tensor.detach()
        if dtype.is_floating_point:
            array = t.to("cpu", torch.float32).numpy()
        elif dtype in (torch.uint8, torch.bool):
            array = t.to("cpu").numpy()
        else:
            array = t.to("cpu", torch.int64).numpy()
    except Exception as exc:  # noqa: BLE001 - sparse, meta, quantized... tensors fail in torch's own ways
        raise image_error(index, None, shape, dtype, f"cannot be copied to a CPU numpy array: {exc}") from exc
    return _array_to_hwc(array, index, low, high, layout="chw", dtype_name=str(dtype))


def _resolve_layout(
    shape: tuple[int, ...], index: int, dtype: object, *, layout: str
) -> tuple[str, bool]:
    """Return (``"hw"``, ``"hwc"`` or ``"chw"``, is_batch) for a shape, or raise ImageInputError."""
    ndim = len(shape)
    if ndim not in (2, 3, 4):
        raise image_error(
            index, None, shape, dtype,
            f"{ndim} dimensions; expected 2 (HW), 3 (CHW or HWC) or 4 (a batch, BCHW or BHWC)",
        )
    if any(s == 0 for s in shape):
        raise image_error(index, None, shape, dtype, "the image is empty (a dimension is 0)")
    if ndim == 2:
        return "hw", False
    first, last = shape[-3], shape[-1]
    first_ok, last_ok = first in CHANNELS, last in CHANNELS
    # The library's own convention (torch CHW, numpy HWC) wins; the other layout is a fallback, taken only when
    # its two spatial axes exceed 4, so that a mistaken 2- or 5-channel image cannot pass as a tiny one.
    if layout == "chw":
        found = "chw" if first_ok else "hwc" if last_ok and min(shape[-3], shape[-2]) > 4 else None
    else:
        found = "hwc" if last_ok else "chw" if first_ok and min(shape[-2], shape[-1]) > 4 else None
    if found is None:
        what = "channel axis (first)" if layout == "chw" else "channel axis (last)"
        raise image_error(
            index, None, shape, dtype,
            f"cannot find a {what} of size 1, 3 or 4 (gray, RGB, RGBA); 2 or 5 channels are not images we can "
            "log, and the other layout is read only when both its spatial sizes exceed 4",
        )
    return found, ndim == 4


def _array_to_hwc(
    array: np.ndarray, index: int, low: float, high: float, *, layout: str, dtype_name: str
) -> list[np.ndarray]:
    shape = array.shape
    found, is_batch = _resolve_layout(shape, index, dtype_name, layout=layout)
    pixels = _to_uint8(array, index, low, high, dtype_name, is_batch)
    if found == "hw":
        pixels = pixels[:, :, None]
    elif found == "chw":
        pixels = np.moveaxis(pixels, -3, -1)
    pixels = np.ascontiguousarray(pixels)
    if is_batch:
        return [pixels[b] for b in range(pixels.shape[0])]
    return [pixels]


def _to_uint8(array: np.ndarray, index: int, low: float, high: float, dtype_name: str, is_batch: bool) -> np.ndarray:
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return array
    if kind == "b":
        return array.view(np.uint8) * np.uint8(255)
    if kind in "iu":
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            batch = None
            if is_batch:
                flat = array.reshape(array.shape[0], -1)
                bad = (flat.min(axis=1) < 0) | (flat.max(axis=1) > 255)
                batch = int(np.argmax(bad))
                lo, hi = int(flat[batch].min()), int(flat[batch].max())
            shape = array.shape[1:] if is_batch else array.shape
            raise image_error(
                index, batch, shape, dtype_name,
                f"integer pixels must lie in 0..255 but range from {lo} to {hi}; "
                "scale them to uint8, or pass floats with value_range",
            )
        return array.astype(np.uint8)
    if kind == "f":
        work = array.astype(np.float64 if array.dtype.itemsize > 4 else np.float32)  # always a fresh copy
        with np.errstate(over="ignore", invalid="ignore"):
            work -= low
            work *= 255.0 / (high - low)
            np.clip(work, 0.0, 255.0, out=work)
            work += 0.5
            np.floor(work, out=work)
        work[np.isnan(work)] = 0.0
        return work.astype(np.uint8)
    shape = array.shape[1:] if is_batch else array.shape
    raise image_error(index, None, shape, dtype_name,
                      "unsupported dtype; expected float, integer, uint8 or bool pixels")


def _pil_to_hwc(image: Image.Image, index: int) -> np.ndarray:
    mode = image.mode
    if image.width == 0 or image.height == 0:
        raise ImageInputError(f"image {index}: PIL image of mode {mode!r}, size {image.size} is empty")
    if mode in _PIL_PASSTHROUGH:
        array = np.asarray(image)
    elif mode == "1":
        array = np.asarray(image.convert("L"))
    elif mode == "P":
        array = np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB"))
    elif mode.startswith("I;16"):
        wide = np.asarray(image).astype(np.uint32)  # 0..65535 -> 0..255, rounded: x / 257 == x * 255 / 65535
        array = ((wide + 128) // 257).astype(np.uint8)
    elif mode == "I":
        array = _to_uint8(np.asarray(image), index, 0.0, 255.0, "PIL mode I (int32)", False)
    elif mode == "F":
        array = _to_uint8(np.asarray(image), index, 0.0, 255.0, "PIL mode F (float32)", False)
    else:
        # LA, La, PA, RGBa -> RGBA (alpha kept); RGBX, CMYK, YCbCr, LAB (its "A" is a colour axis), HSV -> RGB
        target = "RGBA" if mode in _PIL_ALPHA_MODES else "RGB"
        try:
            if mode == "La":  # premultiplied: Pillow converts it only to LA
                image = image.convert("LA")
            array = np.asarray(image.convert(target))
        except (ValueError, OSError) as exc:
            raise ImageInputError(
                f"image {index}: PIL image of mode {mode!r}, size {image.size} cannot be converted to {target}: {exc}"
            ) from exc
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------------------------------------------- captions


def normalize_captions(captions: str | Sequence[str | None] | None, n_images: int) -> list[str | None]:
    """Return exactly one caption (or None) per image, or say clearly why the captions do not fit.

    A single string is accepted only for a single image: repeating one caption under many images hides a
    mistake more often than it saves typing, so pass ``[caption] * n`` to mean that.

    Args:
        captions: None (no captions), one string (one image), or a list/tuple of strings or None, one per image.
            Non-string entries are turned into strings with ``str``.
        n_images: number of images the captions belong to (after batches are expanded).

    Returns:
        A list of ``n_images`` entries, each a str or None.

    Raises:
        ImageInputError: the number of captions differs from ``n_images`` ("N captions for M images"), a single
            string is given for several images, or ``captions`` is neither None, a str, nor a list/tuple.
        ValueError: ``n_images`` is negative (a bug in the caller, not in the user's input).
    """
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"n_images={n_images!r} must be a non-negative int")
    if captions is None:
        return [None] * n_images
    if isinstance(captions, str):
        if n_images != 1:
            raise ImageInputError(
                f"1 caption (a single str) for {n_images} images; pass a list of {n_images} captions "
                f"(e.g. [caption] * {n_images} to repeat it)"
            )
        return [captions]
    if not isinstance(captions, (list, tuple)):
        raise ImageInputError(f"captions must be None, a str or a list of str, not {type(captions).__name__}")
    if len(captions) != n_images:
        raise ImageInputError(f"{len(captions)} captions for {n_images} images; pass one caption (or None) per image")
    return [None if c is None else c if isinstance(c, str) else str(c) for c in captions]
