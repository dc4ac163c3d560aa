import pytest
import torch
from hypothesis import given

from so2nn.so3 import CoefficientLayout, edge_frames, spherical_harmonics
from so2nn.testing import strategies as so2st


@given(v=so2st.edge_vectors_with_axes(24))
def test_frame_takes_edge_to_polar_axis(v):
    R = edge_frames(v)
    u = v / v.norm(dim=1, keepdim=True)
    assert (torch.einsum("eij,ej->ei", R, u) - torch.tensor([0.0, 1.0, 0.0], dtype=v.dtype)).abs().max() <= 1e-12
    assert (R @ R.transpose(1, 2) - torch.eye(3, dtype=v.dtype)).abs().max() <= 1e-12
    assert (torch.linalg.det(R) - 1).abs().max() <= 1e-12


@given(v=so2st.edge_vectors_with_axes(24))
def test_edge_harmonics_have_only_m0_in_frame(v):
    lmax = 6
    R = edge_frames(v)
    Y = spherical_harmonics(lmax, torch.einsum("eij,ej->ei", R, v))
    m = CoefficientLayout(lmax).orders
    assert Y[:, m != 0].abs().max() <= 1e-10


@given(v=so2st.edge_vectors_with_axes(24, dtype=torch.float32))
def test_float32(v):
    R = edge_frames(v)
    u = v / v.norm(dim=1, keepdim=True)
    assert R.dtype == torch.float32
    assert (torch.einsum("eij,ej->ei", R, u) - torch.tensor([0.0, 1.0, 0.0])).abs().max() <= 1e-5


def test_deterministic_and_finite_gradients_on_axes():
    v = torch.tensor(
        [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1],
         [1e-9, 1, 1e-9], [-1e-9, -1, 1e-9], [1, 1e-9, 0], [1, -1e-9, 0]],
        dtype=torch.float64, requires_grad=True,
    )
    R = edge_frames(v)
    assert torch.equal(R, edge_frames(v))
    weights = torch.randn_like(R)
    (R * weights).sum().backward()
    assert torch.isfinite(v.grad).all()
    assert v.grad.abs().max() < 10


def test_gradcheck_off_the_equator():
    v = torch.tensor([[0.3, 0.8, -0.2], [0.1, -0.9, 0.4], [1e-7, 1.0, 0.0], [0.0, -1.0, 1e-7]], dtype=torch.float64)
    assert torch.autograd.gradcheck(edge_frames, (v.requires_grad_(),))


def test_zero_length_edge():
    with pytest.raises(ValueError, match="zero-length vector \\(edge 1\\)"):
        edge_frames(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        edge_frames(torch.tensor([[1.0, float("nan"), 0.0]]))
