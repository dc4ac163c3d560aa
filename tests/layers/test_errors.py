"""Bad input at a public layer boundary raises a ValueError naming the problem (expected shape,
likely cause, both dtypes), never a deep torch error; bad constructor arguments are caught
when the layer is built."""

import pytest
import torch

from so2nn.layers import (
    EdgeDegreeEmbedding,
    EquivariantGraphAttention,
    FeedForwardNetwork,
    RadialMLP,
    SeparableLayerNorm,
    SO2Convolution,
    SO3Linear,
)
from so2nn.so3 import CoefficientLayout, EdgeRotation

LAYOUT = CoefficientLayout(2, 1)
KW = dict(sphere_channels=4, hidden_channels=4, num_heads=2, attn_alpha_channels=2, attn_value_channels=2,
          output_channels=4, edge_channels_list=[3, 8, 8], max_num_elements=10, grid_resolution=8)


def _graph(num_edges=4):
    edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])[:, :num_edges]
    return edge_index, EdgeRotation(LAYOUT, torch.randn(num_edges, 3)), torch.tensor([1, 6, 8])


@pytest.mark.parametrize("change, message", [
    (dict(num_heads=0), "num_heads must be >= 1"),
    (dict(attn_alpha_channels=2.5), "attn_alpha_channels must be an int"),
    (dict(alpha_drop=1.0), r"alpha_drop must be a probability in \[0, 1\)"),
    (dict(edge_channels_list=[3]), "edge_channels_list must be at least two ints"),
    (dict(edge_channels_list=[3, 0]), "edge_channels_list must be at least two ints"),
    (dict(max_num_elements=0), "max_num_elements must be >= 1"),
    (dict(activation="relu"), "unknown activation 'relu'"),
    (dict(kernels="fast"), r"kernels must be one of \('auto', 'reference'\)"),
    (dict(recompute="yes"), "attn_renorm and recompute must be bools"),
])
def test_attention_constructor(change, message):
    with pytest.raises(ValueError, match=message):
        EquivariantGraphAttention(LAYOUT, **{**KW, **change})


def test_attention_forward():
    layer = EquivariantGraphAttention(LAYOUT, **KW)
    edge_index, rotation, numbers = _graph()
    x, h = torch.randn(3, LAYOUT.dim, 4), torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 9, 4\], got \(3, 7, 4\) \(edge-frame features"):
        layer(torch.randn(3, LAYOUT.edge_dim, 4), h, numbers, edge_index, rotation)
    with pytest.raises(ValueError,
                       match="x is torch.float64 but the weights of EquivariantGraphAttention are torch.float32"):
        layer(x.double(), h, numbers, edge_index, rotation)
    with pytest.raises(ValueError, match=r"edge_features must have shape \[E=4, 3\]"):
        layer(x, torch.randn(4, 5), numbers, edge_index, rotation)
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, E\]"):
        layer(x, h, numbers, edge_index.T, rotation)
    with pytest.raises(ValueError, match="edge_index must be an integer tensor"):
        layer(x, h, numbers, edge_index.float(), rotation)
    with pytest.raises(ValueError, match="rotation has 3 edge frames, edge_index 4 edges"):
        layer(x, h, numbers, edge_index, EdgeRotation(LAYOUT, torch.randn(3, 3)))
    with pytest.raises(ValueError, match="rotation is built for"):
        layer(x, h, numbers, edge_index, EdgeRotation(CoefficientLayout(2, 2), torch.randn(4, 3)))
    with pytest.raises(ValueError, match=r"atomic_numbers must be an integer tensor of shape \[N=3\]"):
        layer(x, h, numbers[:2], edge_index, rotation)


def test_other_layers():
    edge_index, rotation, numbers = _graph()
    embedding = EdgeDegreeEmbedding(LAYOUT, 4, [3, 8], max_num_elements=10, rescale_factor=2.0)
    with pytest.raises(ValueError, match=r"edge_features must have shape \[E=4, 3\]"):
        embedding(torch.randn(4, 6), numbers, edge_index, rotation, 3)
    with pytest.raises(ValueError, match="rescale_factor must be a number > 0"):
        EdgeDegreeEmbedding(LAYOUT, 4, [3, 8], max_num_elements=10, rescale_factor=0.0)
    conv = SO2Convolution(LAYOUT, 2, 2, [3, 4])
    with pytest.raises(ValueError, match=r"edge_features must have shape \[E=5, 3\] \(the radial MLP's input width\)"):
        conv(torch.randn(5, LAYOUT.edge_dim, 2), torch.randn(5, 4))
    with pytest.raises(ValueError,
                       match="edge_features is torch.float64 but the weights of SO2Convolution are torch.float32"):
        conv(torch.randn(5, LAYOUT.edge_dim, 2), torch.randn(5, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"RadialMLP expects \[E, 3\] edge features"):
        RadialMLP([3, 4])(torch.randn(5, 4))
    for layer in (SO3Linear(LAYOUT, 4, 4), SeparableLayerNorm(LAYOUT, 4),
                  FeedForwardNetwork(LAYOUT, 4, 4, 4, grid_resolution=8)):
        with pytest.raises(ValueError,
                           match=f"x is torch.float64 but the weights of {type(layer).__name__} are torch.float32"):
            layer(torch.randn(3, LAYOUT.dim, 4, dtype=torch.float64))
        with pytest.raises(ValueError, match=r"x must have shape \[N, 9, 4\], got \(3, 7, 4\)"):
            layer(torch.randn(3, LAYOUT.edge_dim, 4))


def test_autocast_inputs_are_not_dtype_errors():
    """Under autocast the layers cast themselves: a bf16 input is not a dtype mismatch."""
    layer = SO3Linear(LAYOUT, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(3, LAYOUT.dim, 4, dtype=torch.bfloat16)).shape == (3, 9, 4)
