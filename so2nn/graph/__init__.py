"""Neighbour lists with periodic boundaries (O(N) cell lists, so2nn's cutoff and cap rules in torch) and
graph reductions."""

from ._radius import GRAPH_MODES, edge_vectors, radius_graph, segment_softmax

__all__ = ["GRAPH_MODES", "edge_vectors", "radius_graph", "segment_softmax"]
