r"""Gathering node features onto edges, :math:`m_e = D_e [x_{s(e)} \,\|\, x_{t(e)}]`, and summing
edge messages onto nodes, :math:`y_i = \sum_{e: t(e) = i} m_e`: the two graph operations of
message passing, with lean backward passes."""

from __future__ import annotations

import torch

__all__ = ["rotate_pairs", "scatter_sum"]


def rotate_pairs(matrix: torch.Tensor, x: torch.Tensor, source: torch.Tensor,
                 target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Source and target features of every edge, rotated into its frame: the two channel halves of
    :math:`D_e\,[x_{s(e)} \,\|\, x_{t(e)}] = [D_e x_{s(e)} \,\|\, D_e x_{t(e)}]`.

    The halves are returned apart, and :class:`~so2nn.layers.SO2Convolution` multiplies them
    by the radial weights straight into its matmul inputs: the concatenated
    ``[E, (lmax+1)**2, 2C]`` pair tensor, the largest per-edge tensor of a layer, is never
    formed (above glibc's mmap threshold it is also page-faulted afresh on every call).
    Differentiable (twice) in ``x`` and ``matrix``.

    Args:
        matrix: ``[E, edge_dim, (lmax+1)**2]``, the :attr:`~so2nn.so3.EdgeRotation.matrix` of the edges.
        x: ``[N, (lmax+1)**2, C]`` node features.
        source, target: ``[E]``, rows 0 and 1 of ``edge_index``.

    Returns: two ``[E, edge_dim, C]`` tensors.

    Example:
        >>> matrix = torch.eye(3).expand(2, 3, 3)     # identity frames
        >>> x = torch.arange(6.0).reshape(3, 1, 2).expand(3, 3, 2)
        >>> source, target = rotate_pairs(matrix, x, torch.tensor([0, 2]), torch.tensor([1, 1]))
        >>> source[:, 0], target[:, 0]
        (tensor([[0., 1.],
                [4., 5.]]), tensor([[2., 3.],
                [2., 3.]]))
    """
    return torch.bmm(matrix, x.index_select(0, source)), torch.bmm(matrix, x.index_select(0, target))


def rotate_pairs_adjoint(matrix: torch.Tensor, grads: list[torch.Tensor], source: torch.Tensor,
                         target: torch.Tensor, num_nodes: int) -> torch.Tensor:
    r"""The gradient of :func:`rotate_pairs` with respect to ``x``, from those of its two outputs.

    .. math:: \partial x_i = \sum_{e: s(e) = i} D_e^\top \partial m_e^{src} + \sum_{e: t(e) = i} D_e^\top \partial m_e^{tgt}
    """
    back = matrix.transpose(1, 2)
    out = grads[0].new_zeros((num_nodes, matrix.shape[2], grads[0].shape[-1]))
    for grad, index in zip(grads, (source, target)):
        out.index_add_(0, index, torch.bmm(back, grad))
    return out


class _ScatterSum(torch.autograd.Function):
    """``zeros(num_nodes, ...).index_add_(0, index, x)`` whose backward keeps only the index
    (autograd's ``index_add`` also stores the summed tensor, to recover its shape)."""

    @staticmethod
    def forward(ctx, x, index, num_nodes):
        ctx.save_for_backward(index)
        return x.new_zeros((num_nodes,) + x.shape[1:]).index_add_(0, index, x)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


def scatter_sum(x: torch.Tensor, index: torch.Tensor, num_nodes: int) -> torch.Tensor:
    r"""Sum of the rows of ``x`` that share an index: :math:`y_i = \sum_{e: \mathrm{index}(e) = i} x_e`.

    Args:
        x: ``[E, ...]`` edge messages.
        index: ``[E]`` node of each row (for messages, the target ``edge_index[1]``).
        num_nodes: number of output rows.

    Returns: ``[num_nodes, ...]``.

    Example:
        >>> scatter_sum(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 2, 0]), 3)
        tensor([4., 0., 2.])
    """
    return _ScatterSum.apply(x, index, num_nodes)
