"""Neighbour lists with periodic boundaries and batching of atomistic graphs."""

from ._radius import edge_vectors, radius_graph

__all__ = ["edge_vectors", "radius_graph"]
