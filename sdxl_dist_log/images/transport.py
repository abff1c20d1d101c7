"""How images travel from every rank to the primary: pure pack / plan / unpack, no torch.distributed here.

One ``log_images`` call is two steps (``wandb_logger.py`` runs them through ``collectives.py``):

1. every rank offers a fixed-size float64 row (``pack_offer``): an error flag, how many images it has, and a table of
   ``max_images_to_log`` slots, each (height, width, channels, caption bytes or ``NO_CAPTION``). The offers travel
   like a ``log_metrics`` row (``ImageStage``: one all_gather on one node, the two-level pattern on several): the
   primary derives the ``GatherPlan`` (``plan_gather``: who failed, the fair share each rank may send, the byte size
   of every payload) and every rank learns who failed and which ranks send how many bytes;
2. only the ranks with a share send it as one flat uint8 buffer (``pack_payload``: the images' bytes back to back,
   then the UTF-8 captions) to the primary (``hierarchy.bytes_to_primary``), which cuts the buffers back into images
   and captions (``unpack_payloads``). Images travel as bytes, never as pickles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sdxl_dist_log.errors import ImageInputError
from sdxl_dist_log.exchange import Steps, bytes_to_primary
from sdxl_dist_log.framing import CallInfo
from sdxl_dist_log.hierarchy import STAGE_HEADER, call_rounds
from sdxl_dist_log.images.convert import CHANNELS, image_error
from sdxl_dist_log.topology import Topology

__all__ = [
    "GatherPlan",
    "Gathered",
    "ImageStage",
    "decode_from_transport",
    "encode_for_transport",
    "fair_shares",
    "gather_steps",
    "pack_offer",
    "pack_payload",
    "plan_gather",
    "transport_nbytes",
    "unpack_payloads",
]

# The offer row: a header, then ``cap`` slots of SLOT_FIELDS values. float64 holds every size exactly.
OFFER_ERROR, OFFER_COUNT = 0, 1
OFFER_HEADER = 2
HEIGHT, WIDTH, CHANNEL_COUNT, CAPTION_BYTES = 0, 1, 2, 3
SLOT_FIELDS = 4
NO_CAPTION = -1
"""A slot's caption length when the image has no caption (an empty caption has length 0)."""


def encode_captions(captions: Sequence[str | None]) -> list[bytes | None]:
    """UTF-8 bytes of each caption; None stays None (no caption, unlike an empty one)."""
    return [None if c is None else c.encode() for c in captions]


def pack_offer(images: Sequence[np.ndarray], captions: Sequence[bytes | None], cap: int, *, failed: bool) -> np.ndarray:
    """This rank's offer row: error flag, image count, and the shapes and caption sizes of its first ``cap`` images.

    Args:
        images: uint8 (H, W, C) arrays, as ``to_uint8_hwc`` returns them.
        captions: one encoded caption (or None) per image.
        cap: ``max_images_to_log``; the row has room for that many slots on every rank, so every rank's row has the
            same length whatever it holds.
        failed: this rank's input was invalid: the row still travels (no rank may skip the collective), flagged.

    Returns:
        A float64 row of ``OFFER_HEADER + cap * SLOT_FIELDS`` values.
    """
    row = np.full(OFFER_HEADER + cap * SLOT_FIELDS, -1.0)
    row[OFFER_ERROR] = 1.0 if failed else 0.0
    row[OFFER_COUNT] = 0 if failed else len(images)
    slots = row[OFFER_HEADER:].reshape(cap, SLOT_FIELDS)
    if not failed:
        for i, (image, caption) in enumerate(zip(images[:cap], captions[:cap])):
            slots[i, [HEIGHT, WIDTH, CHANNEL_COUNT]] = image.shape
            slots[i, CAPTION_BYTES] = NO_CAPTION if caption is None else len(caption)
    return row


