r"""Gather, rotate, radially modulate and SO(2)-convolve, in one step, from node features.

Reference (the composition of public layers that
:class:`~so2nn.layers.EquivariantGraphAttention` runs with ``kernels="reference"``):

.. math::

    (y_e, f_e) = \mathrm{SO2Convolution}\bigl(D_e\,[x_{s(e)} \,\|\, x_{t(e)}];\ h_e\bigr)
    = W\bigl(\rho(h_e) \odot D_e\,[x_{s(e)} \,\|\, x_{t(e)}]\bigr)

with :math:`D_e` the truncated Wigner blocks of the edge frame
(:attr:`~so2nn.so3.EdgeRotation.matrix`), :math:`\rho = L \circ \rho_{hidden}` the radial MLP
(its last linear layer :math:`L` given apart), :math:`W` the SO(2) linear map (weights of
:class:`~so2nn.layers.SO2Linear`), :math:`y` the edge-frame output and :math:`f` the extra
:math:`m = 0` outputs.

What the kernel saves:

- the concatenated pair :math:`[x_s \| x_t]` (``[E, (lmax+1)**2, 2C]``, the largest per-edge
  tensor) is never formed: the two rotated halves are multiplied by the radial weights
  straight into the matmul inputs;
- with autograd (a custom Function), backward stores only the node features, the edge frames
  and the radial MLP's hidden features, and recomputes the rotated and modulated edge features
  (a gather and a batched matmul, a few per cent of the step's FLOPs): on the 31M model about
  half of a training step's stored activations.

Not differentiable twice, and with no gradient for the edge frames: :func:`~so2nn.kernels.use_fused`
takes the reference path when a second derivative is needed.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..so3 import CoefficientLayout
from ._policy import KernelInfo

__all__ = ["EDGE_CONVOLUTION", "SO2Weights", "atom_edge_linear", "edge_convolution", "so2_linear"]

EDGE_CONVOLUTION = KernelInfo("edge_convolution", double_backward=False, autocast=False, devices=("cpu",))


class SO2Weights(NamedTuple):
    r"""The parameters of an SO(2) linear map as a kernel takes them: what
    :meth:`SO2Linear.weights() <so2nn.layers.SO2Linear.weights>` (and
    :meth:`SO2Convolution.weights() <so2nn.layers.SO2Convolution.weights>`) hand out.

    Attributes:
        layout: the (lmax, mmax) layout of the edge-frame features.
        m0_weight, m0_bias: the real map of :math:`m = 0`, ``[(lmax+1) out + extra, (lmax+1) in]``
            (the extra outputs first) and its bias.
        fc_m: for each order :math:`m = 1..m_{max}`, the parameter ``[W_r; W_i]`` (``[2K out, K in]``).
        complex: for each order :math:`m = 1..m_{max}`, the complex product as one real matrix
            :math:`\begin{pmatrix} W_r & -W_i \\ W_i & W_r \end{pmatrix}` (``[2K out, 2K in]``), built by the layer.
        extra_channels: the extra invariant outputs of the :math:`m = 0` map.
        radial: the last linear layer ``(weight, bias)`` of an :class:`~so2nn.layers.SO2Convolution`'s
            radial MLP (``[radial_size, hidden]``), or ``None`` for an :class:`~so2nn.layers.SO2Linear`.
    """

    layout: CoefficientLayout
    m0_weight: torch.Tensor
    m0_bias: torch.Tensor | None
    fc_m: tuple[torch.Tensor, ...]
    complex: tuple[torch.Tensor, ...]
    extra_channels: int
    radial: tuple[torch.Tensor, torch.Tensor] | None = None


def _sizes(layout: CoefficientLayout, channels: int) -> tuple[list[int], list[int]]:
    """Sizes of the m-major blocks of x ([x_0], [x_+m, x_-m]) and of the radial weights of each order."""
    orders = [layout.order_size(m) * (1 if m == 0 else 2) for m in range(layout.mmax + 1)]
    return orders, [layout.order_size(m) * channels for m in range(layout.mmax + 1)]


def _modulate(parts: tuple[torch.Tensor, ...], radial: torch.Tensor, signs: int) -> torch.Tensor:
    r"""The modulated input of one order, :math:`\rho \odot [x^{(1)} \| \dots \| x^{(P)}]`, flattened
    coefficient-major: ``[E, signs * K * P * C]``.

    ``parts``: the order's coefficients ``[E, signs * K, C]`` of each of ``P`` channel parts;
    ``radial``: ``[E, K * P * C]``, shared by ``+m`` and ``-m``. Without autograd the parts are
    multiplied straight into their channel slots of the output."""
    E, P, C = radial.shape[0], len(parts), parts[0].shape[-1]
    K = radial.shape[1] // (P * C)
    radial = radial.view(E, 1, K, P, C)
    if P == 1:
        return (parts[0].reshape(E, signs, K, 1, C) * radial).view(E, signs * K * C)
    if torch.is_grad_enabled():
        return (torch.stack([part.view(E, signs, K, C) for part in parts], dim=3) * radial).view(E, signs * K * P * C)
    out = radial.new_empty((E, signs, K, P, C), dtype=torch.result_type(parts[0], radial))
    for i, part in enumerate(parts):
        torch.mul(part.view(E, signs, K, C), radial[:, :, :, i], out=out[:, :, :, i])
    return out.view(E, signs * K * P * C)


def so2_linear(parts: tuple[torch.Tensor, ...], radial: torch.Tensor,
               weights: SO2Weights) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The SO(2) linear map of modulated inputs, :math:`W(\rho \odot x)`, with ``x`` given as
    channel parts (never concatenated): ``(y [E, edge_dim, out], extra [E, extra_channels])``.

    Args:
        parts: ``P`` tensors ``[E, edge_dim, C]``, consecutive channel blocks of ``x``.
        radial: ``[E, radial_size]`` per-edge weights (order by order, one per coefficient of
            ``m = 0`` and per ``|m| > 0`` pair, times ``P * C`` channels).
        weights: the map's :class:`SO2Weights` (its ``radial`` is not used here).
    """
    layout, extra_channels = weights.layout, weights.extra_channels
    E, channels = parts[0].shape[0], parts[0].shape[-1] * len(parts)
    order_sizes, radial_sizes = _sizes(layout, channels)
    orders = zip(*(part.split(order_sizes, dim=1) for part in parts))
    radials = radial.split(radial_sizes, dim=1)
    out = []
    for m, xm in enumerate(orders):
        xm = _modulate(xm, radials[m], 1 if m == 0 else 2)
        if m == 0:  # one real map over every degree
            y = torch.nn.functional.linear(xm, weights.m0_weight, weights.m0_bias)
            extra, y = y.split([extra_channels, y.shape[1] - extra_channels], dim=1)
        else:  # complex multiplication of (x_+m, x_-m), as one real matmul
            y = xm @ weights.complex[m - 1].T
        out.append(y)
    out_channels = out[0].shape[1] // (layout.lmax + 1)
    return torch.cat(out, dim=1).view(E, layout.edge_dim, out_channels), extra


