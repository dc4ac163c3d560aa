import json

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.optimize import BFGS
from scipy.optimize import minimize_scalar

from so2nn.data import LmdbDataset, data_to_atoms, emt, open_dataset, target_statistics

SMALL = dict(train_systems=4, val_systems=2, frames_per_system=4, relax_steps=2, seed=3)  # as conftest's emt_small


def test_frames_are_laid_out_as_oc20(emt_small):
    _, train, _ = emt_small
    dataset = open_dataset(train)
    assert isinstance(dataset, LmdbDataset) and len(dataset) == 16
    for k in range(len(dataset)):
        item = dataset[k]
        assert item.pbc.tolist() == [[True, True, True]]
        assert set(item.tags.tolist()) == {0, 1, 2}
        assert torch.equal(item.fixed, item.tags == 0)  # OC20 fixes the subsurface atoms
        surface_z = item.pos[item.tags == 1, 2].min()
        assert bool((item.pos[item.tags == 0, 2] < surface_z).all())  # subsurface below the surface
        assert bool((item.pos[item.tags == 2, 2] > surface_z).all())  # adsorbate above it
        metals = set(item.atomic_numbers[item.tags < 2].tolist())
        assert len(metals) == 1 and metals <= {29, 47, 79, 28, 46, 78, 13}
        assert set(item.atomic_numbers[item.tags == 2].tolist()) <= {1, 6, 7, 8}
        assert item.cell[0, 2, 2] > item.pos[:, 2].max() - item.pos[:, 2].min() + 8.0  # vacuum along z
    assert [dataset[k].fid for k in range(4)] == [0, 1, 2, 3]


def test_targets_are_emt_minus_the_reference(emt_small):
    _, train, val = emt_small
    for path in (train, val):
        dataset = open_dataset(path)
        for k in (0, 3, len(dataset) - 1):  # relaxation frames and a rattled one
            item = dataset[k]
            atoms = data_to_atoms(item)
            atoms.calc = EMT()
            expected = atoms.get_potential_energy() - emt.reference_energy(atoms.numbers)
            assert abs(float(item.energy) - expected) < 1e-5 * max(1.0, abs(expected))
            np.testing.assert_allclose(item.forces.numpy(), atoms.get_forces(apply_constraint=False), atol=2e-4)


def test_relaxation_frames_lower_the_energy(emt_small):
    dataset = open_dataset(emt_small[1])
    energies = [float(dataset[k].energy) for k in range(3)]  # fids 0..2 of system 0: the trajectory
    assert energies[2] < energies[0]


def test_split_is_by_system(emt_small):
    _, train, val = emt_small
    train_sids = {item.sid for item in open_dataset(train)}
    val_sids = {item.sid for item in open_dataset(val)}
    assert train_sids == {0, 1, 2, 3} and val_sids == {4, 5}


def test_cache_is_reused_not_rebuilt(emt_small, monkeypatch):
    root, train, val = emt_small
    before = (train.stat().st_mtime_ns, val.stat().st_mtime_ns)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a complete dataset")

    monkeypatch.setattr(emt, "generate_system", fail)
    assert emt.make_dataset(root, **SMALL) == (train, val)
    assert (train.stat().st_mtime_ns, val.stat().st_mtime_ns) == before


def test_other_parameters_get_another_folder(emt_small, tmp_path):
    root, train, _ = emt_small
    other, _ = emt.make_dataset(root, **{**SMALL, "train_systems": 1, "val_systems": 1, "frames_per_system": 2})
    assert other.parent != train.parent and len(LmdbDataset(other)) == 2


def test_interrupted_build_is_never_taken_for_complete(tmp_path, monkeypatch):
    real = emt.generate_system
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # in the middle of writing train
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(emt, "generate_system", interrupted)
    with pytest.raises(KeyboardInterrupt):
        emt.make_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the temporary one is left

    monkeypatch.setattr(emt, "generate_system", real)
    train, val = emt.make_dataset(tmp_path, **SMALL)
    assert len(LmdbDataset(train)) == 16 and len(LmdbDataset(val)) == 8


