"""SO3Linear: a linear map per degree, shared across the orders of that degree."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..so3 import CoefficientLayout
from ._common import ConstantsModule, as_layout, check_channels, check_dtype, check_features

__all__ = ["SO3Linear"]


class SO3Linear(ConstantsModule):
    r"""Degree-wise linear map (equivariant because it does not mix orders :math:`m`).

    .. math:: y^{(l)}_{m} = W_l\, x^{(l)}_{m} + \delta_{l0}\, b

    Args:
        layout: ``lmax`` or a :class:`~so2nn.so3.CoefficientLayout` (only ``lmax`` is used).
        in_channels, out_channels: channels of ``x`` and ``y``.
        bias: a bias on the scalars (``l = 0``) only.

    Shapes:
        ``x: [N, (lmax+1)**2, in_channels] -> [N, (lmax+1)**2, out_channels]``.

    Parameters: ``weight [lmax+1, out, in]``, ``bias [out]``.

    Example:
        >>> SO3Linear(2, 4, 8)(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 8])
    """

    def __init__(self, layout: CoefficientLayout | int, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.layout = as_layout(layout)
        check_channels(in_channels=in_channels, out_channels=out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        lmax = self.layout.lmax
        bound = 1 / math.sqrt(in_channels)
        self.weight = nn.Parameter(torch.empty(lmax + 1, out_channels, in_channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_constant("degrees", self.layout.degrees)

    def extra_repr(self) -> str:
        return (f"lmax={self.layout.lmax}, in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"bias={self.bias is not None}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features("x", x, None, self.layout.dim, self.in_channels, self.layout)
        return self.coefficient_major(x.transpose(0, 1)).transpose(0, 1)

    def coefficient_major(self, x: torch.Tensor) -> torch.Tensor:
        """The same map on coefficient-major features, ``[(lmax+1)**2, N, in] -> [(lmax+1)**2, N, out]``:
        for a caller that works in that order (the grid MLP of
        :class:`~so2nn.layers.FeedForwardNetwork`, whose grid transforms are single matmuls there)."""
        if x.dim() != 3 or x.shape[0] != self.layout.dim or x.shape[2] != self.in_channels:
            raise ValueError(f"x must have shape [(lmax+1)**2 = {self.layout.dim}, N, {self.in_channels}] "
                             f"(coefficient-major), got {tuple(x.shape)}")
        check_dtype("x", x, self, self.weight)
        # y_k = W_l(k) x_k for every coefficient k at once: one batched matmul over the coefficients,
        # each with its degree's weight (a handful of operations whatever lmax, where a loop over
        # the degrees dispatches a slice, a matmul and a copy each, forward and backward)
        weight = self.weight.index_select(0, self.degrees).transpose(1, 2)  # [dim, in, out]
        if self.bias is None:
            return torch.bmm(x, weight)
        bias = nn.functional.pad(self.bias.view(1, 1, -1), (0, 0, 0, 0, 0, x.shape[0] - 1))  # on k = 0 only
        return torch.baddbmm(bias, x, weight)
