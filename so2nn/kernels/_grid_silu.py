r"""SiLU on an S2 grid, in row chunks, storing only its input for backward.

Reference (:class:`~so2nn.layers.S2Activation` with ``kernels="reference"``):

.. math:: y_b = F\,\mathrm{SiLU}(T\,x_b) \quad \text{for each } x_b\ [K, C],

with :math:`T` ``[P, K]`` the to-grid and :math:`F` ``[K_out, P]`` the from-grid matrix of
:class:`~so2nn.so3.S2Grid`. The grid values :math:`G = T x` (``[B, P, C]``, ``P`` grid points:
18x18 = 324 for EquiformerV2, 17x the size of ``x`` at ``K = 19``) are never stored: backward
recomputes them chunk by chunk,

.. math:: \partial x = T^\top \bigl((F^\top \partial y) \odot \mathrm{SiLU}'(G)\bigr),

trading one extra matmul for the memory of two grid tensors per call. On the CPU the chunks
are cache-sized. Backward is built from differentiable ops: double backward (gradient forces
in training) works, and autocast is switched off inside (the matmuls run in ``x``'s dtype).
"""

from __future__ import annotations

import torch

from ._policy import KernelInfo, policy_device

__all__ = ["GRID_SILU", "grid_silu"]

GRID_SILU = KernelInfo("grid_silu", double_backward=True, autocast=True, devices=("cpu", "cuda"))

# Size of the [rows, grid points] temporary per step on the CPU: small enough for the grid
# values to stay in the core's L2 cache between the three steps (512 rows x 324 points = 0.66 MB
# in float32), large enough for efficient matmuls and few Python steps (the timings of chunk
# sizes are in benchmarks/RESULTS.md, "How so2nn spends less time and memory").
_CPU_CHUNK_ELEMENTS = 512 * 324


class _GridSiLU(torch.autograd.Function):
    r""":math:`Y = \mathrm{SiLU}(X T^\top) F^\top` for ``X [R, K]``, in row chunks, storing only ``X``."""

    @staticmethod
    def forward(ctx, x, to_grid, from_grid, chunk):
        ctx.save_for_backward(x, to_grid, from_grid)
        ctx.chunk = chunk
        with torch.autocast(x.device.type, enabled=False):
            to_grid_t, from_grid_t = to_grid.to(x.dtype).T, from_grid.to(x.dtype).T
            if chunk >= x.shape[0]:  # one chunk (a GPU's): three operations
                return torch.nn.functional.silu(x @ to_grid_t, inplace=True) @ from_grid_t
            out = x.new_empty(x.shape[0], from_grid.shape[0])
            for start in range(0, x.shape[0], chunk):
                grid = torch.nn.functional.silu(torch.mm(x[start : start + chunk], to_grid_t), inplace=True)
                torch.mm(grid, from_grid_t, out=out[start : start + chunk])
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, to_grid, from_grid = ctx.saved_tensors
        to_grid, from_grid = to_grid.to(x.dtype), from_grid.to(x.dtype)
        grad_out = grad_out.to(x.dtype)
        double_backward = torch.is_grad_enabled()
        if ctx.chunk >= x.shape[0] and not double_backward:  # one chunk
            return torch.ops.aten.silu_backward(grad_out @ from_grid, x @ to_grid.T) @ to_grid, None, None, None
        grad_x = [] if double_backward else x.new_empty(x.shape)
        for start in range(0, x.shape[0], ctx.chunk):
            grid = x[start : start + ctx.chunk] @ to_grid.T
            grad_silu = grad_out[start : start + ctx.chunk] @ from_grid
            if double_backward:  # differentiable ops: silu_backward has no derivative of its own
                sigmoid = torch.sigmoid(grid)
                grad_x.append((grad_silu * sigmoid * (1 + grid * (1 - sigmoid))) @ to_grid)
            else:
                torch.mm(torch.ops.aten.silu_backward(grad_silu, grid), to_grid, out=grad_x[start : start + ctx.chunk])
        if double_backward:
            grad_x = torch.cat(grad_x) if grad_x else x.new_zeros(x.shape)
        return grad_x, None, None, None


def grid_silu(x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    r""":math:`y_b = F\,\mathrm{SiLU}(T\,x_b)` (module docstring), storing only ``x``.

    Args:
        x: ``[B, K, C]`` coefficients.
        to_grid: ``[P, K]``; from_grid: ``[K_out, P]`` (any subset of rows).

    Returns: ``[B, K_out, C]``.

    Example:
        >>> from so2nn.so3 import S2Grid, CoefficientLayout
        >>> grid = S2Grid(CoefficientLayout(2), resolution=8)
        >>> x = torch.randn(3, 9, 4, dtype=torch.float64)
        >>> y = grid_silu(x, grid.to_grid, grid.from_grid)
        >>> torch.allclose(y, grid.from_grid @ torch.nn.functional.silu(grid.to_grid @ x))
        True
    """
    B, K, C = x.shape
    rows = x.transpose(1, 2).reshape(B * C, K)  # channels into rows: one matmul per chunk
    chunk = max(_CPU_CHUNK_ELEMENTS // to_grid.shape[0], 1) if policy_device(x) == "cpu" else max(rows.shape[0], 1)
    y = _GridSiLU.apply(rows, to_grid, from_grid, chunk)
    return y.view(B, C, from_grid.shape[0]).transpose(1, 2)
