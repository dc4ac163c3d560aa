"""The building blocks of eSCN and EquiformerV2, as public layers.

Node features are ``[N, (lmax+1)**2, C]`` (l-major); edge-frame features are
``[E, layout.edge_dim, C]`` (m-major, ``|m| <= mmax``); see :mod:`so2nn.so3`.
"""

from ._activation import (
    GateActivation,
    S2Activation,
    SeparableS2Activation,
    SmoothLeakyReLU,
    activation_layer,
    activation_scalars,
    fine_grid_resolution,
)
from ._attention import AttentionReNorm, EquivariantGraphAttention
from ._common import check_edges, replace_scalars
from ._dropout import EquivariantDropout, GraphDropPath
from ._edge_degree import EdgeDegreeEmbedding
from ._feed_forward import FeedForwardNetwork
from ._linear import SO3Linear
from ._norm import EquivariantLayerNorm, EquivariantRMSNorm, SeparableLayerNorm, normalization_layer
from ._radial import AtomEdgeEmbedding, RadialBasis, RadialMLP
from ._so2 import SO2Convolution, SO2Linear, SO2Output, complex_matrix

__all__ = [
    "check_edges",
    "AtomEdgeEmbedding",
    "AttentionReNorm",
    "EdgeDegreeEmbedding",
    "EquivariantDropout",
    "EquivariantGraphAttention",
    "EquivariantLayerNorm",
    "EquivariantRMSNorm",
    "FeedForwardNetwork",
    "GateActivation",
    "GraphDropPath",
    "RadialBasis",
    "RadialMLP",
    "S2Activation",
    "SO2Convolution",
    "SO2Linear",
    "SO2Output",
    "SO3Linear",
    "SeparableLayerNorm",
    "SeparableS2Activation",
    "SmoothLeakyReLU",
    "activation_layer",
    "activation_scalars",
    "complex_matrix",
    "fine_grid_resolution",
    "normalization_layer",
    "replace_scalars",
]