@dataclass(frozen=True)
class GatherPlan:
    """What every rank derives from the gathered offers, identically.

    Attributes:
        failed_ranks: ranks whose input was invalid (then nothing is gathered).
        offered: images each rank offered.
        shares: images each rank sends (``fair_shares`` of ``offered`` under the cap).
        shapes: per rank, an int64 (share, 3) table of (H, W, C).
        caption_lengths: per rank, each sent image's caption length in bytes, or ``NO_CAPTION``.
        sizes: per rank, the payload's length in bytes.
    """

    failed_ranks: list[int]
    offered: list[int]
    shares: list[int]
    shapes: list[np.ndarray]
    caption_lengths: list[list[int]]
    sizes: list[int]


def plan_gather(rows: np.ndarray, cap: int) -> GatherPlan:
    """Turn the gathered offer rows (one per rank) into the plan of the byte gather.

    Raises:
        ValueError: ``rows`` does not have ``OFFER_HEADER + cap * SLOT_FIELDS`` columns.
    """
    width = OFFER_HEADER + cap * SLOT_FIELDS
    if rows.ndim != 2 or rows.shape[1] < width:
        raise ValueError(f"offer rows have shape {rows.shape}; expected (ranks, {width})")
    failed = [r for r in range(len(rows)) if rows[r, OFFER_ERROR] != 0]
    offered = [int(n) for n in rows[:, OFFER_COUNT]]
    shares = [0] * len(rows) if failed else fair_shares(offered, cap)
    slots = rows[:, OFFER_HEADER:width].reshape(len(rows), cap, SLOT_FIELDS)
    shapes = [slots[r, : shares[r], HEIGHT : CHANNEL_COUNT + 1].astype(np.int64) for r in range(len(rows))]
    captions = [[int(n) for n in slots[r, : shares[r], CAPTION_BYTES]] for r in range(len(rows))]
    sizes = [transport_nbytes(shapes[r]) + sum(max(n, 0) for n in captions[r]) for r in range(len(rows))]
    return GatherPlan(failed, offered, shares, shapes, captions, sizes)


# The stage's header, in aggregates and results: failed ranks (count, then the lowest), images offered in all, senders.
I_FAILED, I_OFFERED, I_SENDERS = 0, 1, 2
I_FAILED_RANKS = 4
NAMED_FAILED_RANKS = STAGE_HEADER - I_FAILED_RANKS


