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


def _pair_energy(pos, cell):
    """A smooth pair potential over the atoms and their periodic images (one shell)."""
    shifts = torch.cartesian_prod(*[torch.arange(-1, 2, dtype=pos.dtype)] * 3) @ cell
    d = (pos[:, None, None, :] - pos[None, :, None, :] + shifts[None, None]).norm(dim=-1)
    mask = d > 1e-9
    return torch.where(mask, torch.exp(-(d - 1.5).square()), torch.zeros_like(d)).sum() / 2


def _energy_forces_stress(pos, cell):
    """Forces and stress by autograd, as a conservative model computes them: F = -dE/dx,
    sigma = (1/V) dE/d(strain) with positions and cell strained together."""
    pos = pos.detach().requires_grad_()
    strain = torch.zeros(3, 3, dtype=pos.dtype, requires_grad=True)
    deformation = torch.eye(3, dtype=pos.dtype) + (strain + strain.T) / 2
    energy = _pair_energy(pos @ deformation, cell @ deformation)
    grad_pos, grad_strain = torch.autograd.grad(energy, (pos, strain))
    return {"energy": energy, "forces": -grad_pos, "stress": grad_strain / torch.linalg.det(cell).abs()}


@given(R=so2st.rotations())
def test_functions_that_differentiate_inside_are_checked(R):
    """Conservative forces and a strain-derivative stress need autograd inside the function:
    the check runs it with gradients on (the caller's mode) and compares detached outputs."""
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.3, 0.1], [0.2, 1.4, 0.5]], dtype=torch.float64)
    cell = torch.tensor([[3.0, 0.0, 0.0], [0.4, 3.2, 0.0], [0.1, 0.3, 2.9]], dtype=torch.float64)
    errors = assert_equivariant(_energy_forces_stress, [pos, cell], ["vector", "vector"],
                                {"energy": None, "forces": "vector", "stress": "matrix"}, R)
    assert [e.name for e in errors] == ["energy", "forces", "stress"]

    def broken(pos, cell):
        return {**_energy_forces_stress(pos, cell), "stress": torch.eye(3, dtype=pos.dtype) * pos[1, 0]}

    quarter_turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(AssertionError, match="stress \\(matrix\\)"):
        assert_equivariant(broken, [pos, cell], ["vector", "vector"], {"stress": "matrix"}, quarter_turn)
    with torch.no_grad(), pytest.raises(RuntimeError, match="does not require grad"):  # the caller's mode
        assert_equivariant(_energy_forces_stress, [pos, cell], ["vector", "vector"], {"forces": "vector"}, R)


def test_grad_mode_is_the_callers():
    seen = []

    def record(v):
        seen.append(torch.is_grad_enabled())
        return v

    v = torch.randn(3, 3, dtype=torch.float64)
    assert_equivariant(record, [v], ["vector"], "vector")
    with torch.no_grad():
        assert_equivariant(record, [v], ["vector"], "vector")
    assert seen == [True, True, False, False]


def test_conservative_model():
    """EquiformerV2 with forces as the energy's negative gradient, checked as it is."""
    from so2nn.models import EquiformerV2, EquiformerV2Config

    torch.manual_seed(0)
    config = EquiformerV2Config.tiny(max_radius=12.0, activation="gate", use_grid_mlp=False, direct_forces=False,
                                     max_num_elements=10)
    model = EquiformerV2(config).double().eval()
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.1, 0.2, -0.1], [-0.3, 1.0, 0.4], [0.5, -0.6, 0.9]], dtype=torch.float64)
    numbers = torch.tensor([6, 8, 1, 1])
    assert_equivariant(lambda pos: model(pos=pos, atomic_numbers=numbers), [pos], ["vector"],
                       {"energy": None, "forces": "vector"}, random_rotation(torch.Generator().manual_seed(1)))
