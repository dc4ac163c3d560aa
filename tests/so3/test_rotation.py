import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.so3 import CoefficientLayout, EdgeRotation, edge_frames, wigner_D_blocks
from so2nn.testing import apply_rotation
from so2nn.testing import strategies as so2st


@st.composite
def layouts(draw, max_lmax=6):
    lmax = draw(st.integers(0, max_lmax))
    return CoefficientLayout(lmax, draw(st.integers(0, lmax)))


@given(layout=layouts(), v=so2st.edge_vectors_with_axes(12))
def test_matches_dense_truncated_wigner(layout, v):
    x = torch.randn(len(v), layout.dim, 3, dtype=torch.float64)
    dense = torch.block_diag  # noqa: F841 (documentation of intent: the reference is dense)
    D = torch.stack([torch.block_diag(*blocks) for blocks in zip(*wigner_D_blocks(layout.lmax, edge_frames(v)))])
    expected = (D @ x)[:, layout.m_major_index]
    assert (EdgeRotation(layout, v).to_edge(x) - expected).abs().max() <= 1e-10


@given(layout=layouts(), v=so2st.edge_vectors_with_axes(12))
def test_round_trip_exact_on_kept_orders(layout, v):
    rot = EdgeRotation(layout, v)
    y = torch.randn(len(v), layout.edge_dim, 4, dtype=torch.float64)
    assert (rot.to_edge(rot.from_edge(y)) - y).abs().max() <= 1e-10
    full = EdgeRotation(CoefficientLayout(layout.lmax), v)
    x = torch.randn(len(v), layout.dim, 4, dtype=torch.float64)
    assert (full.from_edge(full.to_edge(x)) - x).abs().max() <= 1e-10


@given(layout=layouts(), v=so2st.edge_vectors_with_axes(8), R=so2st.rotations())
def test_projection_onto_kept_orders_is_equivariant(layout, v, R):
    # Keeping |m| <= mmax about the edge axis does not depend on the roll of the frame, so
    # rotate -> truncate -> rotate back commutes with a global rotation of features and edges.
    def project(x, v):
        rot = EdgeRotation(layout, v)
        return rot.from_edge(rot.to_edge(x))

    x = torch.randn(len(v), layout.dim, 2, dtype=torch.float64)
    rotated = project(apply_rotation(x, layout, R), v @ R.T)
    assert (rotated - apply_rotation(project(x, v), layout, R)).abs().max() <= 1e-10


def test_rescale():
    layout = CoefficientLayout(3, 1)
    rot = EdgeRotation(layout, torch.randn(5, 3, dtype=torch.float64))
    y = torch.randn(5, layout.edge_dim, 2, dtype=torch.float64)
    plain, scaled = rot.from_edge(y), rot.from_edge(y, rescale=True)
    s = layout.truncation_rescale[layout.degrees]
    assert torch.allclose(scaled, plain * s[:, None])


def test_float32_and_from_frames():
    layout = CoefficientLayout(4, 2)
    v = torch.randn(7, 3)
    rot = EdgeRotation.from_frames(layout, edge_frames(v))
    y = rot.to_edge(torch.randn(7, layout.dim, 3))
    assert y.dtype == torch.float32 and y.shape == (7, layout.edge_dim, 3)


def test_bad_input():
    layout = CoefficientLayout(2, 1)
    rot = EdgeRotation(layout, torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"\[E=4, 9, C\]"):
        rot.to_edge(torch.randn(4, 8, 2))
    with pytest.raises(ValueError, match="one per edge"):
        rot.to_edge(torch.randn(3, 9, 2))
    with pytest.raises(ValueError, match=r"\[E=4, 7, C\]"):
        rot.from_edge(torch.randn(4, 9, 2))
    with pytest.raises(ValueError, match="zero-length"):
        EdgeRotation(layout, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="CoefficientLayout"):
        EdgeRotation(2, torch.randn(2, 3))
