"""Per-forward geometric context for layer tests: edge vectors -> radial features and rotation."""

import torch

from so2nn.layers import RadialBasis
from so2nn.so3 import EdgeRotation

NUM_BASIS = 8


def edge_context(layout, graph, pos=None, cell=None):
    """(edge_features [E, NUM_BASIS], EdgeRotation) for a (possibly rotated) AtomicGraph."""
    vec = graph.edge_vec(pos, cell)
    basis = RadialBasis(NUM_BASIS, graph.cutoff).to(vec.dtype)
    return basis(vec.norm(dim=1)), EdgeRotation(layout, vec)


def permute_graph(edge_index, perm):
    """Edge index after relabelling nodes: new node k is old node perm[k]."""
    inverse = torch.argsort(perm)
    return inverse[edge_index]
