r"""Equivariant nonlinearities: gates, pointwise activations on an S2 grid, and their
separable versions (EquiformerV2).

A pointwise nonlinearity :math:`\sigma` applied to the function
:math:`f(\hat r) = \sum_{lm} x_{lm} Y_{lm}(\hat r)` commutes with rotations; sampled on a
finite grid, it commutes only up to aliasing: :math:`\sigma \circ f` is not band-limited, and
the part above the grid's resolution folds back. The error falls as the resolution grows.
With the identity for :math:`\sigma` the grid round trip is exact, so every equivariance
error of these layers is that aliasing.

Measured here (float64, unit-variance random features, 16 channels, SiLU, worst of 5 random
rotations; ``tests/layers/test_activation.py`` asserts the trend): max relative equivariance
error of :class:`S2Activation` on node features

=====  ========  ========  ========  ========  ========
lmax   res 18    res 24    res 36    res 48    res 64
=====  ========  ========  ========  ========  ========
2      1.1e-4    7.1e-7    1.4e-9    1e-12     1e-15
4      7.2e-3    6.3e-4    8.6e-6    7.0e-7    3.4e-10
6      1.1e-1    8.7e-3    4.4e-4    3.0e-5    3.3e-7
=====  ========  ========  ========  ========  ========

Inside a trained network the inputs are normalised and the error at the outputs is smaller
(EquiformerV2's released resolution 18 gives force errors of ~2e-4 relative at lmax 4).
Edge-frame grids (``edge=True``) alias far less: a global rotation changes only the roll
about the edge, which shifts the azimuthal samples. so2nn's "fine enough" resolution,
:func:`fine_grid_resolution`, is ``8 * (lmax + 2)`` (48 at lmax 4, 64 at lmax 6), where the
error is below 1e-5. Pretrained weights do not depend on the resolution: it can be raised
at inference time.
"""

from __future__ import annotations

import torch
from torch import nn

from ..so3 import CoefficientLayout
from ..so3._grid import s2_grid
from ._common import ConstantsModule, as_layout, check_channels

__all__ = ["GateActivation", "S2Activation", "SeparableS2Activation", "SmoothLeakyReLU", "fine_grid_resolution"]


def fine_grid_resolution(lmax: int) -> int:
    """A grid resolution at which SiLU on the grid is equivariant to better than 1e-5 (float64).

    ``8 * (lmax + 2)``, from the errors measured on unit-variance node features (the table of
    this module's docstring; the docs' performance page plots them).

    Example:
        >>> fine_grid_resolution(4), fine_grid_resolution(6)
        (48, 64)
    """
    return 8 * (lmax + 2)


# Size of the [rows, grid points] temporary per step on the CPU: small enough for the grid
# values to stay in the core's L2 cache between the three steps (512 rows x 324 points = 0.66 MB
# in float32), large enough for efficient matmuls and few Python steps (forward + backward of
# the 31M model's edge activation, 2 threads: 44 ms in 512-row chunks, 61 ms in 4096-row ones).
_CPU_CHUNK_ELEMENTS = 512 * 324


class _GridSiLU(torch.autograd.Function):
    r""":math:`Y = \mathrm{SiLU}(X T^\top) F^\top` for ``X [R, K]``, in row chunks, storing only ``X``.

    The grid values :math:`G = X T^\top` (``[R, P]``, ``P`` grid points: 18x18 = 324 for
    EquiformerV2, so 17x the size of ``X`` at ``K = 19``) are never kept: backward recomputes
    them chunk by chunk,

    .. math:: \partial X = \bigl((\partial Y\, F) \odot \mathrm{SiLU}'(G)\bigr)\, T,

    which trades one extra ``R x K x P`` matmul for the memory of two grid tensors per call.
    Backward is built from differentiable ops, so double backward (gradient forces in
    training) works.
    """

    @staticmethod
    def forward(ctx, x, to_grid, from_grid, chunk):
        ctx.save_for_backward(x, to_grid, from_grid)
        ctx.chunk = chunk
        out = x.new_empty(x.shape[0], from_grid.shape[0])
        with torch.autocast(x.device.type, enabled=False):
            to_grid_t, from_grid_t = to_grid.to(x.dtype).T, from_grid.to(x.dtype).T
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
        grad_x = [] if double_backward else x.new_empty(x.shape)
        for start in range(0, x.shape[0], ctx.chunk):
            grid = x[start : start + ctx.chunk] @ to_grid.T
            grad_silu = grad_out[start : start + ctx.chunk] @ from_grid
            if double_backward:  # differentiable ops: silu_backward has no derivative of its own
                sigmoid = torch.sigmoid(grid)
                grad_x.append((grad_silu * sigmoid * (1 + grid * (1 - sigmoid))) @ to_grid)
            else:
                torch.mm(torch.ops.aten.silu_backward(grad_silu, grid), to_grid, out=grad_x[start : start + ctx.chunk])
        return torch.cat(grad_x) if double_backward else grad_x, None, None, None


