r"""Equivariant normalisations of node features ``[N, (lmax+1)**2, C]``.

Each computes invariant statistics (norms over the orders of a degree, averaged over
channels) and rescales; only the scalars are centred and shifted, so all are exactly
equivariant.
"""

from __future__ import annotations

import torch
from torch import nn

from ..so3 import CoefficientLayout
from ._common import (
    ConstantsModule,
    as_layout,
    at_least_float32,
    check_channels,
    check_dtype,
    check_features,
    replace_scalars,
)

__all__ = ["EquivariantLayerNorm", "EquivariantRMSNorm", "SeparableLayerNorm", "normalization_layer"]


class _Norm(ConstantsModule):
    def __init__(self, layout: CoefficientLayout | int, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.layout = as_layout(layout)
        check_channels(channels=channels)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.channels, self.eps = channels, eps
        self.register_constant("degrees", self.layout.degrees)

    def extra_repr(self) -> str:
        return f"lmax={self.layout.lmax}, channels={self.channels}, eps={self.eps}"

    def _mean_square(self, x: torch.Tensor, balance: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_{i,c} b_i x_{ic}^2` per node (``balance`` :math:`b` holds the :math:`1/C` of
        the mean over channels), in at least float32 and outside autocast.

        Under float16 autocast the contraction would run in half precision, and the gradient
        of :math:`(s + \epsilon)^{-1/2}` for small features (e.g. the :math:`l > 0` part after
        the edge-degree embedding) overflows it."""
        with torch.autocast(x.device.type, enabled=False):
            x = at_least_float32(x)
            return x.pow(2).sum(dim=2) @ balance.to(x.dtype)

    def _check(self, x: torch.Tensor) -> None:
        check_features("x", x, None, self.layout.dim, self.channels, self.layout)
        check_dtype("x", x, self, next(self.parameters()))


class _CenteredNorm(_Norm):
    """Scalars centred over channels; parameters ``affine_weight [lmax+1, C]``, ``affine_bias [C]``."""

    def __init__(self, layout: CoefficientLayout | int, channels: int, eps: float = 1e-5) -> None:
        super().__init__(layout, channels, eps)
        self.affine_weight = nn.Parameter(torch.ones(self.layout.lmax + 1, channels))
        self.affine_bias = nn.Parameter(torch.zeros(channels))

    def _center(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return replace_scalars(x, x[:, 0] - x[:, 0].mean(dim=1, keepdim=True))

    def _shift(self, out: torch.Tensor) -> torch.Tensor:
        return replace_scalars(out, out[:, 0] + self.affine_bias)


class EquivariantLayerNorm(_CenteredNorm):
    r"""Layer norm per degree (``"layer_norm"`` of EquiformerV2's ablations).

    .. math::

        \hat x^{(0)} = x^{(0)} - \overline{x^{(0)}}, \qquad
        y^{(l)} = \frac{\hat x^{(l)}}{\sqrt{\tfrac1C\sum_c \tfrac{1}{2l+1}\|\hat x^{(l)}_c\|^2 + \epsilon}}
        \odot \gamma_l + \delta_{l0}\,\beta

    Args:
        layout: ``lmax`` or a :class:`~so2nn.so3.CoefficientLayout`.
        channels: :math:`C`.
        eps: :math:`\epsilon`.

    Shapes: ``x: [N, (lmax+1)**2, C] -> [N, (lmax+1)**2, C]``. Parameters:
    ``affine_weight [lmax+1, C]``, ``affine_bias [C]``.

    Example:
        >>> EquivariantLayerNorm(2, 4)(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._center(x)
        sq = at_least_float32(x).pow(2)  # statistics in at least float32
        per_degree = sq.new_zeros(x.shape[0], self.layout.lmax + 1, x.shape[2]).index_add_(1, self.degrees, sq)
        per_degree = per_degree / (2 * torch.arange(self.layout.lmax + 1, device=x.device, dtype=sq.dtype) + 1)[:, None]
        scale = (per_degree.mean(dim=2, keepdim=True) + self.eps).rsqrt() * self.affine_weight  # [N, L+1, C]
        return self._shift(x * scale.index_select(1, self.degrees))


class SeparableLayerNorm(_Norm):
    r"""EquiformerV2's separable layer norm (``"layer_norm_sh"``, used by the released models):
    an ordinary layer norm on :math:`l = 0`, and one degree-balanced RMS normalisation shared
    by all degrees :math:`l > 0`.

    .. math::

        y^{(0)} = \mathrm{LayerNorm}(x^{(0)}), \qquad
        y^{(l>0)} = \frac{x^{(l)}}{\sqrt{\tfrac1C \sum_c \tfrac{1}{L}\sum_{l'=1}^{L}
        \tfrac{1}{2l'+1}\|x^{(l')}_c\|^2 + \epsilon}} \odot \gamma_l

    Parameters: ``norm_l0`` (``LayerNorm(C)``), ``affine_weight [lmax, C]``.

    Example:
        >>> SeparableLayerNorm(2, 4)(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(self, layout: CoefficientLayout | int, channels: int, eps: float = 1e-5) -> None:
        super().__init__(layout, channels, eps)
        lmax = self.layout.lmax
        self.norm_l0 = nn.LayerNorm(channels, eps=eps)
        self.affine_weight = nn.Parameter(torch.ones(lmax, channels))
        if lmax:
            # Per coefficient, on all of x (no slices): the balance over l = 1..lmax and the channels,
            # 1 / ((2l+1) lmax C), and 0 for l = 0; the row of gamma of each l > 0 coefficient (any
            # row for l = 0, whose output the layer norm replaces)
            degrees = self.layout.degrees
            balance = torch.where(degrees > 0, 1.0 / ((2 * degrees + 1) * lmax * channels).double(), 0.0)
            self.register_constant("balance", balance)
            self.register_constant("gamma_index", (degrees - 1).clamp(min=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        y0 = self.norm_l0(x[:, 0])
        if self.layout.lmax == 0:
            return y0.unsqueeze(1)
        inv_rms = (self._mean_square(x, self.balance) + self.eps).rsqrt()  # of the l > 0 part
        gamma = self.affine_weight.index_select(0, self.gamma_index)  # [K, C]
        return replace_scalars(x * (inv_rms.view(-1, 1, 1) * gamma), y0)


class EquivariantRMSNorm(_CenteredNorm):
    r"""Degree-balanced RMS norm over all degrees, scalars centred (``"rms_norm_sh"``).

    .. math::

        y = \frac{\hat x}{\sqrt{\tfrac1C\sum_c \tfrac{1}{L+1}\sum_{l}\tfrac{1}{2l+1}\|\hat x^{(l)}_c\|^2 + \epsilon}}
        \odot \gamma_l + \delta_{l0}\,\beta, \qquad \hat x^{(0)} = x^{(0)} - \overline{x^{(0)}}

    Args: as :class:`EquivariantLayerNorm`.

    Shapes: ``x: [N, (lmax+1)**2, C] -> [N, (lmax+1)**2, C]``. Parameters:
    ``affine_weight [lmax+1, C]``, ``affine_bias [C]``.

    Example:
        >>> EquivariantRMSNorm(2, 4)(torch.randn(3, 9, 4)).shape
        torch.Size([3, 9, 4])
    """

    def __init__(self, layout: CoefficientLayout | int, channels: int, eps: float = 1e-5) -> None:
        super().__init__(layout, channels, eps)
        # 1 / ((2l+1)(lmax+1) C) per coefficient: the mean over degrees of each degree's mean square
        balance = 1.0 / ((2 * self.layout.degrees + 1) * (self.layout.lmax + 1) * channels).double()
        self.register_constant("balance", balance)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._center(x)
        inv_rms = (self._mean_square(x, self.balance) + self.eps).rsqrt()
        scale = inv_rms[:, None, None] * self.affine_weight.index_select(0, self.degrees)
        return self._shift(x * scale)


_NORMS = {"layer_norm": EquivariantLayerNorm, "layer_norm_sh": SeparableLayerNorm, "rms_norm_sh": EquivariantRMSNorm}


def normalization_layer(name: str, layout: CoefficientLayout | int, channels: int, eps: float = 1e-5) -> nn.Module:
    """The normalisation called ``name`` in EquiformerV2's configs: ``"layer_norm"``
    (:class:`EquivariantLayerNorm`), ``"layer_norm_sh"`` (:class:`SeparableLayerNorm`, the released
    models') or ``"rms_norm_sh"`` (:class:`EquivariantRMSNorm`).

    Example:
        >>> type(normalization_layer("layer_norm_sh", 2, channels=4)).__name__
        'SeparableLayerNorm'
    """
    if name not in _NORMS:
        raise ValueError(f"unknown normalization {name!r}: choose one of {sorted(_NORMS)}")
    return _NORMS[name](layout, channels, eps)
