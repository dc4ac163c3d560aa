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
from ._common import as_layout, check_channels, check_features, maybe_recompute
from ._gather import rotate_pairs, rotate_pairs_adjoint
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
        # Sizes of the m-major blocks of x ([x_0], [x_+m, x_-m]) and of the per-edge radial
        # weights (one per coefficient of m = 0 and per |m| > 0 pair), for split() in forward.
        self._order_sizes = [layout.order_size(m) * (1 if m == 0 else 2) for m in range(layout.mmax + 1)]
        self._radial_sizes = [layout.order_size(m) * in_channels for m in range(layout.mmax + 1)]
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
        """Number of per-edge weights that modulate the inputs.

        One per input coefficient of ``m = 0`` and of each ``|m| > 0`` (shared by ``+m`` and
        ``-m``), times channels."""
        return sum(self._radial_sizes)

    def extra_repr(self) -> str:
        extra = f", extra_m0_output_channels={self.extra_m0_output_channels}" if self.extra_m0_output_channels else ""
        return f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, in_channels={self.in_channels}, out_channels={self.out_channels}{extra}"

    def complex_weight(self, m: int) -> torch.Tensor:
        r"""The real ``[2K*out, 2K*in]`` matrix :math:`\begin{pmatrix} W_r & -W_i \\ W_i & W_r \end{pmatrix}`
        of order ``m >= 1``: it maps the flattened pair ``[x_+m, x_-m]`` to ``[y_+m, y_-m]`` in one matmul."""
        return _complex_matrix(self.fc_m[m - 1].weight)

    def forward(self, x: torch.Tensor, radial: torch.Tensor | None = None):
        check_features("x", x, None, self.layout.edge_dim, self.in_channels)
        return self._forward(x, radial)

    def _forward(self, x, radial):
        weights = [self.complex_weight(m) for m in range(1, self.layout.mmax + 1)]
        y, extra = self._apply_weights(x, radial, self.fc_m0.weight, self.fc_m0.bias, weights)
        return (y, extra) if self.extra_m0_output_channels else y

    def _apply_weights(self, x, radial, w0, b0, complex_weights):
        """``(y [E, edge_dim, out], extra [E, extra_m0_output_channels])`` with the given weights.

        ``x`` is ``[E, edge_dim, in]``, or (with ``radial``) a tuple of tensors that are
        consecutive parts of its channels, e.g. the rotated source and target features of
        :func:`~so2nn.layers._gather.rotate_pairs`: they are modulated straight into the
        matmul inputs, never concatenated."""
        parts = x if isinstance(x, tuple) else (x,)
        E = parts[0].shape[0]
        # The m-major slices of x (one view per part) and of the radial weights.
        orders = zip(*(part.split(self._order_sizes, dim=1) for part in parts))
        if radial is not None:
            radial = radial.split(self._radial_sizes, dim=1)
        out = []
        for m, xm in enumerate(orders):
            # flattened coefficient-major: degree (and for m > 0 the sign of m) outer, channels inner
            xm = xm[0].reshape(E, -1) if radial is None else _modulate(xm, radial[m], 1 if m == 0 else 2)
            if m == 0:  # one real map over every degree
                y = torch.nn.functional.linear(xm, w0, b0)
                extra, y = y.split([self.extra_m0_output_channels, y.shape[1] - self.extra_m0_output_channels], dim=1)
            else:  # complex multiplication of (x_+m, x_-m), as one real matmul
                y = xm @ complex_weights[m - 1].T
            out.append(y)
        return torch.cat(out, dim=1).view(E, self.layout.edge_dim, self.out_channels), extra


def _modulate(parts: tuple[torch.Tensor, ...], radial: torch.Tensor, signs: int) -> torch.Tensor:
    r"""The radially modulated input of one order, :math:`x \odot \rho`, flattened: ``[E, signs * K * in]``.

    ``parts``: the order's coefficients ``[E, signs * K, in / P]`` of each of ``P`` channel
    parts; ``radial``: ``[E, K * in]``, shared by ``+m`` and ``-m`` (``signs = 2``). Without
    autograd the parts are multiplied straight into their channel slots of the output."""
    E, P, C = radial.shape[0], len(parts), parts[0].shape[-1]
    K = radial.shape[1] // (P * C)
    radial = radial.view(E, 1, K, P, C)
    if P == 1:
        return (parts[0].reshape(E, signs, K, 1, C) * radial).view(E, -1)
    if torch.is_grad_enabled():
        return (torch.stack([part.view(E, signs, K, C) for part in parts], dim=3) * radial).view(E, -1)
    out = radial.new_empty((E, signs, K, P, C), dtype=torch.result_type(parts[0], radial))
    for i, part in enumerate(parts):
        torch.mul(part.view(E, signs, K, C), radial[:, :, :, i], out=out[:, :, :, i])
    return out.view(E, -1)


