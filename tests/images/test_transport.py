"""Tests of sdxl_dist_log.images.transport: fair shares, the offer table, and images as bytes through the gather."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sdxl_dist_log.errors import ImageInputError
from sdxl_dist_log.images.convert import to_uint8_hwc
from sdxl_dist_log.images.transport import (
    NO_CAPTION,
    OFFER_HEADER,
    SLOT_FIELDS,
    decode_from_transport,
    encode_captions,
    encode_for_transport,
    fair_shares,
    pack_offer,
    pack_payload,
    plan_gather,
    transport_nbytes,
    unpack_payloads,
)

torch = pytest.importorskip("torch")


# ----------------------------------------------------------------------------------------------- fair shares


def _check_fair(counts, cap, shares):
    """Feasible, full, and max-min fair with ties to lower ranks (these properties determine the answer)."""
    assert len(shares) == len(counts)
    assert sum(shares) == min(cap, sum(counts))
    for r, (s, c) in enumerate(zip(shares, counts)):
        assert 0 <= s <= c
        if s < c:  # an unsaturated rank: nobody holds more than one above it, and only a lower rank holds one more
            for q, t in enumerate(shares):
                assert t <= s + 1, (counts, cap, shares)
                if t == s + 1:
                    assert q < r, (counts, cap, shares)


@pytest.mark.parametrize(
    ("counts", "cap", "expected"),
    [
        ([], 5, []),
        ([4, 4], 0, [0, 0]),
        ([0, 0, 0], 10, [0, 0, 0]),
        ([0, 0, 0], 0, [0, 0, 0]),
        ([3, 3], 16, [3, 3]),
        ([8, 8], 16, [8, 8]),
        ([8, 8, 8, 8], 16, [4, 4, 4, 4]),
        ([100, 0, 0, 0], 16, [16, 0, 0, 0]),
        ([100, 1, 1, 1], 16, [13, 1, 1, 1]),
        ([1, 100, 2, 0], 16, [1, 13, 2, 0]),
        ([5, 5, 5], 7, [3, 2, 2]),
        ([5, 5, 5], 2, [1, 1, 0]),
        ([0, 5, 5], 1, [0, 1, 0]),
        ([1, 8, 8, 2], 10, [1, 4, 3, 2]),
        ([2, 9, 3, 9], 12, [2, 4, 3, 3]),
        ([10**9, 10**9], 10**12, [10**9, 10**9]),
    ],
)
def test_fair_shares_examples(counts, cap, expected):
    shares = fair_shares(counts, cap)
    assert shares == expected
    _check_fair(counts, cap, shares)


def _brute_force(counts, cap):
    """All feasible full allocations satisfying the fairness property (there must be exactly one)."""
    total = min(cap, sum(counts))
    found = []
    for shares in itertools.product(*(range(c + 1) for c in counts)):
        if sum(shares) != total:
            continue
        try:
            _check_fair(counts, cap, list(shares))
        except AssertionError:
            continue
        found.append(list(shares))
    return found


def test_fair_shares_exhaustive_small():
    checked = 0
    for n_ranks in range(1, 4):
        for counts in itertools.product(range(5), repeat=n_ranks):
            for cap in range(sum(counts) + 2):
                shares = fair_shares(list(counts), cap)
                _check_fair(counts, cap, shares)
                assert _brute_force(counts, cap) == [shares], (counts, cap)
                checked += 1
    assert checked > 1000


def test_fair_shares_random_larger_properties():
    rng = np.random.default_rng(3)
    for _ in range(300):
        counts = rng.integers(0, 40, rng.integers(1, 17)).tolist()
        cap = int(rng.integers(0, 200))
        _check_fair(counts, cap, fair_shares(counts, cap))


def test_fair_shares_accepts_numpy_ints_and_is_deterministic():
    counts = list(np.array([3, 9, 1], dtype=np.int64))
    assert fair_shares(counts, np.int64(8)) == fair_shares([3, 9, 1], 8) == [3, 4, 1]


@pytest.mark.parametrize(("counts", "cap"), [([1, -1], 3), ([1, 2], -1), ([1.5], 2), ([1], 2.0), ([True], 1)])
def test_fair_shares_rejects_bad_input(counts, cap):
    with pytest.raises(ValueError, match="non-negative int"):
        fair_shares(counts, cap)


# ------------------------------------------------------------------------------------------------- transport


def _random_images():
    rng = np.random.default_rng(4)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(3, 5, 3), (1, 1, 1), (8, 2, 4), (6, 6, 3)]]


@pytest.mark.parametrize("count", [0, 1, 4])
def test_transport_round_trip(count):
    images = _random_images()[:count]
    shapes, buffer = encode_for_transport(images)
    assert shapes.dtype == np.int64 and shapes.shape == (count, 3)
    assert buffer.dtype == np.uint8 and buffer.ndim == 1 and buffer.size == transport_nbytes(shapes)
    decoded = decode_from_transport(shapes, buffer)
    assert len(decoded) == count
    for got, want in zip(decoded, images):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.uint8 and got.shape == want.shape


def test_decode_returns_views_of_the_buffer():
    shapes, buffer = encode_for_transport(_random_images())
    for image in decode_from_transport(shapes, buffer):
        assert np.shares_memory(image, buffer)


def test_encode_copies_non_contiguous_images_correctly():
    base = np.random.default_rng(5).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    view = base[::2, ::-3]
    shapes, buffer = encode_for_transport([view])
    np.testing.assert_array_equal(decode_from_transport(shapes, buffer)[0], view)


def test_transport_through_torch_tensors():
    # What the collectives do: send shapes and buffer as tensors, decode what arrives.
    images = to_uint8_hwc([torch.rand(2, 3, 4, 5), np.zeros((3, 3), np.uint8)])
    shapes, buffer = encode_for_transport(images)
    t_shapes, t_buffer = torch.from_numpy(shapes), torch.from_numpy(buffer)
    decoded = decode_from_transport(t_shapes.numpy(), t_buffer)
    for got, want in zip(decoded, images):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("delta", [-1, 1])
def test_decode_rejects_wrong_buffer_length(delta):
    shapes, buffer = encode_for_transport(_random_images())
    wrong = np.zeros(buffer.size + delta, np.uint8)
    with pytest.raises(ValueError, match=rf"buffer holds {buffer.size + delta} bytes but the 4 image shapes need "
                                         rf"{buffer.size} bytes"):
        decode_from_transport(shapes, wrong)


@pytest.mark.parametrize(
    ("shapes", "buffer", "pattern"),
    [
        (np.zeros((2, 2), np.int64), np.zeros(0, np.uint8), r"\(N, 3\)"),
        (np.array([[2, 2, 2]]), np.zeros(8, np.uint8), r"shapes\[0\]"),
        (np.array([[2, 0, 3]]), np.zeros(0, np.uint8), r"shapes\[0\]"),
        (np.array([[1, 1, 3], [-1, 2, 3]]), np.zeros(3, np.uint8), r"shapes\[1\]"),
        (np.array([[1.0, 1.0, 3.0]]), np.zeros(3, np.uint8), r"int table"),
        (np.array([[1, 1, 3]]), np.zeros(3, np.int64), r"1-D uint8"),
        (np.array([[1, 1, 3]]), np.zeros((1, 3), np.uint8), r"1-D uint8"),
    ],
)
def test_decode_rejects_malformed(shapes, buffer, pattern):
    with pytest.raises(ValueError, match=pattern):
        decode_from_transport(shapes, buffer)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2), np.uint8), np.zeros((2, 2, 3), np.float32), np.zeros((2, 2, 2), np.uint8)]
)
def test_encode_rejects_non_hwc_uint8(bad):
    with pytest.raises(ImageInputError, match="image 1"):
        encode_for_transport([np.zeros((1, 1, 1), np.uint8), bad])



# ------------------------------------------------------------------------------ the offer, the plan, the payloads


def _rank_images(rank: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(rank)
    return [rng.integers(0, 256, (2 + i, 3 + rank, (1, 3, 4)[i % 3]), dtype=np.uint8) for i in range(n)]


def test_offer_rows_have_one_length_whatever_they_hold():
    cap = 4
    empty = pack_offer([], [], cap, failed=False)
    full = pack_offer(_rank_images(0, 9), encode_captions([None] * 9), cap, failed=False)
    failed = pack_offer(_rank_images(0, 2), encode_captions(["a", "b"]), cap, failed=True)
    assert empty.shape == full.shape == failed.shape == (OFFER_HEADER + cap * SLOT_FIELDS,)
    assert full[1] == 9  # every image is offered, only the first cap are described
    assert failed[0] == 1 and failed[1] == 0


@pytest.mark.parametrize("offered", [[3, 0, 5], [0, 0, 0], [1, 1, 1], [8, 8, 8], [2, 7, 0]])
def test_the_gather_round_trip_keeps_rank_order_shares_and_captions(offered):
    cap = 6
    images = [_rank_images(rank, n) for rank, n in enumerate(offered)]
    captions = [[None if i % 2 else f"r{rank}-{i} ✓" for i in range(n)] for rank, n in enumerate(offered)]
    encoded = [encode_captions(c) for c in captions]
    rows = np.stack([pack_offer(images[r], encoded[r], cap, failed=False) for r in range(3)])
    plan = plan_gather(rows, cap)
    assert plan.failed_ranks == [] and plan.offered == offered
    assert plan.shares == fair_shares(offered, cap)
    payloads = [pack_payload(images[r], encoded[r], plan.shares[r]) for r in range(3)]
    assert [len(p) for p in payloads] == plan.sizes  # every rank knew every size before sending
    padded = [np.concatenate([p, np.zeros(max(plan.sizes) - len(p), np.uint8)]) for p in payloads]  # as gather pads
    got_images, got_names = unpack_payloads(plan, padded, label_ranks=True)
    want = [(r, i) for r in range(3) for i in range(plan.shares[r])]
    assert len(got_images) == len(got_names) == len(want)
    for (r, i), image, name in zip(want, got_images, got_names):
        np.testing.assert_array_equal(image, images[r][i])
        assert name == (f"[rank {r}]" if captions[r][i] is None else f"[rank {r}] {captions[r][i]}")


def test_one_rank_without_labels_keeps_none_and_empty_captions_apart():
    images = _rank_images(0, 3)
    encoded = encode_captions([None, "", "x"])
    plan = plan_gather(pack_offer(images, encoded, 3, failed=False)[None, :], 3)
    assert plan.caption_lengths == [[NO_CAPTION, 0, 1]]
    _, names = unpack_payloads(plan, [pack_payload(images, encoded, 3)], label_ranks=False)
    assert names == [None, None, "x"]  # an empty caption has nothing to show either


def test_a_failed_rank_stops_the_gather_on_every_rank():
    rows = np.stack([pack_offer(_rank_images(0, 2), [None, None], 4, failed=False),
                     pack_offer([], [], 4, failed=True)])
    plan = plan_gather(rows, 4)
    assert plan.failed_ranks == [1]
    assert plan.shares == [0, 0] and plan.sizes == [0, 0]


def test_plan_rejects_rows_of_another_cap():
    with pytest.raises(ValueError, match="offer rows have shape"):
        plan_gather(np.zeros((2, OFFER_HEADER + 2 * SLOT_FIELDS)), 3)


def test_zero_cap_sends_nothing():
    rows = np.stack([pack_offer(_rank_images(r, 2), [None, None], 0, failed=False) for r in range(2)])
    plan = plan_gather(rows, 0)
    assert plan.shares == [0, 0] and plan.sizes == [0, 0] and plan.offered == [2, 2]
