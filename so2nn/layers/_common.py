"""Small helpers shared by the layers: layout arguments, constant buffers, recomputation."""

from __future__ import annotations

import torch
import torch.utils.checkpoint
from torch import nn

from .._checks import check_degree
from ..kernels import SCATTER_SUM, policy_device, use_fused
from ..kernels import scatter_sum as kernel_scatter_sum
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


def check_features(name: str, x: torch.Tensor, rows: int | None, coefficients: int, channels: int,
                   layout: CoefficientLayout | None = None, edge: bool = False) -> None:
    """Raise unless ``x`` is ``[rows, coefficients, channels]`` (``rows=None``: any).

    With ``layout``, a mismatch of the coefficient axis that matches the other layout (node
    features where edge-frame features are expected, or the reverse) says so."""
    if torch.is_tensor(x) and x.dim() == 3 and x.shape[1:] == (coefficients, channels) and (
            rows is None or x.shape[0] == rows):
        return  # (the message is built only on failure: formatting a size would fix it under torch.compile)
    what = f"[{'N' if rows is None else rows}, {coefficients}, {channels}]"
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a tensor of shape {what}, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[1:] != (coefficients, channels) or (rows is not None and x.shape[0] != rows):
        hint = ""
        if layout is not None and x.dim() == 3 and layout.dim != layout.edge_dim:
            if edge and x.shape[1] == layout.dim:
                hint = (f" (node features, {layout.dim} = (lmax+1)**2 coefficients, where edge-frame features "
                        f"[E, edge_dim={layout.edge_dim}, C] are expected: rotate them with EdgeRotation.to_edge)")
            elif not edge and x.shape[1] == layout.edge_dim:
                hint = (f" (edge-frame features, edge_dim={layout.edge_dim} coefficients, where node features "
                        f"[N, (lmax+1)**2={layout.dim}, C] are expected: rotate them back with EdgeRotation.from_edge)")
        raise ValueError(f"{name} must have shape {what}, got {tuple(x.shape)}{hint}")


def check_dtype(name: str, x: torch.Tensor, module: nn.Module, weight: torch.Tensor) -> None:
    """Raise unless ``x`` has the dtype of ``weight`` (skipped under autocast, which casts itself)."""
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(
            f"{name} is {x.dtype} but the weights of {type(module).__name__} are {weight.dtype}: "
            f"convert the input (x.to({weight.dtype})) or the module (module.to({x.dtype}))"
        )


def check_edges(edge_index: torch.Tensor, num_nodes: int | None = None) -> int:
    """Raise unless ``edge_index`` is an integer ``[2, E]`` tensor; return ``E``."""
    if not torch.is_tensor(edge_index) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        got = tuple(edge_index.shape) if torch.is_tensor(edge_index) else type(edge_index).__name__
        raise ValueError(f"edge_index must have shape [2, E] (row 0 the source, row 1 the target), got {got}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"edge_index must be an integer tensor (torch.int64), got {edge_index.dtype}")
    return edge_index.shape[1]


def check_rotation(rotation, layout: CoefficientLayout, num_edges: int) -> None:
    """Raise unless ``rotation`` is an :class:`~so2nn.so3.EdgeRotation` of ``layout`` with one frame per edge."""
    from ..so3 import EdgeRotation

    if not isinstance(rotation, EdgeRotation):
        raise ValueError(f"rotation must be an EdgeRotation, got {type(rotation).__name__}")
    if rotation.layout is not layout and rotation.layout != layout:  # (identity first: cheap, and traceable)
        raise ValueError(f"rotation is built for {rotation.layout}, the layer for {layout}")
    if rotation.num_edges != num_edges:
        raise ValueError(f"rotation has {rotation.num_edges} edge frames, edge_index {num_edges} edges")


def check_edge_features(edge_features: torch.Tensor, num_edges: int, width: int) -> None:
    """Raise unless ``edge_features`` is ``[num_edges, width]``."""
    if not torch.is_tensor(edge_features) or edge_features.dim() != 2 or edge_features.shape != (num_edges, width):
        got = tuple(edge_features.shape) if torch.is_tensor(edge_features) else type(edge_features).__name__
        raise ValueError(f"edge_features must have shape [E={num_edges}, {width}] (the radial MLP's input width), "
                         f"got {got}")


def scatter_sum(x: torch.Tensor, index: torch.Tensor, num_nodes: int, kernels: str = "auto") -> torch.Tensor:
    r"""Sum of the rows of ``x`` that share an index, :math:`y_i = \sum_{e: \mathrm{index}(e) = i} x_e`:
    ``[E, ...] -> [num_nodes, ...]`` (the kernel :func:`~so2nn.kernels.scatter_sum` when
    :func:`~so2nn.kernels.use_fused` allows).

    Example:
        >>> scatter_sum(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 2, 0]), 3)
        tensor([4., 0., 2.])
    """
    if use_fused(kernels, SCATTER_SUM, device_type=policy_device(x), double_backward=torch.is_grad_enabled()):
        return kernel_scatter_sum(x, index, num_nodes)
    return x.new_zeros((num_nodes,) + tuple(x.shape[1:])).index_add(0, index, x)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is in a half precision (float16, bfloat16), else ``x`` itself
    (``torch.promote_types(x.dtype, torch.float32)``, decided in Python: no operation dispatched)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def replace_scalars(x: torch.Tensor, scalars: torch.Tensor, dim: int = 1) -> torch.Tensor:
    r"""``x`` with its :math:`l = 0` coefficient (row 0, in the node and the edge-frame layout)
    replaced by ``scalars``: ``[N, K, C]`` and ``[N, C]`` (or ``[N, 1, C]``) -> ``[N, K, C]``.
    ``dim``: the coefficient axis (0 for coefficient-major features ``[K, N, C]``).

    Example:
        >>> replace_scalars(torch.zeros(2, 4, 3), torch.ones(2, 3))[:, :, 0]
        tensor([[1., 0., 0., 0.],
                [1., 0., 0., 0.]])
    """
    if scalars.dim() == 3:
        scalars = scalars.squeeze(dim)
    if scalars.dtype != x.dtype:  # (under autocast) the common dtype, as a concatenation would give
        dtype = torch.promote_types(x.dtype, scalars.dtype)
        x, scalars = x.to(dtype), scalars.to(dtype)
    return torch.select_scatter(x, scalars, dim, 0)  # one operation each way (no slice of x to copy back)


def maybe_recompute(recompute: bool, function, *args):
    """``function(*args)``; with ``recompute``, its intermediates are not stored but recomputed
    in backward (non-reentrant :func:`torch.utils.checkpoint.checkpoint`: same numbers)."""
    if recompute:
        return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)
    return function(*args)
