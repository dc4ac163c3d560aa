"""Stress in the data path: every reader returns ``stress [1, 3, 3]`` in eV/A^3 with ASE's sign,
from files written by the formats' own writers, and the embedded bulk dataset carries EMT's."""

import importlib.util

import ase.calculators.singlepoint
import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from so2nn.data import (
    AseDBDataset,
    DataFormatError,
    LmdbDataset,
    S2EFExtxyzDataset,
    canonical_data,
    data_to_atoms,
    open_dataset,
    write_lmdb,
    write_s2ef_extxyz,
)
from so2nn.data.emt import make_bulk_dataset, reference_energy


def strained_crystals(count: int = 3, seed: int = 0) -> list:
    """Triclinic and cubic crystals, strained and rattled, with EMT energy, forces and stress."""
    rng = np.random.default_rng(seed)
    crystals = []
    for k in range(count):
        atoms = bulk(["Cu", "Pt", "Al"][k % 3], cubic=k % 2 == 1).repeat((2, 2, 1))
        strain = rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_forces(), atoms.get_stress()
        crystals.append(atoms)
    return crystals


def full_stress(atoms) -> np.ndarray:
    return voigt_6_to_full_3x3_stress(atoms.get_stress())


@pytest.mark.parametrize("suffix", [".db", ".json", pytest.param(".aselmdb", marks=pytest.mark.skipif(
    importlib.util.find_spec("ase_db_backends") is None, reason="ase-db-backends is not installed"))])
def test_ase_database_rows_give_their_stress(tmp_path, suffix):
    crystals = strained_crystals()
    path = tmp_path / f"bulk{suffix}"
    with ase.db.connect(str(path)) as db:
        for atoms in crystals:
            db.write(atoms)
    dataset = AseDBDataset(path)
    for item, atoms in zip(dataset, crystals):
        assert item.stress.dtype == torch.float32 and item.stress.shape == (1, 3, 3)
        np.testing.assert_allclose(item.stress[0].numpy(), full_stress(atoms), rtol=1e-5, atol=1e-8)
    # a row without stress (a molecule, say) has no stress field, not a zero one
    molecule = crystals[0].copy()
    molecule.calc = ase.calculators.singlepoint.SinglePointCalculator(
        molecule, energy=crystals[0].get_potential_energy(), forces=crystals[0].get_forces())
    with ase.db.connect(str(tmp_path / f"plain{suffix}")) as db:
        db.write(molecule)
    assert "stress" not in AseDBDataset(tmp_path / f"plain{suffix}")[0]


def _sidecar(path, count):
    path.with_suffix(".txt").write_text("".join(f"random{i},frame0,0.0\n" for i in range(count)))


def test_extxyz_header_stress_as_ase_writes_it(tmp_path):
    crystals = strained_crystals()
    path = tmp_path / "0.extxyz"
    ase.io.write(path, crystals, format="extxyz")  # ASE writes stress= as 9 values
    _sidecar(path, len(crystals))
    for item, atoms in zip(S2EFExtxyzDataset(path), crystals):
        np.testing.assert_allclose(item.stress[0].numpy(), full_stress(atoms), rtol=1e-5, atol=1e-8)
    # so2nn's own OC20-style writer keeps it too
    own, _ = write_s2ef_extxyz(tmp_path / "own" / "0.extxyz", crystals, [0, 1, 2], [0, 0, 0], [0.0] * 3)
    for item, atoms in zip(S2EFExtxyzDataset(own), crystals):
        np.testing.assert_allclose(item.stress[0].numpy(), full_stress(atoms), rtol=1e-5, atol=1e-8)


