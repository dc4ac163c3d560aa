"""EdgeDegreeEmbedding: initial equivariant node features from the geometry of the edges."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..kernels import Edges, check_kernels, in_target_blocks
from ..so3 import CoefficientLayout, EdgeRotation, prepare_couplings
from ._common import as_layout, check_channels, check_edge_features, check_edges, check_rotation, scatter_sum
from ._radial import AtomEdgeEmbedding, RadialMLP, check_atomic_numbers

__all__ = ["EdgeDegreeEmbedding"]


class EdgeDegreeEmbedding(nn.Module):
    r"""Sum over neighbours of radial features placed on the :math:`m = 0` coefficients of
    each edge frame and rotated back (EquiformerV2's edge-degree embedding).

    .. math::

        x_i = \frac{1}{a} \sum_{j \in \mathcal N(i)} D(R_{ij})^\top
        \bigl[\rho(h_{ij})\ \text{on}\ m = 0,\ 0\ \text{elsewhere}\bigr]

    In the edge frame an :math:`m = 0` coefficient is invariant to the roll about the edge,
    so the result is equivariant; :math:`D^\top` carries EquiformerV2's truncation rescale.

    Args:
        layout: the (lmax, mmax) layout.
        channels: sphere channels :math:`C` of the output.
        edge_channels_list: ``[edge_in, hidden, ...]`` of the radial MLP (``edge_in`` before
            the atom-type embeddings are appended).
        max_num_elements: size of the atom-type tables for the source/target embeddings, or
            ``None`` to use the radial features alone.
        rescale_factor: :math:`a` (EquiformerV2: the average degree, 23.395...).
        kernels: ``"auto"`` or ``"reference"``, for the sum over neighbours (:mod:`so2nn.kernels`);
            ``"auto"`` at inference on the CPU also runs a block of targets at a time
            (:func:`~so2nn.kernels.use_target_blocks`), same numbers.

    Shapes:
        ``edge_features: [E, edge_in]``, ``atomic_numbers: [N]``, ``edge_index: [2, E]``
        -> ``[num_nodes, (lmax+1)**2, C]``.

    Example:
        >>> layout = CoefficientLayout(lmax=2, mmax=1)
        >>> embedding = EdgeDegreeEmbedding(layout, channels=8, edge_channels_list=[4, 16], max_num_elements=10,
        ...                                 rescale_factor=2.0)
        >>> edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])
        >>> rotation = EdgeRotation(layout, torch.randn(3, 3))
        >>> embedding(torch.randn(3, 4), torch.tensor([1, 6, 8]), edge_index, rotation, num_nodes=3).shape
        torch.Size([3, 9, 8])
    """

    def __init__(
        self,
        layout: CoefficientLayout | int,
        channels: int,
        edge_channels_list: list[int],
        max_num_elements: int | None,
        rescale_factor: float,
        *,
        kernels: str = "auto",
    ) -> None:
        super().__init__()
        self.layout = as_layout(layout)
        prepare_couplings(self.layout.lmax)  # Wigner-D couplings of its EdgeRotation, built now
        check_channels(channels=channels)
        number = isinstance(rescale_factor, (int, float)) and not isinstance(rescale_factor, bool)
        if not (number and rescale_factor > 0):
            raise ValueError(f"rescale_factor must be a number > 0, got {rescale_factor!r}")
        self.channels, self.rescale_factor = channels, float(rescale_factor)
        self.kernels = check_kernels(kernels)
        edge_channels_list = list(edge_channels_list)
        if not edge_channels_list:
            raise ValueError("edge_channels_list must be [edge_in, hidden, ...], got []")
        self.edge_channels = edge_channels_list[0]
        self.atom_edge = None
        if max_num_elements is not None:
            self.atom_edge = AtomEdgeEmbedding(max_num_elements, edge_channels_list[-1])
            edge_channels_list[0] += 2 * edge_channels_list[-1]
        self.radial = RadialMLP(edge_channels_list + [(self.layout.lmax + 1) * channels])

    def extra_repr(self) -> str:
        return (f"lmax={self.layout.lmax}, mmax={self.layout.mmax}, channels={self.channels}, "
                f"rescale_factor={self.rescale_factor}")

    def forward(
        self,
        edge_features: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        rotation: EdgeRotation,
        num_nodes: int,
    ) -> torch.Tensor:
        num_edges = check_edges(edge_index)
        check_edge_features(edge_features, num_edges, self.edge_channels)
        check_rotation(rotation, self.layout, num_edges)
        if self.atom_edge is not None:
            check_atomic_numbers(atomic_numbers, num_nodes)
        return in_target_blocks(partial(self._embed, atomic_numbers),
                                Edges.of_graph(edge_features, edge_index, rotation, num_nodes),
                                kernels=self.kernels, training=self.training)

    def _embed(self, atomic_numbers: torch.Tensor, edges: Edges) -> torch.Tensor:
        """The embedding of the ``edges.num_targets`` targets from the edges that end there."""
        edge_features = edges.features
        if self.atom_edge is not None:
            edge_features = self.atom_edge(edge_features, atomic_numbers, edges.index)
        m0 = self.radial(edge_features).view(edge_features.shape[0], self.layout.lmax + 1, self.channels)
        messages = edges.rotation.from_edge(m0, rescale=True)  # the m = 0 coefficients alone, the rest zero
        return scatter_sum(messages, edges.target, edges.num_targets, self.kernels) / self.rescale_factor