class ImageStage:
    """Combine, merge and finalize the offers of one ``log_images`` call (``hierarchy.Stage``).

    Every offer reaches the primary in the per-rank block; the result names the failed ranks (the lowest) and lists
    each sending rank with its share and payload size, in ``(rank, share, bytes)`` triples after the header.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.width = OFFER_HEADER + cap * SLOT_FIELDS

    def combine(self, payloads: np.ndarray, ranks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        out = np.full(STAGE_HEADER + payloads.shape[1], np.nan)
        failed = [r for r, flag in zip(ranks, payloads[:, OFFER_ERROR]) if flag != 0]
        out[I_FAILED] = len(failed)
        out[I_FAILED_RANKS : I_FAILED_RANKS + min(len(failed), NAMED_FAILED_RANKS)] = failed[:NAMED_FAILED_RANKS]
        return out, payloads[:, : self.width]

    def decide_alike(self, payloads: np.ndarray, primary_payload: np.ndarray, width: int,
                     out: np.ndarray) -> np.ndarray | None:
        """Always the general path: an image call's cost is its pixels, not this step."""
        return None

    def merge(self, aggregates: np.ndarray) -> np.ndarray:
        out = aggregates[0].copy()
        out[I_FAILED] = aggregates[:, I_FAILED].sum()
        named = aggregates[:, I_FAILED_RANKS:STAGE_HEADER].ravel()
        named = np.sort(named[~np.isnan(named)])[:NAMED_FAILED_RANKS]
        out[I_FAILED_RANKS:STAGE_HEADER] = np.nan
        out[I_FAILED_RANKS : I_FAILED_RANKS + len(named)] = named
        return out

    def finalize(self, aggregate: np.ndarray, block: np.ndarray, primary_payload: np.ndarray,
                 fits: bool) -> np.ndarray | None:
        out = np.full(len(aggregate), np.nan)
        out[:STAGE_HEADER] = aggregate[:STAGE_HEADER]
        if aggregate[I_FAILED] > 0:
            return out
        if not fits:
            return None
        plan = plan_gather(block[:, : self.width], self.cap)
        out[I_OFFERED] = sum(plan.offered)
        senders = [(r, share, size) for r, (share, size) in enumerate(zip(plan.shares, plan.sizes)) if share]
        out[I_SENDERS] = len(senders)
        if senders:
            out[STAGE_HEADER : STAGE_HEADER + 3 * len(senders)] = np.ravel(senders)
        return out

    def plan(self, block: np.ndarray) -> GatherPlan:
        """The whole plan, where the offers are (the primary; on one node every rank)."""
        return plan_gather(block[:, : self.width], self.cap)

    @staticmethod
    def failed_ranks(result: np.ndarray) -> tuple[list[int], int]:
        named = result[I_FAILED_RANKS:STAGE_HEADER]
        return [int(r) for r in named[~np.isnan(named)]], int(result[I_FAILED])

    @staticmethod
    def senders(result: np.ndarray) -> dict[int, tuple[int, int]]:
        """rank -> (images it sends, payload bytes), for every rank with a share."""
        count = int(result[I_SENDERS])
        triples = result[STAGE_HEADER : STAGE_HEADER + 3 * count].reshape(count, 3).astype(np.int64)
        return {int(r): (int(share), int(size)) for r, share, size in triples}

    @staticmethod
    def offered(result: np.ndarray) -> int:
        return int(result[I_OFFERED])


@dataclass(frozen=True)
class Gathered:
    """What one ``log_images`` call gives a rank.

    Attributes:
        images: every rank's shared images, in rank order, on the primary; empty elsewhere.
        captions: one per image (marked with its rank when several ranks log), on the primary.
        sent: images this rank sent.
        offered: images all ranks offered together.
        shares: rank -> images it sent, for every rank that sent any.
    """

    images: list[np.ndarray]
    captions: list[str | None]
    sent: int
    offered: int
    shares: dict[int, int]

    def over_cap(self, cap: int, call: CallInfo) -> str | None:
        """The warning to give when more images were offered than ``cap``, else None."""
        if self.offered <= cap:
            return None
        return (f"{call}: {self.offered} images offered, logging {cap} (max_images_to_log); images per sending rank "
                f"{self.shares}")


def gather_steps(rank: Any, images: Sequence[np.ndarray], captions: Sequence[str | None], cap: int, call: CallInfo,
                 error: Exception | None) -> Steps:
    """One ``log_images`` call as the steps ``Collectives.run`` drives: the offers, then the shares' bytes.

    Args:
        rank: where this rank sits and its calls' shared state: a ``Collectives`` (``.topology``, ``.state``), or a
            simulated rank.
        images: this rank's uint8 (H, W, C) images; empty when ``error``.
        error: what was wrong with this rank's input, or None: the flagged offer still travels, and every rank
            raises.

    Raises:
        ImageInputError: some rank's images or captions were invalid (every rank raises, naming the ranks).
    """
    topology: Topology = rank.topology
    encoded = encode_captions(captions)
    stage = ImageStage(cap)
    outcome = yield from call_rounds(topology, pack_offer(images, encoded, cap, failed=error is not None), call, stage,
                                     rank.state)
    failed, count = stage.failed_ranks(outcome.stage)
    if count:
        own = f": {error}" if error is not None else ""
        more = f" and {count - len(failed)} more" if count > len(failed) else ""
        raise ImageInputError(f"{call}: ranks {failed}{more} passed invalid images or captions{own}; nothing was "
                              "logged")
    senders = stage.senders(outcome.stage)
    mine = senders.get(topology.rank, (0, 0))[0]
    sizes = {r: size for r, (_, size) in senders.items()}
    buffers = yield from bytes_to_primary(topology, sizes, pack_payload(images, encoded, mine))
    shares = {r: share for r, (share, _) in senders.items()}
    if buffers is None:
        return Gathered([], [], mine, stage.offered(outcome.stage), shares)
    by_rank = [buffers.get(r, np.empty(0, np.uint8)) for r in range(topology.world_size)]
    unpacked, names = unpack_payloads(stage.plan(outcome.block), by_rank, label_ranks=topology.world_size > 1)
    return Gathered(unpacked, names, mine, stage.offered(outcome.stage), shares)


