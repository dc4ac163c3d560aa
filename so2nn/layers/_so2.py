r"""SO(2) linear maps and SO(2) convolutions in edge frames (eSCN).

In an edge's frame (edge along the polar axis), a tensor product of node features with the
edge's spherical harmonics reduces to a map that only mixes coefficients of the same
:math:`|m|`. For :math:`m = 0` it is a real linear map over all degrees; for :math:`m > 0`
the pair :math:`(x_{+m}, x_{-m})` is treated as one complex number
:math:`x_{+m} + i\,x_{-m}` multiplied by a complex weight :math:`W_r + i W_i`:

.. math::

    y_{+m} = W^{(m)}_r x_{+m} - W^{(m)}_i x_{-m}, \qquad
    y_{-m} = W^{(m)}_r x_{-m} + W^{(m)}_i x_{+m}.

A roll by :math:`\varphi` about the edge turns each pair by :math:`m\varphi`, i.e. multiplies
by :math:`e^{i m \varphi}`, which commutes with the complex weight: the map is equivariant.
Inputs and outputs are edge-frame features in the m-major layout of
:class:`~so2nn.so3.CoefficientLayout`, ``[E, layout.edge_dim, C]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..so3 import CoefficientLayout
from ._common import as_layout, check_channels, check_features
from ._radial import RadialMLP

__all__ = ["SO2Convolution", "SO2Linear"]


class SO2Linear(nn.Module):
    r"""The SO(2)-equivariant linear map of eSCN, with weights independent of the edge.

    Args:
        layout: the (lmax, mmax) layout of the edge-frame features.
        in_channels, out_channels: channels of input and output.
        extra_m0_output_channels: extra invariant outputs computed by the :math:`m = 0` map
            (EquiformerV2 uses them for attention logits and gates); returned separately.

    Shapes:
        ``x: [E, edge_dim, in_channels] -> [E, edge_dim, out_channels]`` (and
        ``[E, extra_m0_output_channels]`` when that is > 0).

    Parameters: ``fc_m0`` (``Linear((lmax+1)*in, (lmax+1)*out + extra)``, with bias);
    for each ``m = 1..mmax``, ``fc_m[m-1]`` (``Linear(K*in, 2*K*out)``, no bias,
    ``K = lmax - m + 1``): the first ``K*out`` output rows are :math:`W_r`, the rest :math:`W_i`.
    Inputs to each linear are flattened coefficient-major (degree outer, channel inner).

    Example:
        >>> layout = CoefficientLayout(3, 2)
        >>> SO2Linear(layout, 4, 6)(torch.randn(10, layout.edge_dim, 4)).shape
        torch.Size([10, 14, 6])
    """

    def __init__(
        self,
        layout: CoefficientLayout | int,
        in_channels: int,
        out_channels: int,
        extra_m0_output_channels: int = 0,
    ) -> None:
        super().__init__()
        self.layout = layout = as_layout(layout)
        check_channels(in_channels=in_channels, out_channels=out_channels)
        if not (isinstance(extra_m0_output_channels, int) and extra_m0_output_channels >= 0):
            raise ValueError(f"extra_m0_output_channels must be an int >= 0, got {extra_m0_output_channels!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.extra_m0_output_channels = extra_m0_output_channels
        n0 = layout.lmax + 1
        self.fc_m0 = nn.Linear(n0 * in_channels, n0 * out_channels + extra_m0_output_channels)
        self.fc_m = nn.ModuleList()
        for m in range(1, layout.mmax + 1):
            k = layout.order_size(m)
            fc = nn.Linear(k * in_channels, 2 * k * out_channels, bias=False)
            # Two products are summed into each output (W_r x_+ - W_i x_-): keep the variance.
            fc.weight.data.mul_(1 / math.sqrt(2))
            self.fc_m.append(fc)

    @property
    def radial_size(self) -> int:
        """Number of per-edge weights that modulate the inputs: one per input coefficient of
        ``m = 0`` and of each ``|m| > 0`` (shared by ``+m`` and ``-m``), times channels."""
        return sum(self.layout.order_size(m) for m in range(self.layout.mmax + 1)) * self.in_channels

    def extra_repr(self) -> str:
        extra = f", extra_m0_output_channels={self.extra_m0_output_channels}" if self.extra_m0_output_channels else ""
        return f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, in_channels={self.in_channels}, out_channels={self.out_channels}{extra}"

    def forward(self, x: torch.Tensor, radial: torch.Tensor | None = None):
        layout = self.layout
        check_features("x", x, None, layout.edge_dim, self.in_channels)
        E = x.shape[0]
        # m = 0: one real map over every degree.
        x0 = x[:, layout.order_slice(0)].reshape(E, -1)
        offset = x0.shape[1]
        if radial is not None:
            x0 = x0 * radial[:, :offset]
        y0 = self.fc_m0(x0)
        extra, y0 = y0.split([self.extra_m0_output_channels, y0.shape[1] - self.extra_m0_output_channels], dim=1)
        out = [y0.reshape(E, -1, self.out_channels)]
        # m > 0: complex multiplication of (x_+m, x_-m).
        for m, fc in enumerate(self.fc_m, start=1):
            xm = x[:, layout.order_slice(m)].reshape(E, 2, -1)  # [E, (+m, -m), K*C]
            if radial is not None:
                width = xm.shape[2]
                xm = xm * radial[:, offset : offset + width].unsqueeze(1)
                offset += width
            yr, yi = fc(xm).chunk(2, dim=2)  # W_r x, W_i x: [E, 2, K*out] each
            y_plus = yr[:, 0] - yi[:, 1]
            y_minus = yr[:, 1] + yi[:, 0]
            out.append(torch.cat([y_plus, y_minus], dim=1).reshape(E, -1, self.out_channels))
        y = torch.cat(out, dim=1)
        return (y, extra) if self.extra_m0_output_channels else y


class SO2Convolution(SO2Linear):
    r"""SO(2) convolution: :class:`SO2Linear` whose inputs are modulated per edge by a radial MLP.

    .. math:: y = W \bigl(x \odot \rho(h_e)\bigr),

    with :math:`h_e` the invariant edge features and :math:`\rho` a :class:`RadialMLP`
    producing one weight per input coefficient of each :math:`|m|` and channel (the same for
    :math:`+m` and :math:`-m`, so the product stays equivariant).

    Args:
        layout, in_channels, out_channels, extra_m0_output_channels: as :class:`SO2Linear`.
        edge_channels_list: sizes ``[edge_in, hidden, ..., hidden]`` of the radial MLP; its
            output size (:attr:`radial_size`) is appended.

    Shapes:
        ``x: [E, edge_dim, in_channels]``, ``edge_features: [E, edge_in]``.

    Example:
        >>> layout = CoefficientLayout(2, 1)
        >>> conv = SO2Convolution(layout, 4, 4, edge_channels_list=[8, 16])
        >>> conv(torch.randn(5, layout.edge_dim, 4), torch.randn(5, 8)).shape
        torch.Size([5, 7, 4])
    """

    def __init__(
        self,
        layout: CoefficientLayout | int,
        in_channels: int,
        out_channels: int,
        edge_channels_list: list[int],
        extra_m0_output_channels: int = 0,
    ) -> None:
        super().__init__(layout, in_channels, out_channels, extra_m0_output_channels)
        self.radial = RadialMLP(list(edge_channels_list) + [self.radial_size])

    def forward(self, x: torch.Tensor, edge_features: torch.Tensor):
        if edge_features.dim() != 2 or edge_features.shape[0] != x.shape[0]:
            raise ValueError(
                f"edge_features must have shape [E={x.shape[0]}, {self.radial.channels[0]}], got {tuple(edge_features.shape)}"
            )
        return super().forward(x, self.radial(edge_features))
