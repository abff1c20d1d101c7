"""The log format as bytes (``sdxl_dist_log.offline.logfile``): synthetic logs, then a real file of wandb."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pytest
from offline_support import encode_log, payloads_of, wandb_file

from sdxl_dist_log.offline.logfile import BLOCK_SIZE, FILE_HEADER, ReadStatus, WandbFileError, chunk_crc, iter_payloads


def test_chunk_crc_is_zlib_crc32_over_type_then_data() -> None:
    assert chunk_crc(1, b"abc") == zlib.crc32(b"\x01abc")


@pytest.mark.parametrize(
    "sizes",
    [
        [],
        [0],
        [10, 20, 30],
        [BLOCK_SIZE - 14],  # fills block 0 exactly
        [BLOCK_SIZE - 7 - 7 - 7],  # leaves exactly 7 bytes: an empty FIRST chunk, then the rest
        [BLOCK_SIZE - 7 - 7 - 3],  # leaves 3 bytes of padding
        [100_000, 5, 70_000],  # FIRST, MIDDLE..., LAST across blocks
    ],
)
def test_payloads_roundtrip_across_blocks(sizes: list[int]) -> None:
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    got, status = payloads_of(encode_log(payloads))
    assert got == payloads
    assert not status.truncated and status.reason is None


def test_every_cut_yields_a_prefix_and_flags_truncation() -> None:
    payloads = [b"a" * 50, b"b" * 40_000, b"c" * 30]
    data = encode_log(payloads)
    ends = {len(encode_log(payloads[:k])) for k in range(len(payloads) + 1)}
    cuts = [*range(0, 80), *range(BLOCK_SIZE - 20, BLOCK_SIZE + 20), *range(len(data) - 40, len(data))]
    for cut in cuts:
        got, status = payloads_of(data[:cut])
        assert got == payloads[: len(got)], cut
        if cut in ends:
            assert not status.truncated, cut
        elif cut >= len(FILE_HEADER):
            assert status.truncated and status.reason, cut
            assert status.good_offset <= cut


def test_corrupt_byte_stops_at_the_damaged_record() -> None:
    payloads = [b"one", b"two", b"three"]
    data = bytearray(encode_log(payloads))
    data[len(encode_log(payloads[:1])) + 8] ^= 0xFF  # first data byte of record 2
    got, status = payloads_of(bytes(data))
    assert got == [b"one"]
    assert status.truncated and "CRC" in (status.reason or "")


def test_zero_filled_tail_is_truncation() -> None:
    got, status = payloads_of(encode_log([b"x"]) + b"\0" * 100)
    assert got == [b"x"] and status.truncated and "zero" in (status.reason or "")


def test_header_only_is_empty_and_not_truncated() -> None:
    assert payloads_of(FILE_HEADER) == ([], ReadStatus(False, None, len(FILE_HEADER)))


@pytest.mark.parametrize("n", [0, 3, 6])
def test_partial_header_is_truncated(n: int) -> None:
    got, status = payloads_of(FILE_HEADER[:n])
    assert got == [] and status.truncated


def test_wrong_header_raises() -> None:
    with pytest.raises(WandbFileError, match="not a W&B"):
        list(iter_payloads(io.BytesIO(b"LEVELDB" + encode_log([b"x"])[7:])))


def test_real_file_matches_the_reference_writer(full_run_dir: Path) -> None:
    data = wandb_file(full_run_dir).read_bytes()
    payloads, status = payloads_of(data)
    assert not status.truncated and status.good_offset == len(data)
    assert encode_log(payloads) == data  # same framing and CRC, byte for byte


@pytest.mark.parametrize("sizes", [[10, 20, 30], [BLOCK_SIZE - 14, 5], [BLOCK_SIZE - 7 - 7 - 3, 9],
                                   [100_000, 5, 70_000, 3]],
                         ids=["one-block", "block-filled", "padding", "across-blocks"])
def test_reading_again_from_a_good_offset_yields_what_was_added_since(sizes: list[int]) -> None:
    """A live file read up to each record boundary, then again from its ``good_offset`` once it has grown: the
    second read yields exactly the records written since (the backend counts a live run file this way)."""
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    full = encode_log(payloads)
    for k in range(len(payloads) + 1):
        status = ReadStatus()
        assert list(iter_payloads(io.BytesIO(encode_log(payloads[:k])), status)) == payloads[:k]
        resumed = ReadStatus()
        assert list(iter_payloads(io.BytesIO(full), resumed, start=status.good_offset)) == payloads[k:], k
        assert resumed.good_offset == len(full) and not resumed.truncated