def grid_silu(x: torch.Tensor, to_grid: torch.Tensor, from_grid: torch.Tensor) -> torch.Tensor:
    r"""SiLU on an S2 grid: :math:`y_b = F\,\mathrm{SiLU}(T\,x_b)` for each ``x_b [K, C]``.

    Args:
        x: ``[B, K, C]`` coefficients.
        to_grid: ``[P, K]``, the samples of each coefficient's function on ``P`` grid points.
        from_grid: ``[K_out, P]``, the projection back (any subset of rows).

    Returns: ``[B, K_out, C]``. Memory: the ``[B, P, C]`` grid is neither stored for backward
    nor materialised at once (on the CPU it is computed in cache-sized chunks).

    Example:
        >>> from so2nn.so3 import S2Grid, CoefficientLayout
        >>> grid = S2Grid(CoefficientLayout(2), resolution=8)
        >>> x = torch.randn(3, 9, 4, dtype=torch.float64)
        >>> y = grid_silu(x, grid.to_grid, grid.from_grid)
        >>> torch.allclose(y, grid.from_grid @ torch.nn.functional.silu(grid.to_grid @ x))
        True
    """
    if torch.compiler.is_compiling():  # one fused graph: the compiler handles the temporaries
        return from_grid.to(x.dtype) @ torch.nn.functional.silu(to_grid.to(x.dtype) @ x)
    B, K, C = x.shape
    rows = x.transpose(1, 2).reshape(B * C, K)  # channels into rows: one matmul per chunk
    chunk = max(_CPU_CHUNK_ELEMENTS // to_grid.shape[0], 1) if x.device.type == "cpu" else max(rows.shape[0], 1)
    y = _GridSiLU.apply(rows, to_grid, from_grid, chunk)
    return y.view(B, C, -1).transpose(1, 2)


class SmoothLeakyReLU(nn.Module):
    r"""Smooth leaky ReLU: :math:`\tfrac{1+a}{2}x + \tfrac{1-a}{2}\,x\,(2\sigma(x) - 1)`
    (EquiformerV2's attention activation, ``negative_slope`` :math:`a = 0.2`).

    Elementwise, any shape. Example:

        >>> SmoothLeakyReLU()(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([-0.4152,  0.0000,  0.7848])
    """

    def __init__(self, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.negative_slope = negative_slope

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.negative_slope
        return 0.5 * (1 + a) * x + 0.5 * (1 - a) * x * (2 * torch.sigmoid(x) - 1)


def _coefficient_degrees(layout: CoefficientLayout, edge: bool) -> torch.Tensor:
    return layout.m_major_degrees if edge else layout.degrees


class GateActivation(ConstantsModule):
    r"""Gate: SiLU on the scalars, and each degree :math:`l > 0` scaled by a sigmoid gate.

    .. math:: y^{(0)} = \mathrm{SiLU}(x^{(0)}), \qquad y^{(l)} = \sigma(g_l) \odot x^{(l)}

    Exactly equivariant (the gates are invariant).

    Args:
        layout: the (lmax, mmax) layout.
        channels: channels :math:`C`.
        edge: ``True`` for edge-frame features ``[E, edge_dim, C]`` (m-major), ``False`` for
            node features ``[N, (lmax+1)**2, C]``.

    Shapes:
        ``gates: [N, lmax * C]`` (degree-major), ``x: [N, K, C] -> [N, K, C]``.

    Example:
        >>> gate = GateActivation(2, channels=4)
        >>> gate(torch.randn(3, 2 * 4), torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(self, layout: CoefficientLayout | int, channels: int, edge: bool = False) -> None:
        super().__init__()
        self.layout, self.channels, self.edge = as_layout(layout), channels, edge
        check_channels(channels=channels)
        # gate row of each l > 0 coefficient: l - 1 (row 0 of the padded table for l = 0)
        self.register_constant("gate_index", _coefficient_degrees(self.layout, edge))

    def extra_repr(self) -> str:
        return f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, channels={self.channels}, edge={self.edge}"

    def forward(self, gates: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        lmax = self.layout.lmax
        if gates.shape[-1] != lmax * self.channels:
            raise ValueError(f"gates must have shape [N, lmax * channels = {lmax * self.channels}], got {tuple(gates.shape)}")
        g = torch.sigmoid(gates).reshape(-1, lmax, self.channels)
        g = torch.cat([torch.ones_like(g[:, :1]), g], dim=1).index_select(1, self.gate_index)
        return torch.cat([torch.nn.functional.silu(x[:, :1]), x[:, 1:] * g[:, 1:]], dim=1)


class S2Activation(ConstantsModule):
    r"""Pointwise SiLU on an S2 grid: :math:`y = F\,\mathrm{SiLU}(T x)` with the to-grid
    matrix :math:`T` and from-grid matrix :math:`F` of :class:`~so2nn.so3.S2Grid`
    (e3nn's ``"component"`` normalisation, as EquiformerV2).

    Args:
        layout: the (lmax, mmax) layout.
        resolution: grid resolution (``int`` or ``(res_beta, res_alpha)``; EquiformerV2: 18).
            Equivariance error on node features at 18, unit-variance input: 7e-3 relative at
            lmax 4, 1e-1 at lmax 6 (aliasing; table in the module docstring); use
            :func:`fine_grid_resolution` for < 1e-5.
        edge: ``True`` for edge-frame features ``[E, edge_dim, C]`` (m-major, ``|m| <= mmax``,
            with EquiformerV2's truncation rescale); ``False`` for node features
            ``[N, (lmax+1)**2, C]`` (all orders).

    Example:
        >>> act = S2Activation(CoefficientLayout(2), resolution=8)
        >>> act(torch.randn(4, 9, 3)).shape
        torch.Size([4, 9, 3])
    """

    def __init__(
        self, layout: CoefficientLayout | int, resolution: int | tuple[int, int] | None = 18, edge: bool = False
    ) -> None:
        super().__init__()
        layout = as_layout(layout)
        if not edge:  # node features carry every order: the grid must resolve m up to lmax
            layout = CoefficientLayout(layout.lmax)
        self.layout, self.edge = layout, edge
        grid = s2_grid(layout, resolution if not isinstance(resolution, list) else tuple(resolution))
        self.resolution = grid.resolution
        to_grid, from_grid = grid.edge_matrices() if edge else (grid.to_grid, grid.from_grid)
        self.register_constant("to_grid", to_grid)
        self.register_constant("from_grid", from_grid)

    def extra_repr(self) -> str:
        return f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, resolution={self.resolution}, edge={self.edge}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grid_silu(x, self.to_grid, self.from_grid)


class SeparableS2Activation(nn.Module):
    r"""EquiformerV2's separable S2 activation: SiLU on given invariant scalars for
    :math:`l = 0`, and the grid SiLU of :class:`S2Activation` for :math:`l > 0`.

    .. math:: y^{(0)} = \mathrm{SiLU}(s), \qquad y^{(l>0)} = \bigl[F\,\mathrm{SiLU}(T x)\bigr]^{(l)}

    Args: as :class:`S2Activation`.

    Shapes:
        ``scalars: [N, C]``, ``x: [N, K, C] -> [N, K, C]``.

    Example:
        >>> act = SeparableS2Activation(CoefficientLayout(2), resolution=8)
        >>> scalars, x = torch.randn(4, 3), torch.randn(4, 9, 3)
        >>> y = act(scalars, x)
        >>> y.shape, torch.equal(y[:, 0], torch.nn.functional.silu(scalars))
        (torch.Size([4, 9, 3]), True)
    """

    def __init__(
        self, layout: CoefficientLayout | int, resolution: int | tuple[int, int] | None = 18, edge: bool = False
    ) -> None:
        super().__init__()
        self.s2_act = S2Activation(layout, resolution, edge)

    def forward(self, scalars: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if scalars.dim() != 2 or scalars.shape != (x.shape[0], x.shape[2]):
            raise ValueError(f"scalars must have shape [N={x.shape[0]}, C={x.shape[2]}], got {tuple(scalars.shape)}")
        # the grid's l = 0 output is replaced by SiLU(scalars): project back onto l > 0 only
        higher = grid_silu(x, self.s2_act.to_grid, self.s2_act.from_grid[1:])
        return torch.cat([torch.nn.functional.silu(scalars).unsqueeze(1).to(higher.dtype), higher], dim=1)