def test_an_incomplete_folder_is_rebuilt(tmp_path):
    train, val = emt.make_dataset(tmp_path, **{**SMALL, "train_systems": 1, "val_systems": 1})
    manifest = json.loads((train.parent / "manifest.json").read_text())
    (train.parent / "manifest.json").unlink()  # as if killed before the manifest was written
    val.unlink()
    again = emt.make_dataset(tmp_path, **{**SMALL, "train_systems": 1, "val_systems": 1})
    assert again == (train, val) and len(LmdbDataset(val)) == manifest["val_frames"] == 4


def test_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="metals must be a non-empty selection"):
        emt.make_dataset(tmp_path, metals=["Fe"])
    with pytest.raises(ValueError, match="train_systems must be a positive int"):
        emt.make_dataset(tmp_path, train_systems=0)
    with pytest.raises(ValueError, match="no EMT reference energy for element Fe"):
        emt.reference_energy([26])


def test_element_references_are_emts():
    """The constants are what their definition gives: the fcc crystal per atom at EMT's lattice
    constant, and OC20's gas-phase scheme from EMT-relaxed H2, H2O, CO and N2."""

    def relaxed(atoms):
        atoms.calc = EMT()
        BFGS(atoms, logfile=None).run(fmax=1e-5, steps=500)
        return atoms.get_potential_energy()

    def crystal(metal):
        def energy(a):
            atoms = bulk(metal, "fcc", a=a)
            atoms.calc = EMT()
            return atoms.get_potential_energy()

        a0 = bulk(metal, "fcc").cell.cellpar()[0] * 2**0.5
        return minimize_scalar(energy, bracket=(0.97 * a0, a0, 1.03 * a0), tol=1e-6).fun

    gas = {name: relaxed(molecule(name)) for name in ("H2", "H2O", "CO", "N2")}
    expected = {"H": gas["H2"] / 2, "O": gas["H2O"] - gas["H2"], "N": gas["N2"] / 2}
    expected["C"] = gas["CO"] - expected["O"]
    expected.update({metal: crystal(metal) for metal in emt.METALS})
    assert set(expected) == set(emt.ELEMENT_REFERENCES)
    for element, value in expected.items():
        assert abs(emt.ELEMENT_REFERENCES[element] - value) < 2e-5, element


def test_target_statistics_match_a_direct_computation(emt_small):
    dataset = open_dataset(emt_small[1])
    stats = target_statistics(dataset)
    energies = torch.cat([item.energy for item in dataset]).double()
    forces = torch.cat([item.forces for item in dataset]).double()
    assert stats["num_frames"] == 16 and stats["num_atoms"] == forces.shape[0]
    assert abs(stats["energy_mean"] - energies.mean().item()) < 1e-9
    assert abs(stats["energy_std"] - energies.std().item()) < 1e-9
    assert abs(stats["forces_rms"] - forces.square().mean().sqrt().item()) < 1e-9
    free = target_statistics(dataset, free_atoms_only=True)
    free_forces = torch.cat([item.forces[~item.fixed] for item in dataset]).double()
    assert abs(free["forces_rms"] - free_forces.square().mean().sqrt().item()) < 1e-9


def test_generation_shows_its_progress(tmp_path, capsys):
    """A generation that takes a while says where it is (on standard error), one system at a time;
    a cached dataset says nothing."""
    emt.make_dataset(tmp_path, train_systems=2, val_systems=1, frames_per_system=2, progress=True)
    err = capsys.readouterr().err
    assert "generating emt-s2ef-" in err and "3/3" in err, err
    emt.make_dataset(tmp_path, train_systems=2, val_systems=1, frames_per_system=2, progress=True)
    assert capsys.readouterr().err == ""
