"""Tests of sdxl_dist_log.images.convert: every image input users pass becomes a uint8 HWC array, or a clear error.

The classic traps of logging images from a training loop each have a test here: CHW tensors, fp16/bf16, floats in
[-1, 1] that would wrap around in uint8, fewer captions than images.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sdxl_dist_log.errors import ImageInputError
from sdxl_dist_log.images.convert import normalize_captions, to_uint8_hwc

torch = pytest.importorskip("torch")

FLOAT_TORCH_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _one(images, **kw) -> np.ndarray:
    out = to_uint8_hwc(images, **kw)
    assert len(out) == 1
    return out[0]


def _check_output(a: np.ndarray) -> None:
    assert isinstance(a, np.ndarray)
    assert a.dtype == np.uint8
    assert a.ndim == 3 and a.shape[2] in (1, 3, 4)
    assert a.flags["C_CONTIGUOUS"]


# ------------------------------------------------------------------------------------------- floats in a range


@pytest.mark.parametrize("dtype", FLOAT_TORCH_DTYPES, ids=str)
def test_minus_one_one_floats_clamp_never_wrap(dtype):
    # A plain cast of [-1, 1] floats to uint8 turns -1 into 255: we map, round to nearest and clamp.
    values = torch.tensor([-1.0, 0.0, 1.0, 1.5, -2.0, 0.5], dtype=dtype).reshape(1, 1, 6)
    got = _one(values, value_range=(-1.0, 1.0))[0, :, 0].tolist()
    # 0 -> 127.5 rounds up to 128; 0.5 -> 191.25 -> 191; out-of-range values clamp to the ends.
    assert got == [0, 128, 255, 255, 0, 191]


@pytest.mark.parametrize(
    "np_dtype", [np.float16, np.float32, np.float64, np.longdouble], ids=lambda d: np.dtype(d).name
)
def test_numpy_floats_map_clamp_round(np_dtype):
    values = np.array([[-1.0, 0.0, 1.0, 1.5, -2.0, 0.5]], dtype=np_dtype)
    assert _one(values, value_range=(-1, 1))[0, :, 0].tolist() == [0, 128, 255, 255, 0, 191]
    unit = np.array([[0.0, 0.5, 1.0, 2.0, -0.1, 1 / 255]], dtype=np_dtype)
    assert _one(unit)[0, :, 0].tolist() == [0, 128, 255, 255, 0, 1]


def test_nan_becomes_zero_and_infinities_clamp():
    values = np.array([[np.nan, np.inf, -np.inf, 0.25]], dtype=np.float32)
    assert _one(values)[0, :, 0].tolist() == [0, 255, 0, 64]


def test_huge_float16_and_float32_do_not_overflow_or_warn():
    values = np.array([[3e38, -3e38]], dtype=np.float32)
    with np.errstate(all="raise"):
        assert _one(values)[0, :, 0].tolist() == [255, 0]


def test_custom_value_range_0_255_floats():
    values = np.array([[0.0, 127.4, 127.5, 255.0, 300.0]], dtype=np.float64)
    assert _one(values, value_range=(0, 255))[0, :, 0].tolist() == [0, 127, 128, 255, 255]


@pytest.mark.parametrize("bad", [(1, 1), (1, 0), (0, float("inf")), (float("nan"), 1), "ab", (1,), None])
def test_bad_value_range(bad):
    with pytest.raises(ValueError, match="value_range"):
        to_uint8_hwc(np.zeros((2, 2), np.float32), value_range=bad)


# ---------------------------------------------------------------------------------- CHW, fp16, bf16


@pytest.mark.parametrize("dtype", FLOAT_TORCH_DTYPES + [torch.uint8, torch.bool], ids=str)
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_torch_chw_becomes_hwc(dtype, channels):
    # CHW tensors (`torch.randn(3, 64, 64)`) and fp16/bf16 are what training loops hand over.
    base = torch.arange(channels * 5 * 7, dtype=torch.float64).reshape(channels, 5, 7) % 2
    t = base.to(dtype)
    a = _one(t)
    _check_output(a)
    assert a.shape == (5, 7, channels)
    expected = (base.permute(1, 2, 0).numpy() * 255).astype(np.uint8) if dtype != torch.uint8 else (
        base.permute(1, 2, 0).numpy().astype(np.uint8)
    )
    np.testing.assert_array_equal(a, expected)


def test_randn_chw_example():
    a = _one(torch.randn(3, 64, 64))
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8


@pytest.mark.parametrize("dtype", FLOAT_TORCH_DTYPES, ids=str)
def test_requires_grad_tensor_is_detached(dtype):
    t = torch.full((3, 4, 4), 0.5, dtype=dtype, requires_grad=True)
    assert (_one(t) == 128).all()


def test_torch_hwc_accepted_when_unambiguous():
    t = torch.zeros(8, 6, 3)
    t[..., 0] = 1.0
    a = _one(t)
    assert a.shape == (8, 6, 3)
    assert (a[..., 0] == 255).all() and (a[..., 1:] == 0).all()


def test_torch_small_hwc_fallback_boundary():
    assert _one(torch.zeros(5, 6, 3)).shape == (5, 6, 3)
    with pytest.raises(ImageInputError, match="spatial sizes exceed 4"):
        to_uint8_hwc(torch.zeros(6, 4, 3))


def test_torch_both_ends_channel_sized_reads_chw():
    # (3, 5, 4): both 3 and 4 are channel counts; torch's convention, CHW, wins.
    assert _one(torch.zeros(3, 5, 4)).shape == (5, 4, 3)


def test_torch_hw_becomes_single_channel():
    a = _one(torch.ones(4, 5))
    assert a.shape == (4, 5, 1) and (a == 255).all()


def test_cpu_float32_input_tensor_is_not_modified():
    t = torch.tensor([[[-1.0, 0.0, 1.0]]])
    before = t.clone()
    to_uint8_hwc(t, value_range=(-1, 1))
    assert torch.equal(t, before)


def test_numpy_float_input_is_not_modified():
    a = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    before = a.copy()
    to_uint8_hwc(a, value_range=(-1, 1))
    np.testing.assert_array_equal(a, before)


# --------------------------------------------------------------------------------------------- batches and lists


@pytest.mark.parametrize("dtype", FLOAT_TORCH_DTYPES + [torch.uint8], ids=str)
def test_bchw_batch_splits_into_images(dtype):
    batch = torch.zeros(4, 3, 6, 5, dtype=dtype)
    for b in range(4):
        batch[b, 0] = b if dtype == torch.uint8 else b / 255
    out = to_uint8_hwc(batch)
    assert len(out) == 4
    for b, a in enumerate(out):
        _check_output(a)
        assert a.shape == (6, 5, 3)
        assert (a[..., 0] == b).all()


def test_list_of_tensors_and_batches_flattens_in_order():
    out = to_uint8_hwc([torch.zeros(3, 4, 4), torch.ones(2, 1, 4, 4), np.full((4, 4, 4), 7, np.uint8)])
    assert [a.shape for a in out] == [(4, 4, 3), (4, 4, 1), (4, 4, 1), (4, 4, 4)]
    assert [int(a[0, 0, 0]) for a in out] == [0, 255, 255, 7]


def test_numpy_4d_is_a_batch_of_hwc():
    out = to_uint8_hwc(np.zeros((3, 8, 9, 4), np.uint8))
    assert [a.shape for a in out] == [(8, 9, 4)] * 3


def test_tuple_and_empty_list():
    assert len(to_uint8_hwc((np.zeros((2, 2)), np.zeros((2, 2))))) == 2
    assert to_uint8_hwc([]) == []


# ---------------------------------------------------------------------------------------- numpy layouts, dtypes


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((5, 7), (5, 7, 1)),
        ((5, 7, 1), (5, 7, 1)),
        ((5, 7, 3), (5, 7, 3)),
        ((5, 7, 4), (5, 7, 4)),
        ((3, 5, 7), (5, 7, 3)),  # CHW: first axis is a channel count, last is not, H and W > 4
        ((1, 5, 7), (5, 7, 1)),
        ((4, 16, 16), (16, 16, 4)),
        ((3, 5, 4), (3, 5, 4)),  # both ends channel-sized: numpy's convention, HWC, wins
    ],
)
def test_numpy_layouts(shape, expected):
    a = _one(np.zeros(shape, np.uint8))
    _check_output(a)
    assert a.shape == expected


def test_numpy_chw_values_are_transposed():
    chw = np.arange(3 * 5 * 6, dtype=np.uint8).reshape(3, 5, 6)
    np.testing.assert_array_equal(_one(chw), chw.transpose(1, 2, 0))


def test_uint8_passes_through_unchanged():
    a = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(_one(a), a)


def test_non_contiguous_input_gives_contiguous_output():
    a = np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)[::2, ::-1]
    out = _one(a)
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, a)


@pytest.mark.parametrize("source", ["numpy", "torch"])
def test_bool_maps_to_0_and_255(source):
    mask = np.array([[True, False], [False, True]])
    image = mask if source == "numpy" else torch.from_numpy(mask)
    assert _one(image)[..., 0].tolist() == [[255, 0], [0, 255]]


@pytest.mark.parametrize(
    "dtype", [np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64], ids=lambda d: np.dtype(d).name
)
def test_integers_in_range_pass(dtype):
    a = np.array([[0, 1, 128, 255]], dtype=dtype) if np.dtype(dtype).itemsize > 1 or np.dtype(dtype).kind == "u" \
        else np.array([[0, 1, 127]], dtype=dtype)
    assert _one(a)[0, :, 0].tolist() == a[0].tolist()


@pytest.mark.parametrize(
    ("values", "dtype", "lo", "hi"),
    [([-3, 10], np.int16, -3, 10), ([0, 300], np.int32, 0, 300), ([0, 65535], np.uint16, 0, 65535)],
)
def test_integers_out_of_range_raise_with_min_max(values, dtype, lo, hi):
    with pytest.raises(ImageInputError, match=rf"image 0: shape \(1, 2\), dtype {np.dtype(dtype).name}") as info:
        to_uint8_hwc(np.array([values], dtype=dtype))
    assert f"from {lo} to {hi}" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.int16, torch.int32, torch.int64], ids=str)
def test_torch_int_out_of_range_names_batch_index(dtype):
    batch = torch.zeros(3, 3, 4, 4, dtype=dtype)
    batch[2, 1, 0, 0] = 256
    with pytest.raises(ImageInputError) as info:
        to_uint8_hwc([torch.zeros(3, 2, 2), batch])
    message = str(info.value)
    assert "image 1 (batch index 2)" in message
    assert "(3, 4, 4)" in message and str(dtype) in message and "0 to 256" in message


def test_torch_ints_in_range_pass():
    t = torch.tensor([[[0, 7, 255]]], dtype=torch.int64)
    assert _one(t)[0, :, 0].tolist() == [0, 7, 255]


# ------------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("image", "pattern"),
    [
        (np.zeros((0, 4, 3), np.uint8), r"empty"),
        (np.zeros((4, 0), np.float32), r"empty"),
        (np.zeros((4, 4, 2), np.uint8), r"1, 3 or 4"),
        (np.zeros((5, 8, 8), np.uint8), r"1, 3 or 4"),
        (np.zeros((8, 8, 5), np.float32), r"1, 3 or 4"),
        (np.zeros((2, 8, 8), np.uint8), r"1, 3 or 4"),
        (np.zeros((8,), np.uint8), r"1 dimensions"),
        (np.zeros((1, 2, 3, 8, 8), np.uint8), r"5 dimensions"),
        (np.zeros((4, 4), np.complex64), r"unsupported dtype"),
        (np.zeros((4, 4), object), r"unsupported dtype"),
        (torch.zeros(1, 2, 3, 8, 8), r"5 dimensions"),
        (np.zeros((3, 4, 2), np.uint8), r"1, 3 or 4"),  # not a 4x2 CHW: too small to be unambiguous
        (torch.zeros(2, 8, 8), r"1, 3 or 4"),
        (torch.zeros(2, 2, 3), r"1, 3 or 4"),  # not a 2x2 HWC: too small to be unambiguous
        (torch.zeros(5, 8, 8), r"1, 3 or 4"),
        (torch.zeros(0, 3, 8, 8), r"empty"),
        (torch.zeros(3, 8, 0), r"empty"),
        (torch.zeros(()), r"0 dimensions"),
        (torch.zeros(3, 4, 4, dtype=torch.complex64), r"complex"),
        ("not an image", r"unsupported type"),
        (None, r"unsupported type"),
    ],
)
def test_bad_images_raise_clear_errors(image, pattern):
    with pytest.raises(ImageInputError, match=pattern) as info:
        to_uint8_hwc([np.zeros((2, 2), np.uint8), image])
    message = str(info.value)
    assert message.startswith("image 1")
    if hasattr(image, "shape"):
        assert str(tuple(image.shape)) in message
        assert str(image.dtype) in message


def test_image_input_error_is_value_error():
    assert issubclass(ImageInputError, ValueError)


def test_empty_pil_image_raises():
    with pytest.raises(ImageInputError, match="image 0: .*empty"):
        to_uint8_hwc(Image.new("RGB", (0, 3)))


# ------------------------------------------------------------------------------------------------------- PIL


@pytest.mark.parametrize(
    ("mode", "channels"),
    [
        ("1", 1), ("L", 1), ("P", 3), ("LA", 4), ("La", 4), ("PA", 4), ("RGB", 3), ("RGBA", 4), ("RGBX", 3),
        ("RGBa", 4), ("CMYK", 3), ("YCbCr", 3), ("LAB", 3), ("HSV", 3), ("I", 1), ("I;16", 1), ("I;16B", 1),
        ("F", 1),
    ],
)
def test_pil_modes(mode, channels):
    a = _one(Image.new(mode, (5, 3)))
    _check_output(a)
    assert a.shape == (3, 5, channels)


def test_pil_rgb_values_and_mode_1():
    rgb = Image.new("RGB", (2, 2), (10, 20, 30))
    assert _one(rgb)[0, 0].tolist() == [10, 20, 30]
    assert _one(Image.new("1", (2, 2), 1))[0, 0, 0] == 255


def test_pil_palette_with_transparency_keeps_alpha():
    p = Image.new("P", (2, 2), 0)
    p.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    p.info["transparency"] = 0
    a = _one(p)
    assert a.shape == (2, 2, 4) and a[0, 0].tolist() == [255, 0, 0, 0]


def test_pil_la_keeps_alpha():
    a = _one(Image.new("LA", (2, 2), (100, 50)))
    assert a[0, 0].tolist() == [100, 100, 100, 50]


def test_pil_16_bit_is_scaled():
    wide = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = Image.fromarray(wide)
    assert image.mode.startswith("I;16")
    assert _one(image)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_pil_mode_i_out_of_range_raises():
    image = Image.fromarray(np.array([[0, 1000]], dtype=np.int32))
    assert image.mode == "I"
    with pytest.raises(ImageInputError, match="0 to 1000"):
        to_uint8_hwc(image)


def test_pil_mode_f_clamps_and_rounds():
    image = Image.fromarray(np.array([[-5.0, 1.6, 300.0]], dtype=np.float32))
    assert _one(image)[0, :, 0].tolist() == [0, 2, 255]


# -------------------------------------------------------------------------------------------------- captions


def test_captions_none():
    assert normalize_captions(None, 3) == [None, None, None]
    assert normalize_captions(None, 0) == []


def test_single_caption_single_image():
    assert normalize_captions("a cat", 1) == ["a cat"]


@pytest.mark.parametrize("n", [0, 2, 5])
def test_single_caption_many_images_is_an_error(n):
    with pytest.raises(ImageInputError, match=f"1 caption .* for {n} images"):
        normalize_captions("a cat", n)


@pytest.mark.parametrize(("n_captions", "n_images"), [(1, 3), (2, 3), (0, 1), (4, 3)])
def test_caption_count_mismatch_names_both(n_captions, n_images):
    with pytest.raises(ImageInputError, match=f"^{n_captions} captions for {n_images} images"):
        normalize_captions([f"c{i}" for i in range(n_captions)], n_images)


def test_captions_list_and_tuple_with_none_and_non_str():
    assert normalize_captions(["a", None, 3], 3) == ["a", None, "3"]
    assert normalize_captions(("a", "b"), 2) == ["a", "b"]


@pytest.mark.parametrize("bad", [{"a": 1}, 5, b"bytes"])
def test_captions_bad_type(bad):
    with pytest.raises(ImageInputError, match="captions must be"):
        normalize_captions(bad, 1)


@pytest.mark.parametrize("n", [-1, 1.0, True])
def test_captions_bad_n_images(n):
    with pytest.raises(ValueError, match="n_images"):
        normalize_captions(None, n)


# ------------------------------------------------------------------------------------------------ import hygiene


def test_images_import_neither_torch_nor_wandb():
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from sdxl_dist_log.images import convert, transport\n"
        "convert.to_uint8_hwc([np.zeros((3, 4, 4), np.float32), Image.new('P', (2, 2))])\n"
        "transport.decode_from_transport(*transport.encode_for_transport(convert.to_uint8_hwc(np.zeros((2, 2)))))\n"
        "bad = [m for m in ('torch', 'wandb', 'torch.distributed') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------------------------------ CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", FLOAT_TORCH_DTYPES + [torch.uint8, torch.bool, torch.int32], ids=str)
def test_cuda_tensors(dtype):
    values = torch.tensor([-1.0, 0.0, 1.0, 1.5], device="cuda").reshape(1, 1, 1, 4).expand(2, 3, 2, 4)
    if dtype.is_floating_point:
        out = to_uint8_hwc(values.to(dtype), value_range=(-1, 1))
        expected = [0, 128, 255, 255]
    else:
        source = torch.tensor([0, 1, 1, 0], device="cuda").reshape(1, 1, 1, 4).expand(2, 3, 2, 4).to(dtype)
        out = to_uint8_hwc(source)
        expected = [0, 255, 255, 0] if dtype == torch.bool else [0, 1, 1, 0]
    assert len(out) == 2
    for a in out:
        _check_output(a)
        assert a.shape == (2, 4, 3)
        assert a[0, :, 0].tolist() == expected
