"""The fused edge convolution equals its reference, the composition of public layers:
values and gradients in float64, on Hypothesis graphs (no edges included), mmax = lmax and 0."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.kernels import EDGE_CONVOLUTION, atom_edge_linear, edge_convolution, use_fused
from so2nn.layers import AtomEdgeEmbedding, SO2Convolution
from so2nn.so3 import CoefficientLayout, EdgeRotation

DOUBLE = dict(dtype=torch.float64)


def _diff(a, b):
    """Largest absolute difference (0 for empty tensors)."""
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


@st.composite
def layouts(draw):
    lmax = draw(st.integers(0, 3))
    mmax = draw(st.sampled_from(sorted({0, lmax, draw(st.integers(0, lmax))})))
    return CoefficientLayout(lmax, mmax)


@st.composite
def problems(draw):
    layout = draw(layouts())
    num_nodes = draw(st.integers(1, 4))
    num_edges = draw(st.integers(0, 7))
    channels, out, extra = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.sampled_from([0, 3]))
    seed = draw(st.integers(0, 2**16))
    return layout, num_nodes, num_edges, channels, out, extra, seed


def _setup(layout, num_nodes, num_edges, channels, out, extra, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    embedding = AtomEdgeEmbedding(10, 4).double()
    conv = SO2Convolution(layout, 2 * channels, out, [5 + 8, 6], extra_m0_output_channels=extra).double()
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=g)
    rotation = EdgeRotation(layout, torch.randn(num_edges, 3, generator=g, **DOUBLE))
    x = torch.randn(num_nodes, layout.dim, channels, generator=g, **DOUBLE).requires_grad_()
    h = torch.randn(num_edges, 5, generator=g, **DOUBLE).requires_grad_()
    numbers = torch.randint(0, 10, (num_nodes,), generator=g)
    return embedding, conv, edge_index, rotation, x, h, numbers


def _reference(embedding, conv, edge_index, rotation, x, h, numbers):
    pairs = torch.cat([x[edge_index[0]], x[edge_index[1]]], dim=-1)
    return conv(rotation.to_edge(pairs), embedding(h, numbers, edge_index))


def _kernel(embedding, conv, edge_index, rotation, x, h, numbers):
    radial = conv.radial
    hidden = atom_edge_linear(h, radial.first.weight, radial.first.bias, embedding.source_embedding.weight,
                              embedding.target_embedding.weight, numbers, edge_index)
    return edge_convolution(x, edge_index, rotation.matrix, radial.hidden_layers(hidden), conv.weights())


@given(problem=problems())
def test_values_and_gradients_equal_the_reference(problem):
    embedding, conv, edge_index, rotation, x, h, numbers = _setup(*problem)
    params = [x, h, *conv.parameters(), *embedding.parameters()]
    a = _kernel(embedding, conv, edge_index, rotation, x, h, numbers)
    b = _reference(embedding, conv, edge_index, rotation, x, h, numbers)
    weights = [torch.randn_like(t) for t in b]
    grads_a = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, a)), params, allow_unused=True)
    grads_b = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, b)), params, allow_unused=True)
    for u, v in zip(a, b):
        assert u.shape == v.shape and _diff(u, v) <= 1e-12
    for u, v in zip(grads_a, grads_b):
        u = torch.zeros_like(v) if u is None and v is not None else u
        v = torch.zeros_like(u) if v is None and u is not None else v
        if u is not None:
            assert torch.isfinite(u).all() and _diff(u, v) <= 1e-12
    with torch.no_grad():  # inference: the kernel's forward alone
        for u, v in zip(_kernel(embedding, conv, edge_index, rotation, x, h, numbers), b):
            assert _diff(u, v) <= 1e-12


@pytest.mark.parametrize("lmax, mmax, extra", [(2, 1, 3), (2, 2, 0), (2, 0, 3)])
def test_gradcheck(lmax, mmax, extra):
    embedding, conv, edge_index, rotation, x, h, numbers = _setup(CoefficientLayout(lmax, mmax), 3, 5, 2, 2, extra, 0)
    assert torch.autograd.gradcheck(lambda x, h: _kernel(embedding, conv, edge_index, rotation, x, h, numbers), (x, h))


def test_no_edge_frame_gradient():
    """The kernel gives no gradient for the frames: it refuses frames that need one, and the policy
    never chooses it when a second derivative may be needed."""
    layout = CoefficientLayout(2, 1)
    embedding, conv, edge_index, _, x, h, numbers = _setup(layout, 3, 4, 2, 2, 0, 1)
    rotation = EdgeRotation(layout, torch.randn(4, 3, **DOUBLE, requires_grad=True))
    with pytest.raises(ValueError, match="no gradient for the edge frames"):
        _kernel(embedding, conv, edge_index, rotation, x, h, numbers)
    assert not use_fused("auto", EDGE_CONVOLUTION, device_type="cpu", double_backward=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_fused("auto", EDGE_CONVOLUTION, device_type="cpu", double_backward=False)


def test_the_weights_of_an_so2_linear_map_are_not_enough():
    """The kernel applies the radial MLP's last layer itself: an SO2Linear's weights (no radial) are refused."""
    layout = CoefficientLayout(2, 1)
    embedding, conv, edge_index, rotation, x, h, numbers = _setup(layout, 3, 4, 2, 2, 0, 1)
    with pytest.raises(ValueError, match="weights of an SO2Convolution"):
        no_radial = conv.weights()._replace(radial=None)
        edge_convolution(x, edge_index, rotation.matrix, torch.zeros(4, 6, **DOUBLE), no_radial)


@given(num_edges=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_atom_edge_linear_is_the_linear_of_the_concatenation(num_edges, seed):
    torch.manual_seed(seed)
    embedding = AtomEdgeEmbedding(max_num_elements=10, channels=4).double()
    layer = torch.nn.Linear(6 + 2 * 4, 5).double()
    edge_index = torch.randint(0, 3, (2, num_edges))
    numbers, features = torch.tensor([1, 6, 8]), torch.randn(num_edges, 6, **DOUBLE, requires_grad=True)
    expected = layer(embedding(features, numbers, edge_index))
    got = atom_edge_linear(features, layer.weight, layer.bias, embedding.source_embedding.weight,
                           embedding.target_embedding.weight, numbers, edge_index)
    assert got.shape == expected.shape and _diff(got, expected) < 1e-14
    params = [features, layer.weight, layer.bias, *embedding.parameters()]
    weight = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad((got * weight).sum(), params),
                    torch.autograd.grad((expected * weight).sum(), params)):
        assert _diff(a, b) < 1e-14
