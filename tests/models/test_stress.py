"""Stress of conservative models: (1/V) dE/d(strain) against finite differences of the energy,
rotation equivariance (R S R^T), what strain = 0 leaves unchanged, and inputs without a volume."""

import math

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from hypothesis import given, settings
from hypothesis import strategies as st

from so2nn.layers import fine_grid_resolution
from so2nn.models import EquiformerV2, EquiformerV2Config, read_inputs
from so2nn.testing import assert_equivariant, random_rotation
from so2nn.testing import strategies as so2st

SMALL = dict(
    lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
    attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8, num_distance_basis=16, max_radius=4.0,
    max_neighbors=30, alpha_drop=0.0, drop_path_rate=0.0, max_num_elements=30, energy_std=100.0,
)
GATE = dict(activation="gate", use_grid_mlp=False)  # exactly equivariant: no S2 grid


def conservative(seed=0, dtype=torch.float64, **changes):
    torch.manual_seed(seed)
    return EquiformerV2(EquiformerV2Config(**{**SMALL, "direct_forces": False, **changes})).to(dtype).eval()


def crystals():
    """Three bulk systems, rattled: cubic fcc, hexagonal, and a sheared (triclinic) cell."""
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    mg = bulk("Mg", "hcp", a=3.2, c=5.2) * (2, 1, 1)
    nacl = bulk("NaCl", "rocksalt", a=5.4)
    nacl.set_cell(nacl.cell.array + np.array([[0.3, 0.1, -0.2], [0.0, 0.2, 0.4], [-0.1, 0.3, 0.1]]), scale_atoms=True)
    systems = [cu, mg, nacl]
    for i, atoms in enumerate(systems):
        atoms.rattle(0.05, seed=i)
    return systems


def fields(systems):
    return dict(
        pos=torch.tensor(np.concatenate([a.positions for a in systems])),
        atomic_numbers=torch.tensor(np.concatenate([a.numbers for a in systems])),
        cell=torch.tensor(np.stack([a.cell.array for a in systems])),
        natoms=torch.tensor([len(a) for a in systems]),
        pbc=torch.tensor(np.stack([a.pbc for a in systems])),
    )


def energy_of_strained(model, f, graph, system, eps):
    """Energy of ``system`` after x -> x (I + eps) for its atoms and A -> A (I + eps), on a fixed graph."""
    d = torch.eye(3, dtype=torch.float64) + eps
    batch = torch.repeat_interleave(torch.arange(len(f["natoms"])), f["natoms"])
    pos = torch.where((batch == system)[:, None], f["pos"] @ d, f["pos"])
    cell = f["cell"].clone()
    cell[system] = cell[system] @ d
    with torch.no_grad():
        out = model(**{**f, "pos": pos, "cell": cell}, edge_index=graph[0], cell_offsets=graph[1])
    return float(out["energy"][system])


def test_stress_matches_finite_differences_of_the_energy_for_a_batch_of_cells():
    model = conservative(lmax=3, mmax=2)
    systems = crystals()
    f = fields(systems)
    graph = model.build_graph(read_inputs(None, f, model.config))  # fixed: no edge crosses the cutoff
    stress = model(**f)["stress"]
    assert stress.shape == (3, 3, 3) and torch.isfinite(stress).all()
    torch.testing.assert_close(stress, stress.transpose(1, 2), rtol=0, atol=1e-15)
    h = 1e-5
    for b, atoms in enumerate(systems):
        volume = abs(np.linalg.det(atoms.cell.array))
        fd = np.zeros((3, 3))
        for i in range(3):
            for j in range(i, 3):
                eps = torch.zeros(3, 3, dtype=torch.float64)
                eps[i, j] += h / 2
                eps[j, i] += h / 2
                fd[i, j] = fd[j, i] = (energy_of_strained(model, f, graph, b, eps)
                                       - energy_of_strained(model, f, graph, b, -eps)) / (2 * h * volume)
        scale = np.abs(fd).max()
        assert scale > 1e-6  # a real signal, not two zeros
        np.testing.assert_allclose(stress[b].numpy(), fd, rtol=0, atol=1e-6 * scale)  # rounding of E over h: about 3e-8


