"""Tests of sdxl_dist_log.system.wire: records round trip, stay small, and damaged ones fail with WireError."""

from __future__ import annotations

import logging

import pytest

from sdxl_dist_log.system.gpus import GpuIdentity
from sdxl_dist_log.system.samplers import NvmlSampler
from sdxl_dist_log.system.wire import (
    RankMeta,
    StoreKeys,
    WireError,
    decode_node_meta,
    decode_node_sample,
    decode_rank_meta,
    decode_rank_sample,
    encode_node_meta,
    encode_node_sample,
    encode_rank_meta,
    encode_rank_sample,
    thread_store,
)
from sdxl_dist_log.testing.fake_nvml import GIB, FakeNvml


def test_wire_round_trip_and_linear_size() -> None:
    nv = FakeNvml(gpus=8)
    sampler = NvmlSampler(nv, logging.getLogger("t"))
    gpus = sampler.sample()
    raw = encode_node_sample(7, 1.5, {"cpu/percent": 12.5}, gpus)
    seq, wall, node, back = decode_node_sample(raw)
    assert (seq, wall, node) == (7, 1.5, {"cpu/percent": 12.5})
    assert back[3]["utilization"] == 30.0 and back[3]["memory_used"] == 4 * GIB
    sizes = [len(encode_node_sample(1, 1.0, {}, NvmlSampler(FakeNvml(gpus=n), logging.getLogger("t")).sample()))
             for n in (1, 2, 4)]
    assert sizes[2] - sizes[1] == pytest.approx(2 * (sizes[1] - sizes[0]), rel=0.1)  # linear in GPUs
    assert sizes[1] - sizes[0] < 200  # bytes per extra GPU
    assert decode_rank_sample(encode_rank_sample(3, 2.0, {"memory_allocated": 5.0})) == (3, 2.0,
                                                                                         {"memory_allocated": 5.0})


def test_numbers_are_compact_and_non_finite_values_are_left_out() -> None:
    raw = encode_rank_sample(1, 2.0, {"bytes": 41234567890.0, "pct": 12.345678, "bad": float("nan"),
                                      "inf": float("inf")})
    assert b'"bytes":41234567890,' in raw and b'"pct":12.3457' in raw
    assert decode_rank_sample(raw) == (1, 2.0, {"bytes": 41234567890.0, "pct": 12.3457})


def test_meta_records_round_trip() -> None:
    gpus = [GpuIdentity(0, "GPU-a", "00000000:10:00.0"), GpuIdentity(1, None, None)]
    assert decode_node_meta(encode_node_meta("host-a", gpus)) == ("host-a", gpus)
    assert decode_node_meta(encode_node_meta(None, [])) == (None, [])
    meta = RankMeta(node=1, local_world_size=4, cuda_device=2, uuid="abc", pci="0000:10:00")
    assert decode_rank_meta(encode_rank_meta(meta)) == meta
    assert decode_rank_meta(encode_rank_meta(RankMeta(0))).cuda_device is None


def test_keys_of_the_protocol() -> None:
    keys = StoreKeys("ns/sys/")
    assert (keys.node_meta(3), keys.node_sample(3), keys.rank_meta(7), keys.rank_sample(7)) == (
        "ns/sys/node3/meta", "ns/sys/node3/sample", "ns/sys/rank7/meta", "ns/sys/rank7/sample")
    assert StoreKeys().node_meta(0) == "sdxl_dist_log/sys/node0/meta"


@pytest.mark.parametrize(
    ("decode", "raw"),
    [
        (decode_node_sample, b"not json"),
        (decode_node_sample, b"[1, 2]"),
        (decode_node_sample, b'{"t": 1.0}'),  # no sequence number
        (decode_node_sample, b'{"s": 1, "f": ["u"], "g": [["x", 1]]}'),  # GPU index not a number
        (decode_rank_sample, b'{"s": 1}'),
        (decode_rank_sample, b'{"s": 1, "v": {"m": "lots"}}'),
        (decode_node_meta, b'{"gpus": [[0, "u"]]}'),
        (decode_rank_meta, b'{"cuda": 0}'),  # no node
        (decode_rank_meta, b"\xff\xfe"),
    ],
)
def test_a_damaged_record_is_a_wire_error(decode, raw: bytes) -> None:
    with pytest.raises(WireError):
        decode(raw)


class _Cloning:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def clone(self) -> str:
        if self.error is not None:
            raise self.error
        return "own connection"


def test_threads_get_their_own_connection_where_the_store_can_clone() -> None:
    assert thread_store(_Cloning()) == "own connection"  # type: ignore[arg-type]
    no_clone = _Cloning(NotImplementedError("clone is not supported by this store"))
    assert thread_store(no_clone) is no_clone  # type: ignore[arg-type]
    plain = object()
    assert thread_store(plain) is plain  # type: ignore[arg-type]
    with pytest.raises(ZeroDivisionError):  # only a store's own errors mean "no clone": a bug still surfaces
        thread_store(_Cloning(ZeroDivisionError()))  # type: ignore[arg-type]