class SO2Convolution(SO2Linear):
    r"""SO(2) convolution: :class:`SO2Linear` whose inputs are modulated per edge by a radial MLP.

    .. math:: y = W \bigl(x \odot \rho(h_e)\bigr),

    with :math:`h_e` the invariant edge features and :math:`\rho` a :class:`RadialMLP`
    producing one weight per input coefficient of each :math:`|m|` and channel (the same for
    :math:`+m` and :math:`-m`, so the product stays equivariant).

    Args:
        layout, in_channels, out_channels, extra_m0_output_channels: as :class:`SO2Linear`.
        edge_channels_list: sizes ``[edge_in, hidden, ..., hidden]`` of the radial MLP; its
            output size (:attr:`~SO2Linear.radial_size`) is appended.

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


def _complex_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``[[W_r, -W_i], [W_i, W_r]]`` from the stacked ``[W_r; W_i]`` of an ``fc_m`` layer."""
    w_real, w_imag = weight.chunk(2, dim=0)
    return torch.cat([torch.cat([w_real, -w_imag], dim=1), torch.cat([w_imag, w_real], dim=1)], dim=0)


def _complex_matrix_grad(grad: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_complex_matrix`: the gradient of ``[W_r; W_i]`` from that of the block matrix."""
    (g_rr, g_ri), (g_ir, g_ii) = (half.chunk(2, dim=1) for half in grad.chunk(2, dim=0))
    return torch.cat([g_rr + g_ii, g_ir - g_ri], dim=0)


class _EdgeMessageConvolution(torch.autograd.Function):
    r"""Gather, rotate and SO(2)-convolve in one step, storing only node features for backward.

    .. math:: y_e = W\bigl(\rho_e \odot D_e\,[x_{s(e)} \,\|\, x_{t(e)}]\bigr)

    Plain autograd would keep, per layer, the rotated edge features ``[E, edge_dim, 2C]`` and
    their radially modulated copy (on the 31M model about half of a training step's stored
    activations). Here backward recomputes both from the node features ``[N, (lmax+1)**2, C]``
    (a gather and a batched matmul, a few per cent of the layer's FLOPs), and the block
    matrices of the complex weights from the ``fc_m`` weights. The edge frames
    ``D`` must not need a gradient (direct forces); gradient forces use the plain path.
    Not differentiable twice.
    """

    @staticmethod
    def forward(ctx, x, source, target, matrix, hidden, radial_weight, radial_bias, conv, w0, b0, *fc_weights):
        ctx.conv = conv
        ctx.save_for_backward(x, source, target, matrix, hidden, radial_weight, radial_bias, w0, *fc_weights)
        pairs = rotate_pairs(matrix, x, source, target)
        radial = torch.nn.functional.linear(hidden, radial_weight, radial_bias)
        return conv._apply_weights(pairs, radial, w0, b0, [_complex_matrix(w) for w in fc_weights])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_extra):
        x, source, target, matrix, hidden, radial_weight, radial_bias, w0, *fc_weights = ctx.saved_tensors
        conv, E = ctx.conv, source.shape[0]
        pairs = rotate_pairs(matrix, x, source, target)  # (source, target) halves, [E, edge_dim, C] each
        radial = torch.nn.functional.linear(hidden, radial_weight, radial_bias)
        orders = list(zip(*(half.split(conv._order_sizes, dim=1) for half in pairs)))
        grad_orders = grad_y.split(conv._order_sizes, dim=1)
        radials = radial.split(conv._radial_sizes, dim=1)
        # gradients of the two rotated halves and of the radial weights, written block by block
        grad_pairs = [pairs[0].new_empty(pairs[0].shape) for _ in pairs]
        grad_radial = radial.new_empty(radial.shape)
        grad_pair_blocks = [g.split(conv._order_sizes, dim=1) for g in grad_pairs]
        grad_radial_blocks = grad_radial.split(conv._radial_sizes, dim=1)
        grad_weights = []
        for m, (xm, gm, rm) in enumerate(zip(orders, grad_orders, radials)):
            signs, C = (1 if m == 0 else 2), xm[0].shape[-1]
            K = rm.shape[1] // (2 * C)
            gm = gm.reshape(E, -1)
            if m == 0 and conv.extra_m0_output_channels:
                gm = torch.cat([grad_extra, gm], dim=1)  # fc_m0's output order: extra first
            weight = w0 if m == 0 else _complex_matrix(fc_weights[m - 1])
            grad_weight = gm.T @ _modulate(xm, rm, signs)
            grad_weights.append(grad_weight if m == 0 else _complex_matrix_grad(grad_weight))
            if m == 0:
                grad_bias = gm.sum(0)
            grad_modulated = (gm @ weight).view(E, signs, K, 2, C)
            r, grad_r = rm.view(E, 1, K, 2, C), grad_radial_blocks[m].view(E, K, 2, C)
            for half, (x_half, grad_half) in enumerate(zip(xm, grad_pair_blocks)):
                x_half, g = x_half.view(E, signs, K, C), grad_modulated[:, :, :, half]
                torch.mul(g, r[:, :, :, half], out=grad_half[m].view(E, signs, K, C))
                torch.mul(g[:, 0], x_half[:, 0], out=grad_r[:, :, half])  # summed over the signs of m
                if signs == 2:
                    grad_r[:, :, half].addcmul_(g[:, 1], x_half[:, 1])
        # release the recomputed edge tensors (and then the radial gradient) before the next
        # large temporaries: this backward runs while most of the step's activations are stored
        del pairs, radial, orders, radials, xm, rm, r, grad_modulated, g, x_half
        grad_hidden, grad_radial_weight, grad_radial_bias = grad_radial @ radial_weight, grad_radial.T @ hidden, grad_radial.sum(0)
        del grad_radial, grad_radial_blocks, grad_r
        grad_x = rotate_pairs_adjoint(matrix, grad_pairs, source, target, x.shape[0])
        return (grad_x, None, None, None, grad_hidden, grad_radial_weight, grad_radial_bias,
                None, grad_weights[0], grad_bias, *grad_weights[1:])


def edge_message_convolution(conv: SO2Convolution, x: torch.Tensor, edge_index: torch.Tensor, rotation,
                             edge_features: torch.Tensor, atom_edge=None, atomic_numbers=None,
                             recompute_radial: bool = True):
    r""":math:`\mathrm{conv}(D_e\,[x_{s(e)} \,\|\, x_{t(e)}];\ h_e)` for every edge, from node features.

    The same numbers as ``conv(rotation.to_edge(torch.cat([x[s], x[t]], dim=-1)), edge_features)``
    with ``s, t = edge_index``;
    in training with direct forces (edge frames without gradient), outside autocast and
    ``torch.compile``, backward recomputes the edge features instead of storing them
    (:class:`_EdgeMessageConvolution`).

    ``recompute_radial``: on the fused path, recompute the radial MLP's hidden layers in
    backward too. With an :class:`~so2nn.layers.AtomEdgeEmbedding` ``atom_edge``, the radial MLP's input is
    ``atom_edge(edge_features, atomic_numbers, edge_index)`` (applied through
    :meth:`~so2nn.layers.AtomEdgeEmbedding.linear`).

    Shapes: ``x: [N, (lmax+1)**2, C]`` with ``2C = conv.in_channels`` -> as :class:`SO2Convolution`.
    """
    first = conv.radial.net[0]
    width = first.in_features - (2 * atom_edge.source_embedding.embedding_dim if atom_edge is not None else 0)
    if edge_features.dim() != 2 or edge_features.shape != (edge_index.shape[1], width):
        raise ValueError(f"edge_features must have shape [E={edge_index.shape[1]}, {width}], got {tuple(edge_features.shape)}")
    matrix, last = rotation.matrix, conv.radial.net[-1]
    fused = torch.is_grad_enabled() and not matrix.requires_grad
    # compiled graphs and autocast (whose casts backward would have to replay) take the plain path
    if fused and not torch.compiler.is_compiling() and not torch.is_autocast_enabled(x.device.type):
        # the radial MLP's last layer ([E, radial_size], the largest radial tensor) is recomputed
        # inside the Function; with recompute_radial its hidden layers too (a few [E, hidden] tensors)
        hidden = maybe_recompute(recompute_radial, _radial_hidden, conv, edge_features, atom_edge, atomic_numbers, edge_index)
        y, extra = _EdgeMessageConvolution.apply(
            x, edge_index[0], edge_index[1], matrix, hidden, last.weight, last.bias, conv, conv.fc_m0.weight,
            conv.fc_m0.bias, *(fc.weight for fc in conv.fc_m),
        )
        return (y, extra) if conv.extra_m0_output_channels else y
    hidden = _radial_hidden(conv, edge_features, atom_edge, atomic_numbers, edge_index)
    return conv._forward(rotate_pairs(matrix, x, edge_index[0], edge_index[1]), last(hidden))


def _radial_hidden(conv, edge_features, atom_edge, atomic_numbers, edge_index):
    """The radial MLP of ``conv`` up to (not including) its last layer."""
    first, *hidden_layers, _ = conv.radial.net
    if atom_edge is not None:
        hidden = atom_edge.linear(first, edge_features, atomic_numbers, edge_index)
    else:
        hidden = first(edge_features)
    for layer in hidden_layers:
        hidden = layer(hidden)
    return hidden
