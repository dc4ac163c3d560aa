"""Neighbour lists with periodic boundaries and graph reductions, in plain torch."""

from ._radius import edge_vectors, radius_graph, segment_softmax

__all__ = ["edge_vectors", "radius_graph", "segment_softmax"]
