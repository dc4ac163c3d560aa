"""Small helpers shared by the layers: layout arguments, constant buffers, recomputation."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from .._checks import check_degree
from ..so3 import CoefficientLayout


def as_layout(layout: CoefficientLayout | int) -> CoefficientLayout:
    """Accept a layout or an int ``lmax`` (meaning ``mmax = lmax``)."""
    if isinstance(layout, CoefficientLayout):
        return layout
    if isinstance(layout, int) and not isinstance(layout, bool):
        return CoefficientLayout(layout)
    raise ValueError(f"layout must be a CoefficientLayout or an int lmax, got {layout!r}")


def check_channels(**channels: int) -> None:
    for name, value in channels.items():
        check_degree(name, value, minimum=1)


class ConstantsModule(nn.Module):
    """An ``nn.Module`` whose floating constants (grids, balance weights) stay exact.

    A constant is kept as a CPU source (float64 for floating constants) and exposed as a
    non-persistent buffer (it follows ``.to(device/dtype)`` and never enters the state_dict).
    When the module changes dtype or device, each buffer is rebuilt from its source, so
    ``.double()`` after construction in float32 gives float64-exact matrices, not float32
    values cast up, and ``to_empty()`` after building on the meta device restores them.
    """

    def register_constant(self, name: str, value: torch.Tensor) -> None:
        if "_constant_sources" not in self.__dict__:
            self._constant_sources: dict[str, torch.Tensor] = {}
        if value.is_floating_point():
            self._constant_sources[name] = value.detach().to("cpu", torch.float64)
            value = value.to(torch.get_default_dtype())
        else:  # index maps: kept too, so that to_empty() (meta initialisation) restores them
            self._constant_sources[name] = value.detach().to("cpu")
        self.register_buffer(name, value, persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, source in self.__dict__.get("_constant_sources", {}).items():
            current = self._buffers[name]
            dtype = current.dtype if source.is_floating_point() else source.dtype
            self._buffers[name] = source.to(device=current.device, dtype=dtype)
        return self


def check_features(name: str, x: torch.Tensor, rows: int | None, coefficients: int, channels: int) -> None:
    """Raise unless ``x`` is ``[rows, coefficients, channels]`` (``rows=None``: any)."""
    what = f"[{'N' if rows is None else rows}, {coefficients}, {channels}]"
    if not torch.is_tensor(x) or x.dim() != 3 or x.shape[1:] != (coefficients, channels) or (
        rows is not None and x.shape[0] != rows
    ):
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must have shape {what}, got {got}")


def maybe_recompute(recompute: bool, function, *args):
    """``function(*args)``; with ``recompute``, its intermediates are not stored but recomputed
    in backward (non-reentrant :func:`torch.utils.checkpoint.checkpoint`: same numbers)."""
    if recompute:
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)
    return function(*args)
