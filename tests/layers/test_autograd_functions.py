"""The custom autograd Functions of the hot path: same values as the plain formula, and
gradients checked against finite differences in float64 (gradcheck), twice where they
claim double backward (gradient forces in training need it)."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import so2nn.layers._activation as activation
from so2nn.layers._activation import grid_silu
from so2nn.layers._gather import rotate_pairs, scatter_sum
from so2nn.layers._so2 import SO2Convolution, edge_message_convolution
from so2nn.so3 import CoefficientLayout, EdgeRotation, S2Grid

DOUBLE = dict(dtype=torch.float64)


@pytest.fixture
def small_chunks(monkeypatch):
    """Several chunks even for tiny inputs, so that the chunk loop is exercised."""
    monkeypatch.setattr(activation, "_CPU_CHUNK_ELEMENTS", 5 * _grid()[0].shape[0])  # 5 rows of the default grid


def _grid(lmax=2, mmax=2, resolution=8):
    layout = CoefficientLayout(lmax, mmax)
    grid = S2Grid(layout, resolution)
    index = layout.m_major_index
    return grid.to_grid[:, index], grid.from_grid[index]


@given(batch=st.integers(1, 4), channels=st.integers(1, 3), rows_out=st.integers(1, 9))
def test_grid_silu_matches_formula(batch, channels, rows_out):
    to_grid, from_grid = _grid()
    from_grid = from_grid[-rows_out:]
    x = torch.randn(batch, to_grid.shape[1], channels, **DOUBLE)
    expected = from_grid @ torch.nn.functional.silu(to_grid @ x)
    assert (grid_silu(x, to_grid, from_grid) - expected).abs().max() <= 1e-12


def test_grid_silu_gradients(small_chunks):
    to_grid, from_grid = _grid(resolution=6)
    x = torch.randn(3, to_grid.shape[1], 4, **DOUBLE, requires_grad=True)
    f = lambda x: grid_silu(x, to_grid, from_grid[1:])  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_grid_silu_saves_only_its_input():
    to_grid, from_grid = _grid(lmax=4, mmax=2, resolution=18)
    x = torch.randn(50, to_grid.shape[1], 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        grid_silu(x * 1.0, to_grid, from_grid)
    grid_size = 50 * to_grid.shape[0] * 16
    assert saved and max(saved) < grid_size / 10, (saved, grid_size)


def test_rotate_pairs_and_scatter_sum():
    x = torch.randn(5, 9, 2, **DOUBLE, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 1, 4, 2, 0], [1, 0, 2, 2, 2, 3]])
    rotation = EdgeRotation(CoefficientLayout(2, 1), torch.randn(6, 3, **DOUBLE))
    matrix = rotation.matrix.detach().requires_grad_()
    expected = torch.bmm(matrix, torch.cat([x[edge_index[0]], x[edge_index[1]]], dim=-1))
    assert (torch.cat(rotate_pairs(matrix, x, *edge_index), dim=-1) - expected).abs().max() < 1e-14
    assert torch.autograd.gradcheck(lambda x, matrix: rotate_pairs(matrix, x, *edge_index), (x, matrix))
    assert torch.autograd.gradgradcheck(lambda x, matrix: rotate_pairs(matrix, x, *edge_index), (x, matrix))

    m = torch.randn(6, 3, 2, **DOUBLE, requires_grad=True)
    expected = torch.zeros(5, 3, 2, **DOUBLE).index_add(0, edge_index[1], m)
    assert torch.equal(scatter_sum(m, edge_index[1], 5), expected)
    assert torch.autograd.gradcheck(lambda m: scatter_sum(m, edge_index[1], 5), (m,))
    assert torch.autograd.gradgradcheck(lambda m: scatter_sum(m, edge_index[1], 5), (m,))


@pytest.mark.parametrize("lmax, mmax, extra", [(3, 2, 5), (2, 2, 0), (2, 0, 3)])
def test_edge_message_convolution(lmax, mmax, extra):
    torch.manual_seed(0)
    layout = CoefficientLayout(lmax, mmax)
    conv = SO2Convolution(layout, 4, 3, [5, 6], extra_m0_output_channels=extra).double()
    edge_index = torch.tensor([[0, 1, 2, 3, 3, 0, 2], [1, 0, 0, 1, 2, 3, 3]])
    rotation = EdgeRotation(layout, torch.randn(7, 3, **DOUBLE))
    x = torch.randn(4, layout.dim, 2, **DOUBLE, requires_grad=True)
    edge_features = torch.randn(7, 5, **DOUBLE, requires_grad=True)

    def fused(x, edge_features):
        out = edge_message_convolution(conv, x, edge_index, rotation, edge_features)
        return out if extra else (out,)

    def plain(x, edge_features):
        out = conv(rotation.to_edge(torch.cat([x[edge_index[0]], x[edge_index[1]]], dim=-1)), edge_features)
        return out if extra else (out,)

    params = [x, edge_features, *conv.parameters()]
    a, b = fused(x, edge_features), plain(x, edge_features)
    weights = [torch.randn_like(t) for t in a]
    grads_a = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, a)), params)
    grads_b = torch.autograd.grad(sum((w * t).sum() for w, t in zip(weights, b)), params)
    for u, v in zip(list(a) + list(grads_a), list(b) + list(grads_b)):
        assert (u - v).abs().max() <= 1e-12
    assert torch.autograd.gradcheck(fused, (x, edge_features))
    # the plain path: without autograd (inference), and with frames that need a gradient (gradient forces)
    with torch.no_grad():
        for u, v in zip(fused(x, edge_features), b):
            assert (u - v).abs().max() <= 1e-12
    frames = EdgeRotation(layout, torch.randn(7, 3, **DOUBLE, requires_grad=True))
    a = edge_message_convolution(conv, x, edge_index, frames, edge_features)
    b = conv(frames.to_edge(torch.cat([x[edge_index[0]], x[edge_index[1]]], dim=-1)), edge_features)
    for u, v in zip(a if extra else (a,), b if extra else (b,)):
        assert (u - v).abs().max() <= 1e-12