def rotate_pairs(matrix: torch.Tensor, x: torch.Tensor, source: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two channel halves of :math:`D_e\,[x_{s(e)} \,\|\, x_{t(e)}]`, apart: ``[E, edge_dim, C]`` each."""
    return torch.bmm(matrix, x.index_select(0, source)), torch.bmm(matrix, x.index_select(0, target))


def _rotate_pairs_adjoint(matrix, grads, source, target, num_nodes):
    r""":math:`\partial x_i = \sum_{s(e) = i} D_e^\top \partial m_e^{s} + \sum_{t(e) = i} D_e^\top \partial m_e^{t}`."""
    back = matrix.transpose(1, 2)
    out = grads[0].new_zeros((num_nodes, matrix.shape[2], grads[0].shape[-1]))
    for grad, index in zip(grads, (source, target)):
        out.index_add_(0, index, torch.bmm(back, grad))
    return out


def _edge_convolution(x, source, target, matrix, hidden, weights: SO2Weights):
    pairs = rotate_pairs(matrix, x, source, target)
    radial = torch.nn.functional.linear(hidden, *weights.radial)
    return so2_linear(pairs, radial, weights)


class _EdgeConvolution(torch.autograd.Function):
    """:func:`edge_convolution` with autograd, storing only node features, radial hidden features
    and the parameters.

    The parameters arrive as tensors (``radial_weight, radial_bias, m0_weight, m0_bias, *fc_m``) so
    that autograd routes their gradients; the forward uses the complex matrices the layer built
    (``weights``), and backward builds them again from ``fc_m`` with the layer's own
    :func:`~so2nn.layers.complex_matrix` rather than keeping them (a few MB per block)."""

    @staticmethod
    def forward(ctx, x, source, target, matrix, hidden, weights, radial_weight, radial_bias, w0, b0, *fc_m):
        ctx.layout, ctx.extra = weights.layout, weights.extra_channels
        ctx.save_for_backward(x, source, target, matrix, hidden, radial_weight, radial_bias, w0, *fc_m)
        return _edge_convolution(x, source, target, matrix, hidden, weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, grad_extra):
        from ..layers import complex_matrix  # the math of the layer this kernel fuses (imported when needed)

        x, source, target, matrix, hidden, radial_weight, radial_bias, w0, *fc_m = ctx.saved_tensors
        with torch.enable_grad():  # the complex matrices again, differentiably: their adjoint maps the gradients
            fc_leaves = [w.detach().requires_grad_() for w in fc_m]
            complex_m = [complex_matrix(w) for w in fc_leaves]
        layout, E = ctx.layout, source.shape[0]
        pairs = rotate_pairs(matrix, x, source, target)  # (source, target) halves, [E, edge_dim, C] each
        radial = torch.nn.functional.linear(hidden, radial_weight, radial_bias)
        order_sizes, radial_sizes = _sizes(layout, 2 * x.shape[-1])
        orders = list(zip(*(half.split(order_sizes, dim=1) for half in pairs)))
        grad_orders = grad_y.split(order_sizes, dim=1)
        radials = radial.split(radial_sizes, dim=1)
        # gradients of the two rotated halves and of the radial weights, written block by block
        grad_pairs = [pairs[0].new_empty(pairs[0].shape) for _ in pairs]
        grad_radial = radial.new_empty(radial.shape)
        grad_pair_blocks = [g.split(order_sizes, dim=1) for g in grad_pairs]
        grad_radial_blocks = grad_radial.split(radial_sizes, dim=1)
        grad_weights = []
        for m, (xm, gm, rm) in enumerate(zip(orders, grad_orders, radials)):
            signs, C = (1 if m == 0 else 2), xm[0].shape[-1]
            K = rm.shape[1] // (2 * C)
            gm = gm.reshape(E, gm.shape[1] * gm.shape[2])
            if m == 0 and ctx.extra:
                gm = torch.cat([grad_extra, gm], dim=1)  # the m = 0 map's output order: extra first
            weight = w0 if m == 0 else complex_m[m - 1].detach()
            grad_weights.append(gm.T @ _modulate(xm, rm, signs))
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
        grad_hidden = grad_radial @ radial_weight
        grad_radial_weight, grad_radial_bias = grad_radial.T @ hidden, grad_radial.sum(0)
        del grad_radial, grad_radial_blocks, grad_r
        grad_x = _rotate_pairs_adjoint(matrix, grad_pairs, source, target, x.shape[0])
        grad_fc = torch.autograd.grad(complex_m, fc_leaves, grad_weights[1:]) if fc_m else ()
        return (grad_x, None, None, None, grad_hidden, None, grad_radial_weight, grad_radial_bias,
                grad_weights[0], grad_bias, *grad_fc)


def edge_convolution(x: torch.Tensor, edge_index: torch.Tensor, matrix: torch.Tensor, hidden: torch.Tensor,
                     weights: SO2Weights) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`W\bigl(L(h_e) \odot D_e\,[x_{s(e)} \,\|\, x_{t(e)}]\bigr)` for every edge (module docstring).

    Args:
        x: ``[N, (lmax+1)**2, C]`` node features.
        edge_index: ``[2, E]``, row 0 the source :math:`s(e)`, row 1 the target :math:`t(e)`.
        matrix: ``[E, edge_dim, (lmax+1)**2]`` (:attr:`~so2nn.so3.EdgeRotation.matrix`), no gradient.
        hidden: ``[E, H]``, the radial MLP's features before its last linear layer.
        weights: the :class:`SO2Weights` of the :class:`~so2nn.layers.SO2Convolution` (with its
            ``radial``, the last layer :math:`L` of the radial MLP).

    Returns: ``(y [E, edge_dim, out], extra [E, extra_channels])``, the numbers of the reference.
    """
    if matrix.requires_grad:
        raise ValueError("edge_convolution gives no gradient for the edge frames: use the reference path")
    if weights.radial is None:
        raise ValueError("edge_convolution needs the weights of an SO2Convolution (with its radial MLP's last layer)")
    if not torch.is_grad_enabled():
        return _edge_convolution(x, edge_index[0], edge_index[1], matrix, hidden, weights)
    return _EdgeConvolution.apply(x, edge_index[0], edge_index[1], matrix, hidden, weights, *weights.radial,
                                  weights.m0_weight, weights.m0_bias, *weights.fc_m)


def atom_edge_linear(edge_features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     source_table: torch.Tensor, target_table: torch.Tensor, atomic_numbers: torch.Tensor,
                     edge_index: torch.Tensor) -> torch.Tensor:
    r"""A linear layer applied to the atom-type edge features of :class:`~so2nn.layers.AtomEdgeEmbedding`,
    without forming their concatenation.

    Reference: ``linear(cat([h_e, S[z_s(e)], T[z_t(e)]]), weight, bias)``, i.e.

    .. math:: W [h_e \,\|\, S_{z_s} \,\|\, T_{z_t}] + b = W_h h_e + b + (S W_s^\top)_{z_s} + (T W_t^\top)_{z_t}

    The columns of ``weight`` that act on the embeddings are applied to the tables (one row per
    element) and the products gathered per edge; backward then keeps only ``edge_features``
    (shared by every layer of a model) instead of an ``[E, F + 2C]`` copy per layer.
    """
    channels = source_table.shape[1]
    w_edge, w_source, w_target = weight.split([weight.shape[1] - 2 * channels, channels, channels], dim=1)
    source = torch.nn.functional.linear(source_table, w_source)  # [elements, out]
    target = torch.nn.functional.linear(target_table, w_target)
    return (
        torch.nn.functional.linear(edge_features, w_edge, bias)
        + source.index_select(0, atomic_numbers.index_select(0, edge_index[0]))
        + target.index_select(0, atomic_numbers.index_select(0, edge_index[1]))
    )
