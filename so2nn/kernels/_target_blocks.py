r"""Inference one block of target nodes at a time, so that per-edge temporaries stay small.

A message-passing layer's output at node :math:`i`,

.. math:: y_i = \phi\Bigl(\sum_{e:\, t(e) = i} \psi(x_{s(e)}, x_i, h_e)\Bigr)

(with the attention's softmax over the same edges :math:`t(e) = i`), depends on the edges that
end at :math:`i` only. On edges sorted by target (so2nn's graphs are: by system, then target),
the layer can run on the edges of a block of consecutive targets at a time and write the rows
of those targets: the same numbers (up to the order of the float sums, which is unchanged:
each node's edges are summed in edge order either way), with every per-edge temporary the size
of one block instead of the whole batch.

Why it matters on the CPU: the per-edge tensors of a layer (the rotated pairs, the radial
weights, the messages, the values: each ``[E, edge_dim, C]``) of a batch of systems are
hundreds of MB. glibc's ``malloc`` serves every allocation above its mmap threshold (at most
32 MiB) with a fresh ``mmap`` and returns it at ``free``, so that each such tensor is
page-faulted afresh, a 4 KiB page at a time, every time: for the 31M model on 8 slabs of 57
atoms at once, 3.7 million page faults and 8 s of system time per forward (1.8 s per
structure against 1.2 s for one slab alone). In blocks of :data:`TARGET_BLOCK_EDGES` edges
the temporaries stay below that threshold and are reused from the heap.

Used only where it cannot change what autograd sees: without autograd and outside training
(dropout on the attention weights, drop-path), on the CPU (CUDA's caching allocator reuses its
blocks), and with ``kernels="auto"`` (:func:`use_target_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ..so3 import EdgeRotation
from ._policy import policy_device

__all__ = ["BLOCK_ELEMENTS", "TARGET_BLOCK_EDGES", "Edges", "in_target_blocks", "row_block_size", "target_blocks",
           "use_target_blocks"]


class Edges(NamedTuple):
    """The edges a message-passing layer runs on and the targets whose rows it computes: a whole
    graph's, or one block's (:func:`in_target_blocks`).

    Attributes:
        features: ``[E, F]`` invariant edge features.
        index: ``[2, E]``, row 0 the source, row 1 the target (global node indices).
        target: ``[E]``, the target of each edge counted from the first target computed
            (``index[1]`` for a whole graph).
        rotation: the :class:`~so2nn.so3.EdgeRotation` of the edges.
        num_targets: how many target rows are computed.

    Example:
        >>> from so2nn.so3 import CoefficientLayout
        >>> index = torch.tensor([[1, 2, 0], [0, 0, 1]])
        >>> rotation = EdgeRotation(CoefficientLayout(2), torch.randn(3, 3))
        >>> edges = Edges.of_graph(torch.randn(3, 4), index, rotation, num_nodes=3)
        >>> edges.target.tolist(), edges.num_targets
        ([0, 0, 1], 3)
    """

    features: torch.Tensor
    index: torch.Tensor
    target: torch.Tensor
    rotation: EdgeRotation
    num_targets: int

    @classmethod
    def of_graph(cls, features: torch.Tensor, index: torch.Tensor, rotation: EdgeRotation, num_nodes: int) -> Edges:
        """Every edge of a graph of ``num_nodes`` nodes, each of which is a target row."""
        return cls(features, index, index[1], rotation, num_nodes)

    def block(self, first: int, end: int, e0: int, e1: int) -> Edges:
        """Edges ``e0 .. e1 - 1``, which are those of the targets ``first .. end - 1`` (views, no copy)."""
        return Edges(self.features[e0:e1], self.index[:, e0:e1], self.target[e0:e1] - first,
                     self.rotation.edges(e0, e1), end - first)

#: Edges per block (a block ends at a target boundary, so it may hold up to one node's edges
#: more): at this size a 31M layer's largest per-edge temporary is about 10 MiB.
TARGET_BLOCK_EDGES = 512


#: Elements of the largest temporary of a node-wise block of rows (:func:`row_block_size`): 8 MiB in float32.
BLOCK_ELEMENTS = 1 << 21


def _inference_on_cpu(kernels: str, x: torch.Tensor, training: bool) -> bool:
    return (kernels == "auto" and not training and not torch.is_grad_enabled() and policy_device(x) == "cpu"
            and not torch.compiler.is_compiling())


def use_target_blocks(kernels: str, x: torch.Tensor, num_edges: int, training: bool) -> bool:
    """Whether a layer runs target block by target block (module docstring).

    At inference on the CPU, with ``kernels="auto"``, outside ``torch.compile``, and with more
    than one block of :data:`TARGET_BLOCK_EDGES` edges."""
    return _inference_on_cpu(kernels, x, training) and num_edges > TARGET_BLOCK_EDGES


def row_block_size(kernels: str, x: torch.Tensor, training: bool, elements_per_row: int) -> int | None:
    """Rows per block of a row-wise computation at inference, or None for all rows at once.

    For a computation on ``x`` whose rows are independent (the grid MLP of a node) and whose
    largest temporary has ``elements_per_row`` elements per row, under the same conditions as
    :func:`use_target_blocks`.

    Example:
        >>> with torch.no_grad():
        ...     row_block_size("auto", torch.zeros(1000, 25, 128), False, elements_per_row=324 * 128)
        50
    """
    rows = max(1, BLOCK_ELEMENTS // elements_per_row)
    return rows if _inference_on_cpu(kernels, x, training) and x.shape[0] > rows else None


def target_blocks(target: torch.Tensor, num_nodes: int,
                  block_edges: int | None = None) -> list[tuple[int, int, int, int]] | None:
    r"""Consecutive blocks of targets and their edges, or None for unsorted targets.

    Blocks ``(first_node, end_node, first_edge, end_edge)`` cover nodes ``0 .. num_nodes - 1``
    and edges ``0 .. E - 1``, such that the edges of block :math:`b` are
    exactly those whose target lies in ``[first_node, end_node)``; ``None`` when ``target`` is
    not sorted (then no such blocks exist).

    Node :math:`n` joins block :math:`\lfloor p_n / B \rfloor` (:math:`p_n` the first edge of
    :math:`n`, :math:`B` = ``block_edges``, default :data:`TARGET_BLOCK_EDGES`): a block holds
    at most :math:`B` edges plus those of its last node.

    Example:
        >>> target_blocks(torch.tensor([0, 0, 0, 1, 2, 2, 4]), num_nodes=5, block_edges=3)
        [(0, 1, 0, 3), (1, 3, 3, 6), (3, 5, 6, 7)]
        >>> target_blocks(torch.tensor([1, 0]), num_nodes=2) is None
        True
    """
    block_edges = TARGET_BLOCK_EDGES if block_edges is None else block_edges
    if target.numel() > 1 and bool((target[1:] < target[:-1]).any()):
        return None
    nodes = torch.arange(num_nodes + 1, device=target.device, dtype=target.dtype)
    first_edge = torch.searchsorted(target, nodes)  # [num_nodes + 1]: node n's edges are first_edge[n:n+2]
    keys = first_edge[:-1] // block_edges
    starts = torch.ones(num_nodes, dtype=torch.bool, device=target.device)
    starts[1:] = keys[1:] != keys[:-1]
    bounds = torch.cat([starts.nonzero().flatten(), nodes.new_tensor([num_nodes])]).tolist()
    edges = first_edge[bounds].tolist()
    return [(bounds[b], bounds[b + 1], edges[b], edges[b + 1]) for b in range(len(bounds) - 1)]


def in_target_blocks(compute: Callable[[Edges], torch.Tensor], edges: Edges, *, kernels: str,
                     training: bool) -> torch.Tensor:
    r"""``compute(edges)``, the rows of the ``edges.num_targets`` targets computed from their edges;
    where :func:`use_target_blocks` allows and the targets are sorted (:func:`target_blocks`), block by
    block of targets, each from that block's edges alone (:meth:`Edges.block`), written into one output.

    The one way every message-passing layer runs in blocks: the layer's ``compute`` sees an
    :class:`Edges` either way and cannot tell, and the numbers are the same.

    Example:
        >>> from so2nn.so3 import CoefficientLayout
        >>> index = torch.tensor([[1, 2, 0], [0, 0, 1]])
        >>> rotation = EdgeRotation(CoefficientLayout(2), torch.randn(3, 3))
        >>> edges = Edges.of_graph(torch.randn(3, 4), index, rotation, num_nodes=3)
        >>> count = lambda e: torch.zeros(e.num_targets).index_add(0, e.target, torch.ones(len(e.target)))
        >>> in_target_blocks(count, edges, kernels="auto", training=False)
        tensor([2., 1., 0.])
    """
    if use_target_blocks(kernels, edges.features, edges.index.shape[1], training):
        blocks = target_blocks(edges.target, edges.num_targets)
        if blocks is not None:  # inference: the edges of a block of targets at a time
            out = None
            for first, end, e0, e1 in blocks:
                rows = compute(edges.block(first, end, e0, e1))
                if out is None:
                    out = rows.new_empty((edges.num_targets,) + tuple(rows.shape[1:]))
                out[first:end] = rows
            return out
    return compute(edges)
