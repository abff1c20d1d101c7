"""The ``.wandb`` transaction log as bytes: framing, checksums and payloads; no protobuf, no wandb.

wandb 0.30+ ships no reader for its ``.wandb`` transaction log, so this package parses it itself. The file is a
LevelDB-style log (as written by ``wandb-core``; checked against real files of wandb 0.31):

* a 7-byte header: ``b":W&B"``, the magic ``0xBEE1`` as a little-endian uint16, the version byte ``0``;
* then 32 KiB blocks, counted from the start of the file (the header sits in the first block), each holding chunks
  of a 7-byte chunk header (CRC uint32 LE, length uint16 LE, type byte: 1 full, 2 first, 3 middle, 4 last) and the
  data; a block tail shorter than 7 bytes is zero padding;
* the CRC is plain zlib/IEEE CRC-32 (not LevelDB's masked CRC-32C) over the type byte followed by the data;
* each reassembled payload is a serialized ``wandb.proto.wandb_internal_pb2.Record`` (decoded in ``decode.py``).

A run still being written, or killed (SIGKILL, OOM, node failure), leaves a cut or torn tail: reading stops there
and sets ``truncated``; everything before it is returned.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from sdxl_dist_log.errors import WandbFileError

HEADER_IDENT = b":W&B"
HEADER_MAGIC = 0xBEE1
HEADER_VERSION = 0
FILE_HEADER = HEADER_IDENT + struct.pack("<HB", HEADER_MAGIC, HEADER_VERSION)
BLOCK_SIZE = 32 * 1024
CHUNK_HEADER_SIZE = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_CHUNK_HEADER = struct.Struct("<IHB")


@dataclass
class ReadStatus:
    """Where and why reading a log stopped."""

    truncated: bool = False
    """True when the tail is cut, torn or corrupt (a live or killed run); records before it are intact."""
    reason: str | None = None
    """Why reading stopped early, with the byte offset; None when the file ended cleanly."""
    good_offset: int = 0
    """Byte offset just past the last complete record."""


def chunk_crc(chunk_type: int, data: bytes) -> int:
    """The CRC that wandb stores for a chunk: zlib CRC-32 over the type byte, then the data.

    Args:
        chunk_type: 1 full, 2 first, 3 middle, 4 last.
        data: the chunk's payload bytes.

    Returns:
        The unsigned 32-bit CRC.
    """
    return zlib.crc32(data, zlib.crc32(bytes((chunk_type,)))) & 0xFFFFFFFF


def iter_payloads(stream: IO[bytes], status: ReadStatus | None = None, start: int = 0) -> Iterator[bytes]:
    """Yield the reassembled record payloads of a W&B log, stopping quietly at a cut or corrupt tail.

    Args:
        stream: a binary, seekable stream positioned at the start of the file (the 7-byte header included).
        status: filled in as reading goes: ``truncated``, ``reason`` and ``good_offset``.
        start: a record boundary to resume from (the ``good_offset`` of an earlier read of a file that has grown
            since); 0 reads from the first record. The header is checked either way.

    Yields:
        Each record's bytes (a serialized ``Record``).

    Raises:
        WandbFileError: the first bytes are not the W&B header (a shorter prefix of it counts as truncated).
    """
    status = status if status is not None else ReadStatus()
    head = stream.read(len(FILE_HEADER))
    if head != FILE_HEADER:
        if len(head) < len(FILE_HEADER) and FILE_HEADER.startswith(head):
            status.truncated, status.reason = True, f"file ends inside the {len(FILE_HEADER)}-byte header"
            return
        raise WandbFileError(f"not a W&B transaction log: header {head!r}, expected {FILE_HEADER!r}")
    status.good_offset = len(FILE_HEADER)
    if start > len(FILE_HEADER):  # blocks are counted from the start of the file: find the one holding ``start``
        block_start = start - start % BLOCK_SIZE
        stream.seek(block_start)
        block, pos = stream.read(BLOCK_SIZE), start - block_start
        status.good_offset = start
    else:
        block = head + stream.read(BLOCK_SIZE - len(head))
        block_start, pos = 0, len(FILE_HEADER)
    pending: list[bytes] = []
    pending_start: int | None = None

    def stop(reason: str) -> None:
        status.truncated, status.reason = True, reason

    while True:
        if len(block) - pos < CHUNK_HEADER_SIZE:
            if len(block) < BLOCK_SIZE:  # the file ends in this block
                if pos < len(block):
                    stop(f"file ends inside a chunk header at offset {block_start + pos}")
                elif pending:
                    stop(f"record starting at offset {pending_start} has no last chunk")
                return
            # Trailer of a full block (zero padding); the next chunk starts in the next block.
            block_start += BLOCK_SIZE
            block, pos = stream.read(BLOCK_SIZE), 0
            if not block:
                if pending:
                    stop(f"record starting at offset {pending_start} has no last chunk")
                return
            continue
        offset = block_start + pos
        crc, length, ctype = _CHUNK_HEADER.unpack_from(block, pos)
        if crc == 0 and length == 0 and ctype == 0:
            stop(f"zero-filled tail at offset {offset}")
            return
        end = pos + CHUNK_HEADER_SIZE + length
        if end > len(block):
            if len(block) < BLOCK_SIZE:
                stop(f"file ends inside a chunk at offset {offset} ({length} data bytes announced)")
            else:
                stop(f"chunk at offset {offset} overruns its block ({length} data bytes)")
            return
        data = bytes(block[pos + CHUNK_HEADER_SIZE : end])
        if chunk_crc(ctype, data) != crc:
            stop(f"CRC mismatch in chunk at offset {offset}")
            return
        pos = end
        if ctype == FULL:
            if pending:
                stop(f"record starting at offset {pending_start} has no last chunk")
                return
            status.good_offset = block_start + pos
            yield data
        elif ctype == FIRST:
            if pending:
                stop(f"record starting at offset {pending_start} has no last chunk")
                return
            pending, pending_start = [data], offset
        elif ctype in (MIDDLE, LAST):
            if not pending:
                stop(f"chunk of type {ctype} without a first chunk at offset {offset}")
                return
            pending.append(data)
            if ctype == LAST:
                payload, pending, pending_start = b"".join(pending), [], None
                status.good_offset = block_start + pos
                yield payload
        else:
            stop(f"unknown chunk type {ctype} at offset {offset}")
            return
