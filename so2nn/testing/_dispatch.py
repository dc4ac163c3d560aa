r"""Count the aten operations a piece of code dispatches, and those that wait for the host.

On a GPU every dispatched operation is a kernel launch issued by the CPU, and some operations
stall the stream until the device has caught up: reading a value back (``.item()``,
``bool(tensor)``, ``int(tensor)``: ``aten._local_scalar_dense``), and every operation whose
output shape depends on the data (``nonzero``, boolean-mask indexing, ``unique``,
``repeat_interleave`` without ``output_size``, ...). :class:`DispatchCounter` counts both
with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, on any device, so that a CPU
test can pin what a GPU would do.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HOST_SYNC_OPS", "DispatchCounter"]

#: aten operations (overload packets) that make the host wait for the device: a value read
#: back, or an output whose size is known only once the data is.
HOST_SYNC_OPS = frozenset({
    "aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.nonzero_static", "aten.masked_select",
    "aten.unique", "aten._unique", "aten._unique2", "aten.unique_consecutive", "aten.unique_dim",
    "aten.repeat_interleave", "aten.equal", "aten.is_nonzero", "aten.allclose", "aten.bincount",
})

# Shapes-only operations that never launch a kernel.
_VIEWS = frozenset({
    "aten.view", "aten._unsafe_view", "aten.reshape", "aten.expand", "aten.t", "aten.transpose", "aten.permute",
    "aten.unsqueeze", "aten.squeeze", "aten.slice", "aten.select", "aten.split", "aten.split_with_sizes",
    "aten.chunk", "aten.unbind", "aten.detach", "aten.alias", "aten.as_strided", "aten.narrow", "aten.view_as",
    "aten.expand_as", "aten.lift_fresh", "aten._reshape_alias", "aten.unfold", "aten.diagonal",
})


def _waits_for_host(name: str, args, kwargs) -> bool:
    if name == "aten.repeat_interleave":
        return kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None)
    if name in ("aten.index", "aten.index_put", "aten.index_put_"):  # a boolean mask is applied via nonzero
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices or ())
    return name in HOST_SYNC_OPS


class DispatchCounter(TorchDispatchMode):
    """Count the aten operations dispatched inside ``with DispatchCounter() as counter:``.

    Attributes:
        ops: a :class:`collections.Counter` of the operations by name (``"aten.mm"``, ...).
        total: every operation dispatched (each costs the host a few microseconds).
        launches: those that do work (views and other shape-only operations excluded: on a
            GPU, a proxy for the kernels launched).
        host_syncs: how many of them wait for the device (:data:`HOST_SYNC_OPS`).
        sync_ops: those, by name.

    Indexing with a boolean mask counts (the mask is applied through ``nonzero``); a
    ``repeat_interleave`` counts unless its ``output_size`` is given.

    Example:
        >>> x = torch.randn(5)
        >>> with DispatchCounter() as counter:
        ...     y = (x * 2).sum()
        ...     z = x[x > 0]               # a data-dependent shape: a host sync on a GPU
        >>> counter.host_syncs, counter.sync_ops
        (1, Counter({'aten.index': 1}))
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()
        self.sync_ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(getattr(func, "overloadpacket", func))
        self.ops[name] += 1
        if _waits_for_host(name, args, kwargs):
            self.sync_ops[name] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def launches(self) -> int:
        return sum(n for name, n in self.ops.items() if name not in _VIEWS)

    @property
    def host_syncs(self) -> int:
        return sum(self.sync_ops.values())
