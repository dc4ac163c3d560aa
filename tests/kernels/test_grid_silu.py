"""The chunked grid SiLU equals its reference F SiLU(T x): values, gradients and second
derivatives in float64 (it claims double backward), with no rows too, storing only its input."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import so2nn.kernels._grid_silu as kernel
from so2nn.kernels import GRID_SILU, grid_silu, use_fused
from so2nn.so3 import CoefficientLayout, S2Grid

DOUBLE = dict(dtype=torch.float64)


def _diff(a, b):
    """Largest absolute difference (0 for empty tensors)."""
    return float((a - b).detach().abs().max()) if a.numel() else 0.0


def _grid(lmax=2, mmax=2, resolution=8):
    layout = CoefficientLayout(lmax, mmax)
    grid = S2Grid(layout, resolution)
    index = layout.m_major_index
    return grid.to_grid[:, index], grid.from_grid[index]


@pytest.fixture
def small_chunks(monkeypatch):
    """Several chunks even for tiny inputs, so that the chunk loop is exercised."""
    monkeypatch.setattr(kernel, "_CPU_CHUNK_ELEMENTS", 5 * _grid()[0].shape[0])  # 5 rows of the default grid


@given(batch=st.integers(0, 4), channels=st.integers(1, 3), rows_out=st.integers(1, 9), lmax=st.integers(0, 2),
       data=st.data())
def test_values_and_gradients_equal_the_reference(batch, channels, rows_out, lmax, data):
    mmax = data.draw(st.sampled_from(sorted({0, lmax})))
    to_grid, from_grid = _grid(lmax, mmax, resolution=2 * lmax + 4)
    from_grid = from_grid[-min(rows_out, from_grid.shape[0]):]
    x = torch.randn(batch, to_grid.shape[1], channels, **DOUBLE, requires_grad=True)
    expected = from_grid @ torch.nn.functional.silu(to_grid @ x)
    got = grid_silu(x, to_grid, from_grid)
    assert got.shape == expected.shape and _diff(got, expected) <= 1e-12
    w = torch.randn_like(got)
    (a,) = torch.autograd.grad((got * w).sum(), x)
    (b,) = torch.autograd.grad((expected * w).sum(), x)
    assert _diff(a, b) <= 1e-12


def test_gradcheck_and_gradgradcheck(small_chunks):
    to_grid, from_grid = _grid(resolution=6)
    x = torch.randn(3, to_grid.shape[1], 4, **DOUBLE, requires_grad=True)
    f = lambda x: grid_silu(x, to_grid, from_grid[1:])  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    # it passes gradgradcheck, so the policy keeps it when a second derivative is needed
    assert use_fused("auto", GRID_SILU, device_type="cpu", double_backward=True)


def test_saves_only_its_input():
    to_grid, from_grid = _grid(lmax=4, mmax=2, resolution=18)
    x = torch.randn(50, to_grid.shape[1], 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        grid_silu(x * 1.0, to_grid, from_grid)
    grid_size = 50 * to_grid.shape[0] * 16
    assert saved and max(saved) < grid_size / 10, (saved, grid_size)
