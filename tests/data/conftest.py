import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc100, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from so2nn.data import make_emt_dataset


@pytest.fixture(scope="session")
def emt_small(tmp_path_factory):
    """A small EMT dataset, generated once for the session: (root, train path, val path)."""
    root = tmp_path_factory.mktemp("emt")
    train, val = make_emt_dataset(root, train_systems=4, val_systems=2, frames_per_system=4, relax_steps=2, seed=3)
    return root, train, val


def make_oc20_frames(count: int = 3, seed: int = 0) -> list:
    """OC20-like frames with EMT results: slab + adsorbate, tags 0/1/2, tag-0 atoms fixed,
    positions inside the cell (so wrapping leaves them), energies and forces attached."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        slab = (fcc111 if k % 2 == 0 else fcc100)(["Cu", "Pt", "Au"][k % 3], (2, 2, 3), vacuum=5.0, periodic=True)
        layer = slab.get_tags()
        add_adsorbate(slab, "O", 1.5, "ontop")
        tags = np.concatenate([np.where(layer == 1, 1, 0), [2]])
        slab.set_tags(tags)
        slab.set_constraint(FixAtoms(mask=tags == 0))
        slab.positions[tags > 0] += rng.normal(0, 0.05, (int((tags > 0).sum()), 3))
        slab.calc = EMT()
        energy, forces = slab.get_potential_energy(), slab.get_forces(apply_constraint=False)
        slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces, free_energy=energy - 0.01)
        frames.append(slab)
    return frames


def check_matches_atoms(item, atoms, energy, sid=None, fid=None):
    """Every canonical field of ``item`` against the ASE frame it came from."""
    n = len(atoms)
    assert item.pos.dtype == torch.float32 and item.pos.shape == (n, 3)
    # positions come wrapped into the cell: the same atoms up to lattice translations
    cell = np.array(atoms.cell)
    shift = np.linalg.solve(cell.T, (item.pos.numpy() - atoms.positions).T).T
    assert np.allclose(shift[:, atoms.pbc], np.round(shift[:, atoms.pbc]), atol=1e-5)
    fractional = np.linalg.solve(cell.T, item.pos.numpy().astype(float).T).T
    assert (fractional[:, atoms.pbc] > -1e-5).all() and (fractional[:, atoms.pbc] < 1 + 1e-5).all()
    assert item.cell.dtype == torch.float32 and item.cell.shape == (1, 3, 3)
    np.testing.assert_allclose(item.cell[0].numpy(), np.array(atoms.cell), atol=2e-5)
    assert item.pbc.dtype == torch.bool and item.pbc.tolist() == [list(map(bool, atoms.pbc))]
    assert item.atomic_numbers.dtype == torch.long and item.atomic_numbers.tolist() == atoms.numbers.tolist()
    assert item.natoms == n
    assert item.tags.dtype == torch.long and item.tags.tolist() == atoms.get_tags().tolist()
    fixed = np.zeros(n, dtype=bool)
    for constraint in atoms.constraints:
        fixed[constraint.index] = True
    assert item.fixed.dtype == torch.bool and item.fixed.tolist() == fixed.tolist()
    assert item.energy.dtype == torch.float32 and item.energy.shape == (1,)
    assert abs(float(item.energy) - energy) < 1e-5 * max(1.0, abs(energy))
    assert item.forces.dtype == torch.float32 and item.forces.shape == (n, 3)
    np.testing.assert_allclose(item.forces.numpy(), atoms.get_forces(apply_constraint=False), atol=2e-5)
    if sid is not None:
        assert item.sid == sid
    if fid is not None:
        assert item.fid == fid


@pytest.fixture
def oc20_frames():
    return make_oc20_frames


@pytest.fixture
def assert_matches_atoms():
    return check_matches_atoms
