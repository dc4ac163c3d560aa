import pytest
import torch
from hypothesis import given

from so2nn.so3 import CoefficientLayout, spherical_harmonics, wigner_D
from so2nn.testing import apply_rotation, assert_equivariant, equivariance_error, random_rotation
from so2nn.testing import strategies as so2st


@given(R=so2st.rotations())
def test_strategy_rotations_are_rotations(R):
    assert (R @ R.T - torch.eye(3, dtype=R.dtype)).abs().max() <= 1e-12
    assert abs(float(torch.linalg.det(R)) - 1) <= 1e-12


@given(R=so2st.rotations(), v=so2st.point_clouds(1, 5))
def test_equivariant_function_passes(R, v):
    errors = assert_equivariant(
        lambda v: (spherical_harmonics(3, v).unsqueeze(-1), v.norm(dim=1), 2 * v),
        [v], ["vector"], (3, None, "vector"), R,
    )
    assert [e.name for e in errors] == ["output 0", "output 1", "output 2"]


def test_non_equivariant_function_fails_with_report():
    v = torch.randn(4, 3, dtype=torch.float64)
    shift = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match="energy \\(scalar\\).*\n.*forces \\(vector\\): max abs error"):
        assert_equivariant(
            lambda pos: {"energy": (pos + shift).norm(dim=1), "forces": pos + shift},
            {"pos": v}, {"pos": "vector"}, {"energy": None, "forces": "vector"},
        )


def test_matrix_and_layout_kinds():
    R = random_rotation(torch.Generator().manual_seed(0))
    M = torch.randn(3, 3, dtype=torch.float64)
    assert torch.allclose(apply_rotation(M, "matrix", R), R @ M @ R.T)
    x = torch.randn(5, 4, 2, dtype=torch.float64)
    rotated = apply_rotation(x, 1, R)
    assert torch.allclose(rotated[:, 1:], torch.einsum("ij,njc->nic", wigner_D(1, R), x[:, 1:]))
    assert torch.equal(apply_rotation(x, CoefficientLayout(1), R), rotated)
    with pytest.raises(ValueError, match="unknown kind"):
        apply_rotation(x, "tensor", R)


def test_default_rotation_is_random():
    v = torch.randn(4, 3, dtype=torch.float64)
    errors = equivariance_error(lambda v: v[:, 0], [v], ["vector"], None)
    assert errors[0].absolute > 0  # the x component is not invariant under a random rotation


@given(g=so2st.atomic_graphs())
def test_atomic_graphs(g):
    vec = g.edge_vec()
    assert vec.norm(dim=1).max() < g.cutoff
    assert vec.norm(dim=1).min() > 0.5
    assert g.edge_index.max() < g.num_atoms
