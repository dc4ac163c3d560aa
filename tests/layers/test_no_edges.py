"""Graphs without edges (a single atom, atoms beyond the cutoff) are valid input: every public
layer gives correctly shaped, finite outputs for E = 0 (zero rows for the edge-wise layers),
forward and backward, under both kernel policies."""

import pytest
import torch

from so2nn.layers import (
    AtomEdgeEmbedding,
    AttentionReNorm,
    EdgeDegreeEmbedding,
    EquivariantDropout,
    EquivariantGraphAttention,
    EquivariantLayerNorm,
    EquivariantRMSNorm,
    FeedForwardNetwork,
    GateActivation,
    GraphDropPath,
    RadialBasis,
    RadialMLP,
    S2Activation,
    SeparableLayerNorm,
    SeparableS2Activation,
    SmoothLeakyReLU,
    SO2Convolution,
    SO2Linear,
    SO3Linear,
)
from so2nn.so3 import CoefficientLayout, EdgeRotation

DOUBLE = dict(dtype=torch.float64)
LAYOUT = CoefficientLayout(3, 1)
N = 3  # atoms, none of them with a neighbour


def _finite_backward(out, *inputs):
    outputs = out if isinstance(out, tuple) else (out,)
    assert all(torch.isfinite(o).all() for o in outputs)
    loss = sum(o.sum() for o in outputs if o.requires_grad)
    if torch.is_tensor(loss):
        loss.backward()
    for t in inputs:
        assert t.grad is None or torch.isfinite(t.grad).all()


def _empty_graph():
    rotation = EdgeRotation(LAYOUT, torch.zeros(0, 3, **DOUBLE, requires_grad=True))
    return torch.zeros(2, 0, dtype=torch.long), rotation, torch.tensor([1, 6, 8])


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("activation", ["separable_s2", "s2", "gate"])
def test_attention(kernels, activation):
    edge_index, rotation, numbers = _empty_graph()
    layer = EquivariantGraphAttention(
        LAYOUT, sphere_channels=4, hidden_channels=4, num_heads=2, attn_alpha_channels=2, attn_value_channels=2,
        output_channels=5, edge_channels_list=[6, 8, 8], max_num_elements=10, activation=activation,
        grid_resolution=10, kernels=kernels,
    ).double().train()
    x = torch.randn(N, LAYOUT.dim, 4, **DOUBLE, requires_grad=True)
    for frames in (rotation, EdgeRotation(LAYOUT, torch.zeros(0, 3, **DOUBLE))):  # gradient / direct forces
        y = layer(x, torch.zeros(0, 6, **DOUBLE), numbers, edge_index, frames)
        assert y.shape == (N, LAYOUT.dim, 5)
        assert torch.equal(y[:, 1:], torch.zeros_like(y[:, 1:]))  # no messages: only the projection's bias
        _finite_backward(y, x)


def test_edge_degree_embedding():
    edge_index, rotation, numbers = _empty_graph()
    layer = EdgeDegreeEmbedding(LAYOUT, 4, [6, 8], max_num_elements=10, rescale_factor=2.0).double()
    y = layer(torch.zeros(0, 6, **DOUBLE), numbers, edge_index, rotation, N)
    assert y.shape == (N, LAYOUT.dim, 4) and torch.equal(y, torch.zeros_like(y))
    _finite_backward(y)


def test_edge_wise_layers():
    edge_index, rotation, numbers = _empty_graph()
    h = torch.zeros(0, 6, **DOUBLE, requires_grad=True)
    x = torch.zeros(0, LAYOUT.edge_dim, 4, **DOUBLE, requires_grad=True)
    out = SO2Linear(LAYOUT, 4, 3, extra_m0_output_channels=2).double()(x)
    assert out.y.shape == (0, LAYOUT.edge_dim, 3) and out.extra.shape == (0, 2)
    _finite_backward(tuple(out), x)
    out = SO2Convolution(LAYOUT, 4, 3, [6, 8]).double()(x, h)
    assert out.y.shape == (0, LAYOUT.edge_dim, 3)
    _finite_backward(tuple(out), x, h)
    assert AtomEdgeEmbedding(10, 2).double()(h, numbers, edge_index).shape == (0, 10)
    assert RadialMLP([6, 8, 5]).double()(h).shape == (0, 5)
    assert RadialBasis(6, 5.0)(torch.zeros(0, **DOUBLE)).shape == (0, 6)
    assert AttentionReNorm(2, 3).double()(torch.zeros(0, 6, **DOUBLE)).shape == (0, 2)
    for act, scalars in ((S2Activation(LAYOUT, 10, edge=True), None),
                         (SeparableS2Activation(LAYOUT, 10, edge=True), torch.zeros(0, 4, **DOUBLE)),
                         (GateActivation(LAYOUT, 4, edge=True), torch.zeros(0, 3 * 4, **DOUBLE))):
        assert act.double()(x, scalars).shape == x.shape
    assert SmoothLeakyReLU()(torch.zeros(0, 3)).shape == (0, 3)
    assert rotation.to_edge(torch.zeros(0, LAYOUT.dim, 4, **DOUBLE)).shape == (0, LAYOUT.edge_dim, 4)
    assert rotation.from_edge(x, rescale=True).shape == (0, LAYOUT.dim, 4)


def test_node_wise_layers_on_isolated_atoms_and_on_no_atoms():
    for rows in (N, 0):
        x = torch.randn(rows, LAYOUT.dim, 4, **DOUBLE, requires_grad=True)
        for layer in (SO3Linear(LAYOUT, 4, 3), EquivariantLayerNorm(LAYOUT, 4), EquivariantRMSNorm(LAYOUT, 4),
                      SeparableLayerNorm(LAYOUT, 4), FeedForwardNetwork(LAYOUT, 4, 8, 4, grid_resolution=10),
                      EquivariantDropout(0.5), GraphDropPath(0.5)):
            layer = layer.double().train()
            y = layer(x, torch.zeros(rows, dtype=torch.long)) if isinstance(layer, GraphDropPath) else layer(x)
            assert y.shape[:2] == (rows, LAYOUT.dim)
            _finite_backward(y, x)