def test_extxyz_virial_becomes_minus_virial_over_volume(tmp_path):
    """A virial W in the header (eV) is ASE's stress times -V: reading it gives EMT's stress back."""
    crystals = strained_crystals()
    frames = []
    for atoms in crystals:
        frame = atoms.copy()
        frame.info["virial"] = -full_stress(atoms) * atoms.get_volume()
        frame.calc = ase.calculators.singlepoint.SinglePointCalculator(
            frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
        frames.append(frame)
    path = tmp_path / "0.extxyz"
    ase.io.write(path, frames, format="extxyz")
    assert "virial=" in path.read_text() and "stress=" not in path.read_text()
    _sidecar(path, len(frames))
    for item, atoms in zip(S2EFExtxyzDataset(path), crystals):
        np.testing.assert_allclose(item.stress[0].numpy(), atoms.get_stress(voigt=False), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("form", ["voigt", "full9", "full33", "batched"])
def test_lmdb_stress_fields_in_every_form(tmp_path, form):
    atoms = strained_crystals(1)[0]
    voigt, full = atoms.get_stress(), full_stress(atoms)
    value = {"voigt": voigt, "full9": full.reshape(9), "full33": full, "batched": full[None]}[form]
    record = Data(pos=torch.tensor(atoms.positions), atomic_numbers=torch.tensor(atoms.numbers),
                  cell=torch.tensor(atoms.cell.array).view(1, 3, 3), energy=0.0,
                  forces=torch.tensor(atoms.get_forces()), stress=torch.tensor(value))
    write_lmdb(tmp_path / "data.lmdb", [record] * 3)
    dataset = open_dataset(tmp_path / "data.lmdb")
    np.testing.assert_allclose(dataset[0].stress[0].numpy(), full, rtol=1e-6, atol=1e-9)
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch.stress.shape == (3, 3, 3) and batch.energy.shape == (3,)


def _record(**extra):
    cell = 4.0 * np.eye(3)
    return {"pos": [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0]], "atomic_numbers": [29, 29], "cell": cell, "energy": 0.0,
            "forces": np.zeros((2, 3)), **extra}


def test_malformed_stress_raises_naming_the_field_and_record():
    with pytest.raises(DataFormatError, match=r"data.lmdb: record 4: field 'stress' is not symmetric"):
        canonical_data(_record(stress=[[1.0, 0.5, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), "data.lmdb: record 4")
    with pytest.raises(DataFormatError, match=r"record 4: field 'stress' must have shape .*\[6\] \(Voigt"):
        canonical_data(_record(stress=[1.0, 2.0, 3.0]), "record 4")
    with pytest.raises(DataFormatError, match=r"record 4: field 'virial' needs a 3-d cell"):
        canonical_data({**_record(virial=np.eye(3)), "cell": None}, "record 4")
    with pytest.raises(DataFormatError, match=r"record 4: field 'stress' contains NaN"):
        canonical_data(_record(stress=[np.nan] * 6), "record 4")
    with pytest.raises(DataFormatError, match=r"record 4: has both 'stress' and 'virial'"):
        canonical_data(_record(stress=np.zeros(6), virial=np.zeros(9)), "record 4")


def test_stress_survives_data_to_atoms():
    atoms = strained_crystals(1)[0]
    item = canonical_data(_record(stress=atoms.get_stress()), "x")
    np.testing.assert_allclose(data_to_atoms(item).get_stress(), atoms.get_stress(), rtol=1e-6, atol=1e-9)


def test_bulk_dataset_is_emt_deterministic_and_cached(tmp_path):
    options = dict(train_systems=3, val_systems=1, frames_per_system=3, seed=5)
    train, val = make_bulk_dataset(tmp_path / "a", **options)
    again, _ = make_bulk_dataset(tmp_path / "b", **options)
    first, second = LmdbDataset(train), LmdbDataset(again)
    assert len(first) == 9 and len(LmdbDataset(val)) == 3
    for a, b in zip(first, second):
        for key in ("pos", "cell", "energy", "forces", "stress"):
            assert torch.equal(a[key], b[key]), key
    assert make_bulk_dataset(tmp_path / "a", **options) == (train, val)  # reused
    symbols = set()
    for item in first:  # the targets are EMT's (energy referenced), stress in ASE's convention
        atoms = data_to_atoms(item)
        atoms.calc = EMT()
        np.testing.assert_allclose(item.stress[0].numpy(), full_stress(atoms), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(item.forces.numpy(), atoms.get_forces(), rtol=1e-4, atol=1e-5)
        assert abs(float(item.energy) - (atoms.get_potential_energy() - reference_energy(atoms.numbers))) < 1e-4
        assert not bool(item.fixed.any()) and bool(item.pbc.all())
        symbols |= set(atoms.get_chemical_symbols())
    strains = [float(item.stress.abs().max()) for item in first]
    assert max(strains) > 1e-3 and len(symbols) > 1  # strained frames carry real stress; several metals
    with pytest.raises(ValueError, match="metals must be"):
        make_bulk_dataset(tmp_path, metals=["Fe"])
