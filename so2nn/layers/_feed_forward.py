r"""The feed-forward block of EquiformerV2 (node-wise)."""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import check_kernels, policy_device, row_block_size, use_recompute
from ..so3 import CoefficientLayout, s2_grid
from ._activation import activation_layer, activation_scalars
from ._common import (
    ConstantsModule,
    as_layout,
    check_channels,
    check_dtype,
    check_features,
    maybe_recompute,
    replace_scalars,
)
from ._linear import SO3Linear

__all__ = ["FeedForwardNetwork"]


class FeedForwardNetwork(ConstantsModule):
    r"""``SO3Linear -> equivariant nonlinearity -> SO3Linear`` on node features.

    With ``grid_mlp=True`` (the released EquiformerV2 models), the nonlinearity is a
    three-layer MLP applied pointwise on the S2 grid,
    :math:`F\,\mathrm{MLP}(T\,W_1 x)`, and with ``activation="separable_s2"`` the scalars are
    replaced by :math:`\mathrm{SiLU}(W_s x^{(0)} + b_s)` computed from the input. The MLP's
    first and last linear maps act on channels and the grid transforms :math:`T`, :math:`F` on
    coefficients, so they commute:

    .. math::

        F\,L_3\,\sigma\,L_2\,\sigma\,L_1\,T\,h = L_3\,F\,\sigma\,L_2\,\sigma\,T\,L_1 h,

    and :math:`L_1`, :math:`L_3` are applied on the :math:`(l_{max}+1)^2` coefficients instead of
    the grid's points (324 at resolution 18 against 25 at lmax 4: two thirds of the MLP's
    multiply-adds saved; the same numbers up to float rounding). Without a
    grid MLP the nonlinearity is the separable S2 activation, the S2 activation, or a gate
    (``activation="gate"``, exactly equivariant).

    Args:
        layout: ``lmax`` or a layout (node features use every order).
        sphere_channels, hidden_channels, output_channels: channel widths.
        activation: ``"separable_s2"``, ``"s2"`` or ``"gate"``.
        grid_mlp: use the grid MLP (not with ``"gate"``).
        grid_resolution: S2 grid resolution (EquiformerV2: 18; the equivariance error this
            gives is measured on the performance page of the docs).
        recompute: with the grid MLP, whenever autograd records, recompute its grid tensors
            (``[N, P, hidden]`` per MLP layer, ``P = 324`` points at resolution 18: most of a
            training step's memory) in backward instead of storing them (same numbers).
        kernels: ``"auto"`` or ``"reference"``, for the activation (see :mod:`so2nn.kernels`);
            ``"auto"`` at inference on the CPU also runs the grid MLP a block of nodes at a time
            (:func:`~so2nn.kernels.row_block_size`), same numbers.

    Shapes: ``x: [N, (lmax+1)**2, sphere_channels] -> [N, (lmax+1)**2, output_channels]``.

    Example:
        >>> ffn = FeedForwardNetwork(2, sphere_channels=4, hidden_channels=8, output_channels=4, grid_resolution=8)
        >>> ffn(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(
        self,
        layout: CoefficientLayout | int,
        sphere_channels: int,
        hidden_channels: int,
        output_channels: int,
        activation: str = "separable_s2",
        grid_mlp: bool = True,
        grid_resolution: int | tuple[int, int] | None = 18,
        *,
        recompute: bool = True,
        kernels: str = "auto",
    ) -> None:
        super().__init__()
        self.layout = layout = CoefficientLayout(as_layout(layout).lmax)
        check_channels(sphere_channels=sphere_channels, hidden_channels=hidden_channels,
                       output_channels=output_channels)
        num_scalars = activation_scalars(activation, layout, hidden_channels)  # checks the name
        if grid_mlp and activation == "gate":
            raise ValueError("grid_mlp=True uses the S2 grid: it cannot be combined with activation='gate'")
        self.activation, self.grid_mlp, self.recompute = activation, grid_mlp, bool(recompute)
        self.kernels = check_kernels(kernels)
        self.sphere_channels, self.hidden_channels = sphere_channels, hidden_channels
        self.output_channels = output_channels

        self.so3_linear_1 = SO3Linear(layout, sphere_channels, hidden_channels)
        self.scalar_mlp = self.gating_linear = self.act = self.mlp = None
        if grid_mlp:
            if activation == "separable_s2":
                self.scalar_mlp = nn.Sequential(nn.Linear(sphere_channels, hidden_channels), nn.SiLU())
            self.mlp = nn.Sequential(
                nn.Linear(hidden_channels, hidden_channels, bias=False), nn.SiLU(),
                nn.Linear(hidden_channels, hidden_channels, bias=False), nn.SiLU(),
                nn.Linear(hidden_channels, hidden_channels, bias=False),
            )
            grid = s2_grid(layout, grid_resolution)
            self.resolution = grid.resolution
            self.register_constant("to_grid", grid.to_grid)
            self.register_constant("from_grid", grid.from_grid)
        else:
            if num_scalars:  # the activation's scalars (gates, or the l = 0 output) from the input's
                self.gating_linear = nn.Linear(sphere_channels, num_scalars)
            self.act = activation_layer(activation, layout, hidden_channels, grid_resolution, kernels=kernels)
        self.so3_linear_2 = SO3Linear(layout, hidden_channels, output_channels)

    def extra_repr(self) -> str:
        return f"lmax={self.layout.lmax}, activation={self.activation!r}, grid_mlp={self.grid_mlp}" + (
            "" if self.recompute else ", recompute=False")

    def _grid_mlp(self, h: torch.Tensor, rows: int | None) -> torch.Tensor:
        """``F MLP(T h)`` of coefficient-major ``h [K, N, C]`` (there the grid transforms are single
        matmuls over every node); ``rows``: nodes per block at inference on the CPU, or None."""
        first, act_1, middle, act_2, last = self.mlp

        def on_grid(h: torch.Tensor) -> torch.Tensor:  # F sigma L_2 sigma T h for h [K, n, C]: one matmul each way
            (K, n, C), P = h.shape, self.to_grid.shape[0]  # (explicit sizes: n may be 0)
            g = (self.to_grid @ h.reshape(K, n * C)).view(P, n, C)
            return (self.from_grid @ act_2(middle(act_1(g))).view(P, n * C)).view(K, n, C)

        h = first(h)  # L_1 T h = T L_1 h: on the coefficients, not the grid points
        if rows is not None:  # inference: a block of nodes at a time ([grid points, N, C] is the largest tensor)
            h = torch.cat([on_grid(part) for part in h.split(rows, dim=1)], dim=1)
        else:
            h = on_grid(h)
        return last(h)  # F L_3 g = L_3 F g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features("x", x, None, self.layout.dim, self.sphere_channels)
        check_dtype("x", x, self, self.so3_linear_1.weight)
        scalars = x[:, 0]
        if not self.grid_mlp:
            h = self.so3_linear_1(x)
            return self.so3_linear_2(self.act(h, None if self.gating_linear is None else self.gating_linear(scalars)))
        # the grid MLP between the two SO3Linear maps, all three coefficient-major ([K, N, C])
        recompute = use_recompute(self.recompute, double_backward=False, device_type=policy_device(x))
        rows = row_block_size(self.kernels, x, self.training, self.to_grid.shape[0] * self.hidden_channels)
        h = maybe_recompute(recompute, self._grid_mlp, self.so3_linear_1.coefficient_major(x.transpose(0, 1)), rows)
        if self.scalar_mlp is not None:
            h = replace_scalars(h, self.scalar_mlp(scalars), dim=0)
        return self.so3_linear_2.coefficient_major(h).transpose(0, 1)
