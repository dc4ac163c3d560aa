"""The calculator's stress: ASE's conventions (Voigt order, sign, units), agreement with ASE's
own numerical stress, and PropertyNotImplementedError where there is no stress."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress
from ase.stress import voigt_6_to_full_3x3_stress

from so2nn.calculators import So2nnCalculator
from so2nn.models import EquiformerV2, EquiformerV2Config

TINY = dict(max_neighbors=100, max_num_elements=30, energy_std=10.0)  # changes to EquiformerV2Config.tiny()


def tiny_model(seed=0, **changes):
    torch.manual_seed(seed)
    return EquiformerV2(EquiformerV2Config.tiny(**{**TINY, "direct_forces": False, **changes})).double().eval()


def sheared_crystal():
    """A rattled triclinic Cu3O cell: no distance within the finite-difference step of the cutoff."""
    atoms = Atoms("Cu3O", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5]],
                  cell=[[3.7, 0.2, 0.0], [0.3, 3.6, 0.1], [-0.2, 0.4, 3.8]], pbc=True)
    atoms.rattle(0.05, seed=2)
    return atoms


def test_stress_is_the_models_in_voigt_order_and_matches_ase_numerical_stress():
    model = tiny_model()
    atoms = sheared_crystal()
    atoms.calc = calc = So2nnCalculator(model)
    assert "stress" in calc.implemented_properties
    voigt = atoms.get_stress()
    full = atoms.get_stress(voigt=False)
    assert voigt.shape == (6,) and full.shape == (3, 3)
    np.testing.assert_array_equal(voigt_6_to_full_3x3_stress(voigt), full)
    out = model(pos=torch.tensor(atoms.positions), atomic_numbers=torch.tensor(atoms.numbers),
                cell=torch.tensor(atoms.cell.array)[None])
    np.testing.assert_allclose(full, out["stress"][0].detach().numpy(), rtol=0, atol=1e-14)
    s = out["stress"][0].detach().numpy()  # ASE's Voigt order: xx yy zz yz xz xy
    np.testing.assert_allclose(voigt, [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], rtol=0, atol=1e-14)
    # ASE strains the cell with scale_atoms and differences the energy: same sign, units, volume
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.abs(numerical).max() > 1e-5
    np.testing.assert_allclose(voigt, numerical, rtol=0, atol=1e-6 * np.abs(numerical).max())


def test_pressure_of_a_compressed_crystal_is_positive_under_ase_conventions():
    # For a uniform scaling, P = -dE/dV: the calculator's pressure agrees with the energies'.
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.02, seed=1)
    atoms.calc = So2nnCalculator(tiny_model(seed=3))
    volumes, energies = [], []
    for scale in (0.999, 1.001):
        strained = atoms.copy()
        strained.set_cell(atoms.cell * scale, scale_atoms=True)
        strained.calc = atoms.calc
        volumes.append(strained.get_volume())
        energies.append(strained.get_potential_energy())
    pressure = -atoms.get_stress()[:3].mean()
    assert pressure == pytest.approx(-(energies[1] - energies[0]) / (volumes[1] - volumes[0]), rel=1e-4)


def test_no_stress_without_a_volume_or_from_a_model_without_stress():
    water = molecule("H2O")
    water.calc = So2nnCalculator(tiny_model())
    water.get_forces()  # energy and forces are fine
    with pytest.raises(PropertyNotImplementedError, match="stress needs a periodic cell with three vectors"):
        water.get_stress()
    flat = fcc111("Cu", (2, 2, 2), vacuum=5.0)  # pbc (True, True, False)
    flat.cell[2] = 0.0
    flat.calc = So2nnCalculator(tiny_model())
    with pytest.raises(PropertyNotImplementedError, match="a cell of rank 2"):
        flat.get_stress()
    direct = So2nnCalculator(tiny_model(direct_forces=True))
    assert "stress" not in direct.implemented_properties
    crystal = sheared_crystal()
    crystal.calc = direct
    with pytest.raises(PropertyNotImplementedError):
        crystal.get_stress()
