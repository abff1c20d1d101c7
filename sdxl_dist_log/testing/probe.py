"""Count what a process does through torch.distributed, and its host syncs, while the probe is installed.

The one collective counter of the project's tests and benchmarks. ``CollectiveProbe`` wraps torch.distributed's
collectives (at ``torch.distributed`` and at ``distributed_c10d``, so the collectives that ``all_gather_object``
issues inside count as wire collectives) and records each call with its group size and the bytes this rank put in
and took out. With ``count_syncs`` it also counts host syncs with a CUDA device: ``Tensor.item/.cpu/.tolist/.to/
__float__/__int__/__bool__`` on CUDA tensors and ``torch.cuda``'s synchronize calls, split by thread (the thread that
installed the probe is "train", any other "worker").

Counts are exact and stable on a loaded machine, unlike times: assert on them in tests. Install the probe only around
counting passes: its wrappers cost a few µs per call and would skew timings.

Example:
    >>> with CollectiveProbe() as probe:  # doctest: +SKIP
    ...     wb.log_metrics({"loss": 1.0}, step=0)
    >>> probe.api["all_gather_single"]  # doctest: +SKIP
    1
"""

from __future__ import annotations

import inspect
import threading
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "gather", "scatter",
               "broadcast", "reduce", "reduce_scatter_tensor", "all_to_all_single", "barrier", "monitored_barrier",
               "send", "recv", "isend", "irecv")
OBJECT_COLLECTIVES = ("all_gather_object", "gather_object", "broadcast_object_list", "scatter_object_list")
# (argument holding what this rank sends, argument receiving) per op; None: nothing / the same tensor
_BYTES_ARGS = {"all_reduce": ("tensor", None), "all_gather": ("tensor", "tensor_list"),
               "all_gather_into_tensor": ("input_tensor", "output_tensor"),
               "all_gather_single": ("input_tensor", "output_tensor"), "gather": ("tensor", "gather_list"),
               "broadcast": ("tensor", None), "reduce": ("tensor", None), "send": ("tensor", None),
               "isend": ("tensor", None), "recv": (None, "tensor"), "irecv": (None, "tensor")}
_SYNCING_METHODS = ("item", "cpu", "tolist", "to", "__float__", "__int__", "__bool__")


@dataclass(frozen=True)
class CollectiveCall:
    """One wire-level collective as this rank made it.

    Attributes:
        op: the torch.distributed function ("all_gather_single", "gather", ...).
        group_size: ranks in the group it ran on.
        sent: bytes of the tensors this rank put in.
        received: bytes of the tensors this rank's call filled (0 where the same tensor is sent and received).
        thread: "train" (the installing thread) or "worker".
    """

    op: str
    group_size: int
    sent: int
    received: int
    thread: str


def _nbytes(value: Any) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