def pack_payload(images: Sequence[np.ndarray], captions: Sequence[bytes | None], share: int) -> np.ndarray:
    """This rank's payload: its first ``share`` images' bytes back to back, then their captions' bytes."""
    _, image_bytes = encode_for_transport(images[:share])
    caption_bytes = [np.frombuffer(c, np.uint8) for c in captions[:share] if c is not None]
    return np.concatenate([image_bytes, *caption_bytes]) if caption_bytes else image_bytes


def unpack_payloads(
    plan: GatherPlan, buffers: Sequence[np.ndarray], *, label_ranks: bool
) -> tuple[list[np.ndarray], list[str | None]]:
    """Cut the gathered payloads (index = rank) back into images and captions, in rank order.

    Args:
        label_ranks: prefix each caption with "[rank r]" (several ranks logged into one call).

    Returns:
        The images (views into ``buffers``) and one caption (or None) per image.
    """
    images: list[np.ndarray] = []
    names: list[str | None] = []
    for rank, buffer in enumerate(buffers):
        offset = transport_nbytes(plan.shapes[rank])
        images += decode_from_transport(plan.shapes[rank], buffer[:offset])
        label = f"[rank {rank}]" if label_ranks else None
        for length in plan.caption_lengths[rank]:
            text = None if length == NO_CAPTION else bytes(buffer[offset : offset + length]).decode()
            offset += max(length, 0)
            names.append(" ".join(part for part in (label, text) if part is not None) or None)
    return images, names


def fair_shares(counts: Sequence[int], cap: int) -> list[int]:
    """Split ``cap`` image slots among ranks offering ``counts[r]`` images: max-min fair (water-filling).

    Every rank gets ``min(counts[r], level)`` or one more; capacity a rank cannot use goes to ranks with more
    images; when slots cannot be split evenly the extra ones go to the lowest ranks. The result depends only on
    the arguments, so every rank computes the same split without talking.

    Args:
        counts: images offered by each rank (non-negative ints), indexed by rank.
        cap: most images to log in total (non-negative int), e.g. ``max_images_to_log``.

    Returns:
        Per-rank allowances ``a`` with ``0 <= a[r] <= counts[r]`` and ``sum(a) == min(cap, sum(counts))``.

    Raises:
        ValueError: a count or ``cap`` is negative or not an int.

    Example:
        >>> fair_shares([1, 8, 8, 2], 10)
        [1, 4, 3, 2]
    """
    for name, value in [("cap", cap)] + [(f"counts[{r}]", c) for r, c in enumerate(counts)]:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative int")
    counts = [int(c) for c in counts]
    shares = [0] * len(counts)
    remaining = int(cap)
    active = [r for r, c in enumerate(counts) if c > 0]  # ranks that could still take more, in rank order
    while active and remaining > 0:
        level = remaining // len(active)
        if level == 0:  # fewer slots than hungry ranks: one each to the lowest ranks
            for r in active[:remaining]:
                shares[r] += 1
            break
        for r in active:
            give = min(level, counts[r] - shares[r])
            shares[r] += give
            remaining -= give
        active = [r for r in active if shares[r] < counts[r]]
    return shares


