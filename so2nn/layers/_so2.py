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
from typing import NamedTuple

import torch
from torch import nn

from ..kernels import SO2Weights
from ..so3 import CoefficientLayout
from ._common import (
    ConstantsModule,
    as_layout,
    check_channels,
    check_dtype,
    check_edge_features,
    check_features,
)
from ._radial import RadialMLP

__all__ = ["SO2Convolution", "SO2Linear", "SO2Output", "complex_matrix"]


def complex_matrix(weight: torch.Tensor) -> torch.Tensor:
    r"""The complex product of an order :math:`m > 0` as one real matrix,
    :math:`\begin{pmatrix} W_r & -W_i \\ W_i & W_r \end{pmatrix}` (``[2K out, 2K in]``), from the stacked
    ``[W_r; W_i]`` (``[2K out, K in]``, the layout of ``SO2Linear.fc_m[m-1].weight``).

    Example:
        >>> complex_matrix(torch.tensor([[1.0], [2.0]]))   # W_r = 1, W_i = 2
        tensor([[ 1., -2.],
                [ 2.,  1.]])
    """
    return _ComplexMatrix.apply(weight)


def _real_and_imaginary(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    half = weight.shape[0] // 2
    return weight[:half], weight[half:]


class _ComplexMatrix(torch.autograd.Function):
    r""":func:`complex_matrix` with its adjoint written out, :math:`\partial W_r = G_{rr} + G_{ii}`,
    :math:`\partial W_i = G_{ir} - G_{ri}` (one operation each way instead of the slices and copies
    that autograd's own backward of the block assembly dispatches). Differentiable again."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor) -> torch.Tensor:
        w_real, w_imag = _real_and_imaginary(weight)
        return torch.cat([weight, torch.cat([-w_imag, w_real])], dim=1)  # [W_r; W_i] beside [-W_i; W_r]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _ComplexMatrixAdjoint.apply(grad)


class _ComplexMatrixAdjoint(torch.autograd.Function):
    """The adjoint of :func:`complex_matrix` (``[[G_rr, G_ri], [G_ir, G_ii]] -> [G_rr + G_ii; G_ir - G_ri]``),
    whose own adjoint is :func:`complex_matrix` (so that second derivatives flow)."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (g_rr, g_ir), (g_ri, g_ii) = (_real_and_imaginary(column) for column in grad.chunk(2, dim=1))
        return torch.cat([g_rr + g_ii, g_ir - g_ri])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _ComplexMatrix.apply(grad)


class SO2Output(NamedTuple):
    """What :class:`SO2Linear` and :class:`SO2Convolution` return.

    Attributes:
        y: ``[E, edge_dim, out_channels]`` edge-frame features.
        extra: ``[E, extra_m0_output_channels]`` invariant outputs of the :math:`m = 0` map
            (``[E, 0]`` when the layer has none).
    """

    y: torch.Tensor
    extra: torch.Tensor


class SO2Linear(ConstantsModule):
    r"""The SO(2)-equivariant linear map of eSCN, with weights independent of the edge.

    .. math::

        y_{0} = W^{(0)} x_{0} + b, \qquad
        \begin{pmatrix} y_{+m} \\ y_{-m} \end{pmatrix} =
        \begin{pmatrix} W^{(m)}_r & -W^{(m)}_i \\ W^{(m)}_i & W^{(m)}_r \end{pmatrix}
        \begin{pmatrix} x_{+m} \\ x_{-m} \end{pmatrix} \quad (1 \le m \le m_{max}),

    where :math:`x_m` stacks the coefficients of order :math:`m` over the degrees
    :math:`l \ge m` (flattened degree-major, channels inner).

    Args:
        layout: the (lmax, mmax) layout of the edge-frame features.
        in_channels, out_channels: channels of input and output.
        extra_m0_output_channels: extra invariant outputs computed by the :math:`m = 0` map
            (EquiformerV2 uses them for attention logits and gates).

    Shapes:
        ``x: [E, edge_dim, in_channels]`` -> :class:`SO2Output` ``(y [E, edge_dim, out_channels],
        extra [E, extra_m0_output_channels])``, always (``extra`` is ``[E, 0]`` without extra outputs).

    Parameters: ``fc_m0`` (``Linear((lmax+1)*in, (lmax+1)*out + extra)``, with bias, the extra
    outputs first); for each ``m = 1..mmax``, ``fc_m[m-1]`` (``Linear(K*in, 2*K*out)``, no bias,
    ``K = lmax - m + 1``): the first ``K*out`` output rows are :math:`W_r`, the rest :math:`W_i`.

    Example:
        >>> layout = CoefficientLayout(3, 2)
        >>> y, extra = SO2Linear(layout, 4, 6)(torch.randn(10, layout.edge_dim, 4))
        >>> y.shape, extra.shape
        (torch.Size([10, 14, 6]), torch.Size([10, 0]))
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
        if isinstance(extra_m0_output_channels, bool) or not (
            isinstance(extra_m0_output_channels, int) and extra_m0_output_channels >= 0
        ):
            raise ValueError(f"extra_m0_output_channels must be an int >= 0, got {extra_m0_output_channels!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.extra_m0_output_channels = extra_m0_output_channels
        # sizes of the m-major blocks of x: [x_0], then [x_+m, x_-m] for each m > 0
        self._order_sizes = [layout.order_size(m) * (1 if m == 0 else 2) for m in range(layout.mmax + 1)]
        n0 = layout.lmax + 1
        self.fc_m0 = nn.Linear(n0 * in_channels, n0 * out_channels + extra_m0_output_channels)
        self.fc_m = nn.ModuleList()
        for m in range(1, layout.mmax + 1):
            k = layout.order_size(m)
            fc = nn.Linear(k * in_channels, 2 * k * out_channels, bias=False)
            # Two products are summed into each output (W_r x_+ - W_i x_-): keep the variance.
            fc.weight.data.mul_(1 / math.sqrt(2))
            self.fc_m.append(fc)

    def extra_repr(self) -> str:
        extra = f", extra_m0_output_channels={self.extra_m0_output_channels}" if self.extra_m0_output_channels else ""
        return (f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, in_channels={self.in_channels}, "
                f"out_channels={self.out_channels}{extra}")

    def complex_weight(self, m: int) -> torch.Tensor:
        r"""The real ``[2K*out, 2K*in]`` matrix :math:`\begin{pmatrix} W_r & -W_i \\ W_i & W_r \end{pmatrix}`
        of order ``m >= 1`` (:func:`complex_matrix`): it maps the flattened pair ``[x_+m, x_-m]`` to
        ``[y_+m, y_-m]`` in one matmul."""
        return complex_matrix(self.fc_m[m - 1].weight)

    def weights(self) -> SO2Weights:
        """This map's parameters as one record, :class:`~so2nn.kernels.SO2Weights`, with the complex
        matrices of every order built (differentiably: gradients reach ``fc_m``). A caller that runs
        the map more than once in a forward (on blocks of edges) builds it once and passes it to
        :meth:`forward`; the kernels take it too."""
        fc_m = tuple(fc.weight for fc in self.fc_m)
        return SO2Weights(self.layout, self.fc_m0.weight, self.fc_m0.bias, fc_m, tuple(map(complex_matrix, fc_m)),
                          self.extra_m0_output_channels)

    def forward(self, x: torch.Tensor, weights: SO2Weights | None = None) -> SO2Output:
        """``weights``: :meth:`weights`, when the caller has them already."""
        check_features("x", x, None, self.layout.edge_dim, self.in_channels, self.layout, edge=True)
        check_dtype("x", x, self, self.fc_m0.weight)
        w = self.weights() if weights is None else weights
        E, extra = x.shape[0], self.extra_m0_output_channels
        orders = x.split(self._order_sizes, dim=1)
        # y_0 = W_0 x_0 + b over every degree at once; then each (x_+m, x_-m) pair times its complex weight
        y0 = torch.nn.functional.linear(orders[0].reshape(E, orders[0].shape[1] * orders[0].shape[2]),
                                        w.m0_weight, w.m0_bias)
        scalars, y0 = y0.split([extra, y0.shape[1] - extra], dim=1)
        ym = [xm.reshape(E, xm.shape[1] * xm.shape[2]) @ w.complex[m - 1].T for m, xm in enumerate(orders) if m]
        return SO2Output(torch.cat([y0, *ym], dim=1).view(E, self.layout.edge_dim, self.out_channels), scalars)


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
        ``x: [E, edge_dim, in_channels]``, ``edge_features: [E, edge_in]`` -> :class:`SO2Output`.

    Example:
        >>> layout = CoefficientLayout(2, 1)
        >>> conv = SO2Convolution(layout, 4, 4, edge_channels_list=[8, 16])
        >>> conv(torch.randn(5, layout.edge_dim, 4), torch.randn(5, 8)).y.shape
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
        layout = self.layout
        # the radial weight of each edge-frame row: one per coefficient of m = 0 and per |m| > 0
        # pair (the radial output is order by order, [K_m, in_channels] each)
        slots, index = 0, []
        for m in range(layout.mmax + 1):
            k = layout.order_size(m)
            index += list(range(slots, slots + k)) * (1 if m == 0 else 2)
            slots += k
        self.radial_size = slots * in_channels
        self.register_constant("radial_index", torch.tensor(index, device="cpu"))  # CPU even under torch.device("meta")
        self.radial = RadialMLP(list(edge_channels_list) + [self.radial_size])

    def weights(self) -> SO2Weights:
        """As :meth:`SO2Linear.weights`, with the last layer of the radial MLP (``radial``), which the
        kernel :func:`~so2nn.kernels.edge_convolution` applies itself."""
        return super().weights()._replace(radial=(self.radial.last.weight, self.radial.last.bias))

    def forward(self, x: torch.Tensor, edge_features: torch.Tensor, weights: SO2Weights | None = None) -> SO2Output:
        """``weights``: :meth:`weights`, when the caller has them already."""
        check_features("x", x, None, self.layout.edge_dim, self.in_channels, self.layout, edge=True)
        check_edge_features(edge_features, x.shape[0], self.radial.channels[0])
        check_dtype("edge_features", edge_features, self, self.fc_m0.weight)
        rho = self.radial(edge_features).view(x.shape[0], self.radial_size // self.in_channels, self.in_channels)
        return super().forward(x * rho.index_select(1, self.radial_index), weights)
