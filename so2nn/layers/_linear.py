"""SO3Linear: a linear map per degree, shared across the orders of that degree."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..so3 import CoefficientLayout
from ._common import as_layout, check_channels, check_dtype, check_features

__all__ = ["SO3Linear"]


class SO3Linear(nn.Module):
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

    def extra_repr(self) -> str:
        return f"lmax={self.layout.lmax}, in_channels={self.in_channels}, out_channels={self.out_channels}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_features("x", x, None, self.layout.dim, self.in_channels, self.layout)
        check_dtype("x", x, self, self.weight)
        # one matmul per degree, on the 2l+1 orders of that degree (the weights are never
        # expanded to one copy per coefficient, which backward would have to keep)
        return torch.cat([
            nn.functional.linear(x[:, l * l : (l + 1) ** 2], self.weight[l], self.bias if l == 0 else None)
            for l in range(self.layout.lmax + 1)
        ], dim=1)