def test_strain_leaves_energy_and_forces_unchanged():
    model = conservative()
    torch.manual_seed(0)
    direct = EquiformerV2(EquiformerV2Config(**SMALL)).double().eval()
    direct.load_state_dict(model.state_dict(), strict=False)  # the same backbone and energy head
    f = fields(crystals())
    out = model(**f)
    pos = f["pos"].clone().requires_grad_(True)
    energy = direct(**{**f, "pos": pos})["energy"]
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    torch.testing.assert_close(out["energy"], energy.detach(), rtol=0, atol=0)
    torch.testing.assert_close(out["forces"], -grad, rtol=0, atol=0)


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@given(R=so2st.rotations(), cell=so2st.periodic_cells(3.5, 5.0), seed=st.integers(0, 2**16))
@settings(max_examples=5, deadline=None)
def test_stress_is_exactly_equivariant(R, cell, seed, kernels):
    model = conservative(lmax=3, mmax=2, kernels=kernels, **GATE)
    g = torch.Generator().manual_seed(seed)
    frac = torch.rand(4, 3, generator=g, dtype=torch.float64)
    pos = frac @ cell
    numbers = torch.tensor([29, 8, 29, 1])
    f = lambda pos, cell: model(pos=pos, cell=cell, atomic_numbers=numbers)  # noqa: E731
    try:
        f(pos, cell[None])
    except ValueError as error:  # two atoms drawn on top of each other (or their images)
        assert "overlapping atoms" in str(error)
        return
    assert_equivariant(f, [pos, cell[None]], ["vector", "vector"],
                       {"energy": None, "forces": "vector", "stress": "matrix"}, R, 1e-9)


def test_stress_of_grid_models_is_equivariant_within_the_aliasing_bound():
    # The S2 activation aliases; at fine_grid_resolution the error is below 1e-5 (the layers'
    # documented bound), as for energy and forces.
    R = random_rotation(torch.Generator().manual_seed(3))
    model = conservative(lmax=2, mmax=2, grid_resolution=fine_grid_resolution(2))
    atoms = crystals()[2]
    numbers = torch.tensor(atoms.numbers)
    f = lambda pos, cell: model(pos=pos, cell=cell, atomic_numbers=numbers)  # noqa: E731
    assert_equivariant(f, [torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)[None]], ["vector", "vector"],
                       {"energy": None, "forces": "vector", "stress": "matrix"}, R, 1e-5)


def test_compression_gives_negative_stress_and_positive_pressure():
    # ASE's convention: a crystal squeezed below its equilibrium pushes back (sigma < 0, P > 0).
    model = conservative()
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    volumes, energies, pressures = [], [], []
    for scale in (0.999, 1.0, 1.001):
        f = fields([atoms.copy()])
        f["pos"], f["cell"] = f["pos"] * scale, f["cell"] * scale
        out = model(**f)
        volumes.append(float(torch.linalg.det(f["cell"][0])))
        energies.append(float(out["energy"][0]))
        pressures.append(-float(torch.diagonal(out["stress"][0]).mean()))
    # P = -dE/dV for a uniform scaling: the central difference of the energies agrees
    dEdV = (energies[2] - energies[0]) / (volumes[2] - volumes[0])
    assert math.isclose(pressures[1], -dEdV, rel_tol=1e-4)


def test_a_molecule_has_no_stress_and_a_mixed_batch_marks_it_nan():
    model = conservative()
    assert model.output_names == ("energy", "forces", "stress")
    water = molecule("H2O")
    out = model(pos=torch.tensor(water.positions), atomic_numbers=torch.tensor(water.numbers))
    assert "stress" not in out  # no cell, no volume: no stress rather than a zero
    crystal = crystals()[0]
    water.cell = np.zeros((3, 3))
    water.pbc = False
    both = model(**fields([crystal, water]))
    alone = model(**fields([crystal]))
    torch.testing.assert_close(both["stress"][0], alone["stress"][0], rtol=0, atol=1e-14)
    assert torch.isnan(both["stress"][1]).all()
    assert EquiformerV2(EquiformerV2Config(**SMALL)).output_names == ("energy", "forces")


def test_training_mode_keeps_the_graph_of_the_stress():
    model = conservative()
    f = fields(crystals()[:2])
    model.train()
    out = model(**f)
    assert out["stress"].requires_grad and out["forces"].requires_grad
    (out["stress"].square().sum() + out["energy"].sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads)
    model.eval()
    with torch.no_grad():
        out = model(**f)
    assert out["stress"].grad_fn is None and out["energy"].grad_fn is None
