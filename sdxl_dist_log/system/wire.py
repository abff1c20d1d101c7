"""The store protocol: how node and rank samples travel to the primary through the process group's key-value store.

Keys under a namespace ``ns`` (default ``sdxl_dist_log/sys``), values compact JSON:

* ``{ns}/node{n}/meta`` once: ``{"v":1,"host":..., "gpus":[[nvml_index, uuid, pci_bus_id], ...]}``
* ``{ns}/node{n}/sample`` per interval: ``{"s":seq,"t":time.time(),"n":{figure: value},
  "f":[gpu figure names], "g":[[nvml_index, value or null, ...], ...]}``
* ``{ns}/rank{r}/meta`` once: ``{"v":1,"node":n,"lws":local_world_size,"cuda":device or null,"uuid":...,"pci":...}``
* ``{ns}/rank{r}/sample`` per interval (ranks with a CUDA device): ``{"s":seq,"t":time.time(),"v":{figure: value}}``

A record that cannot be decoded raises :class:`WireError`; a store that cannot be reached raises one of
:data:`STORE_ERRORS`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sdxl_dist_log.system.fields import GPU_FIGURES
from sdxl_dist_log.system.gpus import GpuIdentity

PROTOCOL_VERSION = 1
DEFAULT_NAMESPACE = "sdxl_dist_log/sys"

STORE_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError)
"""What a torch.distributed store raises when it cannot be reached (``DistStoreError``/``DistNetworkError`` are
RuntimeErrors), or a socket error."""


class KeyValueStore(Protocol):
    """What system metrics need of a store; ``torch.distributed.Store`` (TCPStore, HashStore, PrefixStore) fits."""

    def set(self, key: str, value: str | bytes) -> None: ...

    def get(self, key: str) -> bytes:  # blocks until the key exists: call only after check()
        ...

    def check(self, keys: list[str]) -> bool: ...


class WireError(ValueError):
    """A record in the store is not what this protocol writes (another version, or damaged)."""


def thread_store(store: KeyValueStore) -> KeyValueStore:
    """A connection of its own for a background thread (``store.clone()``), else ``store`` itself."""
    clone = getattr(store, "clone", None)
    if clone is not None:
        try:
            return clone()
        except STORE_ERRORS:  # a store without clone support (NotImplementedError is a RuntimeError)
            pass
    return store


@dataclass(frozen=True)
class StoreKeys:
    """The keys of the protocol under one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        object.__setattr__(self, "namespace", self.namespace.rstrip("/"))

    def node_meta(self, node: int) -> str:
        return f"{self.namespace}/node{node}/meta"

    def node_sample(self, node: int) -> str:
        return f"{self.namespace}/node{node}/sample"

    def rank_meta(self, rank: int) -> str:
        return f"{self.namespace}/rank{rank}/meta"

    def rank_sample(self, rank: int) -> str:
        return f"{self.namespace}/rank{rank}/sample"


@dataclass(frozen=True)
class RankMeta:
    """What a rank says of itself once: its node, how many ranks share the node, its CUDA device and its identity."""

    node: int
    local_world_size: int = 1
    cuda_device: int | None = None
    uuid: str | None = None
    pci: str | None = None


def _num(value: float | None) -> float | int | None:
    """Compact JSON number: ints stay exact (byte counts), other floats keep 4 decimals; NaN/inf -> null."""
    if value is None or not math.isfinite(value):
        return None
    if float(value).is_integer() and abs(value) < 2**53:
        return int(value)
    return round(float(value), 4)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _loads(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise WireError(f"{what}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise WireError(f"{what}: expected an object, got {type(obj).__name__}")
    return obj


def encode_node_meta(host: str | None, gpus: Sequence[GpuIdentity]) -> bytes:
    """The node record written once by the node leader."""
    return _dumps({"v": PROTOCOL_VERSION, "host": host, "gpus": [[g.index, g.uuid, g.pci] for g in gpus]})


def decode_node_meta(raw: bytes) -> tuple[str | None, list[GpuIdentity]]:
    """Inverse of :func:`encode_node_meta`: (host name, GPUs)."""
    obj = _loads(raw, "node meta")
    try:
        gpus = [GpuIdentity(int(i), u, p) for i, u, p in obj.get("gpus", [])]
    except (TypeError, ValueError) as exc:
        raise WireError(f"node meta: bad gpus ({exc})") from None
    host = obj.get("host")
    return (str(host) if host else None), gpus


def encode_rank_meta(meta: RankMeta) -> bytes:
    """The rank record written once by every rank (``cuda`` null: the rank reports no figures of its own)."""
    return _dumps({"v": PROTOCOL_VERSION, "node": meta.node, "lws": meta.local_world_size, "cuda": meta.cuda_device,
                   "uuid": meta.uuid, "pci": meta.pci})


def decode_rank_meta(raw: bytes) -> RankMeta:
    """Inverse of :func:`encode_rank_meta`."""
    obj = _loads(raw, "rank meta")
    try:
        cuda = obj.get("cuda")
        return RankMeta(int(obj["node"]), int(obj.get("lws", 1)), None if cuda is None else int(cuda),
                        obj.get("uuid"), obj.get("pci"))
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"rank meta: {type(exc).__name__}: {exc}") from None


def encode_node_sample(seq: int, wall_time: float, node: Mapping[str, float],
                       gpus: Mapping[int, Mapping[str, float]]) -> bytes:
    """The per-interval node record (columnar: one list of figure names, one row of values per GPU)."""
    present = [f for f in GPU_FIGURES if any(f in g for g in gpus.values())]
    present += sorted({f for g in gpus.values() for f in g} - set(present))
    return _dumps({
        "s": seq,
        "t": round(wall_time, 3),
        "n": {k: _num(v) for k, v in node.items()},
        "f": present,
        "g": [[index] + [_num(g.get(f)) for f in present] for index, g in sorted(gpus.items())],
    })


def decode_node_sample(raw: bytes) -> tuple[int, float, dict[str, float], dict[int, dict[str, float]]]:
    """Inverse of :func:`encode_node_sample`: (seq, wall time, node figures, NVML index -> figures)."""
    obj = _loads(raw, "node sample")
    try:
        names = obj.get("f", [])
        gpus = {int(row[0]): {n: float(v) for n, v in zip(names, row[1:]) if v is not None}
                for row in obj.get("g", [])}
        node = {k: float(v) for k, v in obj.get("n", {}).items() if v is not None}
        return int(obj["s"]), float(obj.get("t", 0.0)), node, gpus
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"node sample: {type(exc).__name__}: {exc}") from None


def encode_rank_sample(seq: int, wall_time: float, values: Mapping[str, float]) -> bytes:
    """The per-interval rank record."""
    return _dumps({"s": seq, "t": round(wall_time, 3), "v": {k: _num(v) for k, v in values.items()}})


def decode_rank_sample(raw: bytes) -> tuple[int, float, dict[str, float]]:
    """Inverse of :func:`encode_rank_sample`: (seq, wall time, figures)."""
    obj = _loads(raw, "rank sample")
    try:
        return int(obj["s"]), float(obj.get("t", 0.0)), {k: float(v) for k, v in obj["v"].items() if v is not None}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise WireError(f"rank sample: {type(exc).__name__}: {exc}") from None