def encode_for_transport(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pack uint8 (H, W, C) images into an int64 shape table and one flat uint8 buffer (one copy).

    Args:
        images: uint8 arrays of shape (H, W, C), C in {1, 3, 4}, as returned by ``to_uint8_hwc``.

    Returns:
        ``(shapes, buffer)``: ``shapes`` an int64 array of shape (N, 3) holding each (H, W, C); ``buffer`` a 1-D
        uint8 array of length ``transport_nbytes(shapes)`` holding the images' bytes back to back, in C order.

    Raises:
        ImageInputError: an image is not a non-empty uint8 (H, W, C) array with C in {1, 3, 4}.
    """
    shapes = np.zeros((len(images), 3), dtype=np.int64)
    for i, image in enumerate(images):
        a = np.asarray(image)
        if a.dtype != np.uint8 or a.ndim != 3 or a.size == 0 or a.shape[2] not in CHANNELS:
            raise image_error(i, None, a.shape, a.dtype, "expected a non-empty uint8 (H, W, C) array, C in 1, 3, 4")
        shapes[i] = a.shape
    buffer = np.empty(transport_nbytes(shapes), dtype=np.uint8)
    offset = 0
    for image, size in zip(images, shapes.prod(axis=1).tolist()):
        buffer[offset : offset + size].reshape(np.asarray(image).shape)[...] = image
        offset += size
    return shapes, buffer


def transport_nbytes(shapes: np.ndarray) -> int:
    """Number of buffer bytes a shape table describes.

    Args:
        shapes: int array of shape (N, 3), as returned by ``encode_for_transport``.

    Returns:
        The sum over images of H * W * C.

    Raises:
        ValueError: ``shapes`` is not an (N, 3) integer array of positive sizes with C in {1, 3, 4}.
    """
    table = np.asarray(shapes)
    if table.ndim != 2 or table.shape[1] != 3 or (table.size and table.dtype.kind not in "iu"):
        raise ValueError(f"shapes has shape {table.shape} and dtype {table.dtype}; expected an (N, 3) int table")
    if table.size:
        if (table[:, :2] <= 0).any() or not np.isin(table[:, 2], CHANNELS).all():
            bad = int(np.argmax((table[:, :2] <= 0).any(axis=1) | ~np.isin(table[:, 2], CHANNELS)))
            raise ValueError(f"shapes[{bad}] = {table[bad].tolist()} is not a valid (H, W, C) with C in 1, 3, 4")
    return int(table.astype(np.int64).prod(axis=1).sum())


def decode_from_transport(shapes: np.ndarray, buffer: np.ndarray) -> list[np.ndarray]:
    """Unpack what ``encode_for_transport`` packed: views into ``buffer``, no copies.

    Args:
        shapes: int array of shape (N, 3), each row an image's (H, W, C).
        buffer: 1-D uint8 array (or anything ``numpy.asarray`` reads as one, e.g. a CPU uint8 tensor) of exactly
            ``transport_nbytes(shapes)`` bytes. Slice a padded receive buffer to that length first.

    Returns:
        N uint8 arrays of shape (H, W, C); each is a view of ``buffer`` when ``buffer`` is a contiguous uint8
        numpy array.

    Raises:
        ValueError: the shape table is malformed, the buffer is not 1-D uint8, or its length differs from what
            the shapes need.
    """
    need = transport_nbytes(shapes)
    flat = np.asarray(buffer)
    if flat.dtype != np.uint8 or flat.ndim != 1:
        raise ValueError(f"buffer has shape {flat.shape} and dtype {flat.dtype}; expected a 1-D uint8 array")
    if flat.shape[0] != need:
        raise ValueError(
            f"buffer holds {flat.shape[0]} bytes but the {len(shapes)} image shapes need {need} bytes"
        )
    out: list[np.ndarray] = []
    offset = 0
    for h, w, c in np.asarray(shapes).tolist():
        size = h * w * c
        out.append(flat[offset : offset + size].reshape(h, w, c))
        offset += size
    return out