class CollectiveProbe:
    """Records torch.distributed collectives (and, optionally, CUDA host syncs) while installed.

    Attributes:
        api: calls by op at the API level (a collective inside another is not counted again here).
        wire: tensor collectives by op, including those issued inside object collectives.
        calls: every wire collective, in order, with group size and bytes.
        syncs: host syncs by thread ("train" / "worker"), with ``count_syncs``.
        sync_warnings: torch's own "synchronizing" warnings by thread, with ``count_syncs`` and CUDA.
    """

    def __init__(self, *, count_syncs: bool = False) -> None:
        import torch.distributed as dist

        self.count_syncs = count_syncs
        self._dist = dist
        self._tls = threading.local()
        self._main = threading.get_ident()
        self._saved: list[tuple[Any, str, Any]] = []
        self._signatures = {n: inspect.signature(getattr(dist.distributed_c10d, n))
                            for n in COLLECTIVES + OBJECT_COLLECTIVES if hasattr(dist.distributed_c10d, n)}
        self.reset()

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.api: Counter[str] = Counter()
        self.wire: Counter[str] = Counter()
        self.calls: list[CollectiveCall] = []
        self.syncs: Counter[str] = Counter()
        self.sync_warnings: Counter[str] = Counter()

    @property
    def sent(self) -> int:
        """Bytes this rank put into wire collectives."""
        return sum(c.sent for c in self.calls)

    @property
    def received(self) -> int:
        """Bytes this rank's wire collectives filled."""
        return sum(c.received for c in self.calls)

    def _thread(self) -> str:
        return "train" if threading.get_ident() == self._main else "worker"

    def _depth(self, kind: str) -> int:
        return getattr(self._tls, kind, 0)

    def _group_size(self, bound: dict[str, Any]) -> int:
        try:
            return int(self._dist.get_world_size(group=bound.get("group")))
        except (RuntimeError, ValueError):  # a group this rank is not part of, or none initialised
            return 0

    def _wrap_collective(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = self._signatures[name]
        probe = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = probe._depth("depth")
            if depth == 0:
                probe.api[name] += 1
            if name not in OBJECT_COLLECTIVES:
                probe.wire[name] += 1
                send_arg, recv_arg = _BYTES_ARGS.get(name, (None, None))
                bound = signature.bind_partial(*args, **kwargs).arguments
                probe.calls.append(CollectiveCall(
                    op=name,
                    group_size=probe._group_size(bound),
                    sent=_nbytes(bound.get(send_arg)) if send_arg else 0,
                    received=_nbytes(bound.get(recv_arg)) if recv_arg else 0,
                    thread=probe._thread(),
                ))
            probe._tls.depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                probe._tls.depth = depth

        return wrapper

    def _wrap_sync(self, name: str, original: Callable[..., Any], tensor_method: bool) -> Callable[..., Any]:
        import torch

        probe = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counted = True
            if tensor_method:
                counted = args[0].device.type != "cpu"
                if name == "to":  # only device -> host copies sync
                    target = next((a for a in list(args[1:]) + list(kwargs.values())
                                   if isinstance(a, (str, torch.device))), None)
                    counted = counted and target is not None and torch.device(target).type == "cpu"
            depth = probe._depth("sync_depth")  # a sync inside a sync (e.g. .to inside .cpu) counts once
            if counted and depth == 0:
                probe.syncs[probe._thread()] += 1
            probe._tls.sync_depth = depth + 1
            try:
                return original(*args, **kwargs)
            finally:
                probe._tls.sync_depth = depth

        return wrapper

    def _patch(self, owner: Any, name: str, new: Any) -> None:
        own = name in vars(owner)  # inherited (Tensor.item lives on TensorBase): delete ours again on uninstall
        self._saved.append((owner, name, vars(owner)[name] if own else None))
        setattr(owner, name, new)

    def install(self) -> CollectiveProbe:
        """Start counting (wraps the functions in this process). Returns self."""
        dist = self._dist
        for name in self._signatures:
            wrapper = self._wrap_collective(name, getattr(dist.distributed_c10d, name))
            self._patch(dist.distributed_c10d, name, wrapper)
            if hasattr(dist, name):
                self._patch(dist, name, wrapper)
        if self.count_syncs:
            import torch

            for name in _SYNCING_METHODS:
                self._patch(torch.Tensor, name, self._wrap_sync(name, getattr(torch.Tensor, name), True))
            self._patch(torch.cuda, "synchronize", self._wrap_sync("synchronize", torch.cuda.synchronize, False))
            for cls in (torch.cuda.Event, torch.cuda.Stream):
                self._patch(cls, "synchronize", self._wrap_sync("synchronize", cls.synchronize, False))
            self._warn_state = (warnings.showwarning, list(warnings.filters))
            warnings.simplefilter("always")
            warnings.showwarning = self._on_warning
            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("warn")
        return self

    def uninstall(self) -> None:
        """Stop counting and put every wrapped function back."""
        if self.count_syncs:
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning, warnings.filters[:] = self._warn_state[0], self._warn_state[1]
        for owner, name, original in reversed(self._saved):
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._saved.clear()

    def __enter__(self) -> CollectiveProbe:
        return self.install()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.uninstall()

    def _on_warning(self, message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        if "synchroniz" in str(message).lower():
            self.sync_warnings[self._thread()] += 1
