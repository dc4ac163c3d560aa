"""Files that ASE reads, as users bring their DFT data: extxyz with MACE-style keys, ASE
trajectories, VASP's vasprun.xml and OUTCAR; directories and globs of them; errors that name
file, frame and key."""

import pickle

import numpy as np
import pytest
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from dft_files import emt_frames, write_outcar, write_ref_extxyz, write_traj, write_vasprun

from so2nn.data import (
    AseFileDataset,
    DataFormatError,
    LmdbDataset,
    open_dataset,
    split_dataset,
    target_statistics,
    write_lmdb,
)


def full(voigt) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = voigt
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_extxyz_with_keys_reads_every_field(tmp_path, assert_matches_atoms):
    frames = emt_frames(6, seed=0)
    path = write_ref_extxyz(tmp_path / "my_dft.extxyz", frames)  # no .txt sidecar: not OC20's reader
    dataset = open_dataset(path, energy_key="REF_energy", forces_key="REF_forces")
    assert type(dataset) is AseFileDataset and len(dataset) == 6
    for i, atoms in enumerate(frames):
        item = dataset[i]
        assert_matches_atoms(item, atoms, atoms.get_potential_energy(), sid=i, fid=0)
        assert "stress" not in item  # no stress key, no calculator: energies and forces only
    slab = dataset[2]  # tags and FixAtoms (written as extxyz's tags and move_mask columns) come back
    assert slab.tags.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2] and slab.fixed.sum() == 4
    # the bulk frames alone, with their stress (eV/A^3, ASE's sign)
    bulk_frames = emt_frames(4, seed=1, slabs=False)
    stressed = open_dataset(write_ref_extxyz(tmp_path / "bulk.extxyz", bulk_frames), energy_key="REF_energy",
                            forces_key="REF_forces", stress_key="REF_stress")
    for item, atoms in zip(stressed, bulk_frames):
        np.testing.assert_allclose(item.stress[0].numpy(), full(atoms.get_stress()), atol=1e-7)
        assert not item.fixed.any() and not item.tags.any()  # no constraint, no tags: every atom free


def test_virial_converts_to_stress(tmp_path):
    frames = emt_frames(3, seed=2, slabs=False)
    for atoms in frames:
        atoms.info["REF_virial"] = -full(atoms.get_stress()) * atoms.get_volume()  # eV
    path = write_ref_extxyz(tmp_path / "virial.extxyz", frames)
    dataset = open_dataset(path, energy_key="REF_energy", forces_key="REF_forces", virial_key="REF_virial")
    for item, atoms in zip(dataset, frames):
        np.testing.assert_allclose(item.stress[0].numpy(), full(atoms.get_stress()), atol=1e-7)


def test_trajectory_with_calculator_results(tmp_path, assert_matches_atoms):
    frames = emt_frames(6, seed=3)
    dataset = open_dataset(write_traj(tmp_path / "run.traj", frames))
    assert len(dataset) == 6
    for i, atoms in enumerate(frames):
        item = dataset[i]
        assert_matches_atoms(item, atoms, atoms.get_potential_energy(), sid=i)
        if "stress" in atoms.calc.results:
            np.testing.assert_allclose(item.stress[0].numpy(), full(atoms.get_stress()), atol=1e-7)
        else:
            assert "stress" not in item
    assert dataset[5].fixed.sum() == 4  # the slab's FixAtoms, stored in the trajectory
    # a data loader's worker gets a copy that opens the file again
    assert float(pickle.loads(pickle.dumps(dataset))[4].energy) == float(dataset[4].energy)


def test_vasprun_in_ase_units(tmp_path):
    frames = []
    for k in range(3):
        atoms = bulk("Cu", cubic=True)
        atoms.set_cell(atoms.cell * (1 + 0.01 * k), scale_atoms=True)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                   "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    # VASP writes the stress in kBar, pressure positive: the reader gives ASE's eV/A^3, tension positive
    dataset = open_dataset(write_vasprun(tmp_path / "vasprun.xml", frames))
    assert len(dataset) == 3
    for item, atoms in zip(dataset, frames):
        assert abs(float(item.energy) - atoms.get_potential_energy()) < 1e-5
        np.testing.assert_allclose(item.forces.numpy(), atoms.get_forces(), atol=1e-6)
        np.testing.assert_allclose(item.stress[0].numpy(), full(atoms.get_stress()), atol=1e-7)
        assert np.abs(atoms.get_stress()).max() > 1e-3  # a stress worth comparing


def relaxation_steps(count: int) -> list:
    """The ionic steps of one slab relaxation as a DFT code writes them: O on Cu(111), the bottom
    layer fixed, EMT's energy, forces and stress at each step."""
    slab = fcc111("Cu", (2, 2, 3), vacuum=5.0, periodic=True)
    add_adsorbate(slab, "O", 1.6, "fcc")
    del slab.info["adsorbate_info"]  # a dict, which extxyz does not write
    slab.set_constraint(FixAtoms(mask=slab.get_tags() == 3))
    frames = []
    for k in range(count):
        atoms = slab.copy()
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(apply_constraint=False),
                       stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def assert_steps_as_ase_reads_them(dataset, path):
    """Each step read alone is what ase.io.read gives for the whole file: positions, cell,
    constraints and every result, to the last bit."""
    import ase.io

    whole = ase.io.read(path, index=":")
    assert len(dataset) == len(whole)
    for index, want in enumerate(whole):
        got = dataset.read_atoms(index)
        assert np.array_equal(got.numbers, want.numbers) and np.array_equal(got.positions, want.positions)
        assert np.array_equal(got.cell, want.cell)
        assert [repr(c) for c in got.constraints] == [repr(c) for c in want.constraints]
        assert sorted(got.calc.results) == sorted(want.calc.results)
        for name, value in want.calc.results.items():
            assert np.array_equal(np.asarray(got.calc.results[name]), np.asarray(value)), name


def test_outcar_in_ase_units_with_the_fixed_atoms_of_its_poscar(tmp_path):
    import ase.io

    frames = relaxation_steps(4)
    (tmp_path / "relax").mkdir()
    path = write_outcar(tmp_path / "relax" / "OUTCAR", frames)
    ase.io.write(tmp_path / "relax" / "POSCAR", frames[0], format="vasp")  # selective dynamics: F F F
    dataset = open_dataset(path)
    assert type(dataset) is AseFileDataset and dataset.formats == ["vasp-out"] and len(dataset) == 4
    # VASP writes the stress in kB, pressure positive: the reader gives ASE's eV/A^3, tension positive
    for item, atoms in zip(dataset, frames):
        assert abs(float(item.energy) - atoms.get_potential_energy()) < 1e-5
        np.testing.assert_allclose(item.forces.numpy(), atoms.get_forces(apply_constraint=False), atol=1e-5)
        np.testing.assert_allclose(item.stress[0].numpy(), full(atoms.get_stress()), atol=1e-7)
        assert item.fixed.tolist() == (atoms.get_tags() == 3).tolist()  # the POSCAR's FixAtoms
    assert np.abs(frames[0].get_stress()).max() > 1e-3 and dataset[0].fixed.sum() == 4
    assert_steps_as_ase_reads_them(dataset, path)
    assert float(pickle.loads(pickle.dumps(dataset))[3].energy) == float(dataset[3].energy)


def test_vasp_files_are_indexed_and_each_step_parsed_when_read(tmp_path):
    """A long run's OUTCAR or vasprun.xml is not parsed whole: a damaged step raises only when it
    is read, naming it; a last step cut off (the run still going) is left out, as ASE leaves it;
    a compressed file is indexed the same way."""
    import gzip

    frames = relaxation_steps(5)
    files = {"vasp-out": (write_outcar(tmp_path / "OUTCAR", frames), "POSITION"),
             "vasp-xml": (write_vasprun(tmp_path / "vasprun.xml", frames), "<calculation>")}
    for name, (path, marker) in files.items():
        text = path.read_text()
        parts = text.split(marker)  # what comes before the first step, then one part per step
        assert len(parts) == 6, name
        parts[4] = parts[4].replace("0.", "x.", 1)  # a number of step 3 that no parser reads
        path.write_text(marker.join(parts))
        dataset = AseFileDataset(path)
        assert dataset.formats == [name] and len(dataset) == 5
        assert abs(float(dataset[4].energy) - frames[4].get_potential_energy()) < 1e-5
        with pytest.raises(DataFormatError, match=rf"{path.name}: frame 3 cannot be parsed"):
            dataset[3]
        path.write_text(text[:text.rindex(marker) + 60])  # inside the last step's positions
        cut = AseFileDataset(path)
        assert len(cut) == 4
        assert_steps_as_ase_reads_them(cut, path)
        path.write_text(text)
        packed = tmp_path / "packed" / f"{path.name}.gz"
        packed.parent.mkdir(exist_ok=True)
        packed.write_bytes(gzip.compress(text.encode()))
        compressed = AseFileDataset(packed)
        assert compressed.formats == [name]
        assert_steps_as_ase_reads_them(compressed, path)


def test_directories_and_globs(tmp_path):
    (tmp_path / "runs").mkdir()
    write_ref_extxyz(tmp_path / "runs" / "2.extxyz", emt_frames(2, seed=4))
    write_ref_extxyz(tmp_path / "runs" / "10.extxyz", emt_frames(3, seed=5))
    (tmp_path / "runs" / "README.md").write_text("how the data was made")  # not data: skipped
    dataset = open_dataset(tmp_path / "runs", energy_key="REF_energy", forces_key="REF_forces")
    assert [p.name for p in dataset.files] == ["2.extxyz", "10.extxyz"] and len(dataset) == 5
    for k in range(2):
        (tmp_path / f"calc{k}").mkdir()
        write_traj(tmp_path / f"calc{k}" / "relax.traj", emt_frames(2 + k, seed=6 + k))
    matched = open_dataset(str(tmp_path / "calc*" / "relax.traj"))
    assert len(matched.files) == 2 and len(matched) == 5
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_dataset(str(tmp_path / "calc*" / "OUTCAR"))
    lmdb = tmp_path / "oc20.lmdb"
    write_lmdb(lmdb, [open_dataset(tmp_path / "calc0" / "relax.traj")[0]])
    assert type(open_dataset(lmdb)) is LmdbDataset
    with pytest.raises(DataFormatError, match="energy_key apply to files read through ASE"):
        open_dataset(lmdb, energy_key="REF_energy")


def test_a_format_named_where_ase_cannot_tell_it(tmp_path):
    """``format=`` (``--data-format``) reads a file, or a pattern's files, of any name."""
    frames = relaxation_steps(2)
    path = tmp_path / "frames.bin"
    write_ref_extxyz(tmp_path / "frames.extxyz", frames).rename(path)
    keys = dict(energy_key="REF_energy", forces_key="REF_forces")
    with pytest.raises(DataFormatError, match=r"frames\.bin: unknown dataset file type .* with format='\.\.\.'"):
        open_dataset(path, **keys)
    dataset = open_dataset(path, format="extxyz", **keys)
    assert type(dataset) is AseFileDataset and len(dataset) == 2
    for k in range(2):
        (tmp_path / f"run{k}").mkdir()
        write_outcar(tmp_path / f"run{k}" / "relax.log", relaxation_steps(2 + k))
    pattern = str(tmp_path / "run*" / "relax.log")
    with pytest.raises(DataFormatError, match=r"relax\.log: matched by .* but of no dataset format"):
        open_dataset(pattern)
    assert len(open_dataset(pattern, format="vasp-out")) == 5
    # a format that reads nothing from the file says so, rather than giving an empty dataset
    with pytest.raises(DataFormatError, match=r"relax\.log: ASE read no frames from it as gaussian-out$"):
        open_dataset(tmp_path / "run0" / "relax.log", format="gaussian-out")


def test_stress_on_some_frames_only_is_named_and_can_be_left_out(tmp_path):
    """An extxyz file as ASE writes calculator results: ``stress=`` on the bulk frames, none on
    the slabs. The statistics stop at the first frame that differs, naming it and the way out."""
    import ase.io

    frames = emt_frames(6, seed=11)  # every third frame a slab without stress
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, frames)
    dataset = open_dataset(path)
    assert "stress" in dataset[0] and "stress" not in dataset[2]
    with pytest.raises(DataFormatError, match=r"mixed\.extxyz: frame 2: has no stress but .*mixed\.extxyz: frame 0 "
                                              r"has one: .* read_stress=False, --no-stress on the command line"):
        target_statistics(dataset)
    train, _ = split_dataset(dataset, valid_fraction=0.2, seed=0)  # named through the subset, by the file's frames
    first_slab = next(k for k in train.indices if k % 3 == 2)
    with pytest.raises(DataFormatError, match=rf"mixed\.extxyz: frame {first_slab}: has no stress"):
        target_statistics(train)
    plain = open_dataset(path, read_stress=False)
    assert not any("stress" in item for item in plain) and target_statistics(plain)["num_frames"] == 6
    assert float(plain[0].energy) == float(dataset[0].energy)
    with pytest.raises(DataFormatError, match="read_stress=False reads no stress: give no stress key"):
        open_dataset(path, read_stress=False, stress_key="REF_stress")
    lmdb = tmp_path / "bulk.lmdb"
    write_lmdb(lmdb, [dataset[0], dataset[1]])
    with pytest.raises(DataFormatError, match="read_stress apply to files read through ASE"):
        open_dataset(lmdb, read_stress=False)
    assert len(open_dataset(lmdb, read_stress=True)) == 2


def test_extxyz_frames_are_parsed_when_read(tmp_path):
    path = write_ref_extxyz(tmp_path / "big.extxyz", emt_frames(4, seed=7, slabs=False))
    lines = path.read_text().splitlines()
    lines[3 * 6 + 2] = "Cu not a number 0 0 0 0 0"  # an atom line of frame 3 (4 atoms + 2 lines a frame)
    path.write_text("\n".join(lines) + "\n")
    dataset = AseFileDataset(path, energy_key="REF_energy", forces_key="REF_forces")  # indexed, not parsed
    assert len(dataset) == 4 and float(dataset[2].energy) != 0.0
    with pytest.raises(DataFormatError, match=r"big\.extxyz: frame 3 cannot be parsed"):
        dataset[3]


def test_missing_key_nan_and_shape_errors_name_file_frame_and_key(tmp_path):
    path = write_ref_extxyz(tmp_path / "my_dft.extxyz", emt_frames(3, seed=8))
    keys = dict(energy_key="REF_energy", forces_key="REF_forces")
    with pytest.raises(DataFormatError, match=r"my_dft\.extxyz: frame 2: no stress key \('REF_stress'\) in "
                                              r"atoms\.info or the calculator's results \(the frame has: "):
        open_dataset(path, **keys, stress_key="REF_stress")[2]
    with pytest.raises(DataFormatError, match=r"frame 0: no energy key \('energy'\)"):
        open_dataset(path, energy_key="energy", forces_key="REF_forces")[0]
    with pytest.raises(DataFormatError, match=r"frame 0: no energy in the calculator's results"):
        open_dataset(path)[0]  # no keys: the calculator's, and the frames have none
    assert open_dataset(path, with_targets=False)[0].natoms == 4  # data to predict needs no targets

    frames = emt_frames(3, seed=9, slabs=False)
    frames[1].calc.results["energy"] = float("nan")
    bad = write_ref_extxyz(tmp_path / "nan.extxyz", frames)
    with pytest.raises(DataFormatError,
                       match=r"nan\.extxyz: frame 1: key 'REF_energy' \(energy\) holds NaN or inf"):
        open_dataset(bad, **keys)[1]
    frames = emt_frames(2, seed=10, slabs=False)
    frames[0].calc.results["forces"] = frames[0].calc.results["forces"][:, :2]
    bad = write_ref_extxyz(tmp_path / "shape.extxyz", frames)
    with pytest.raises(DataFormatError, match=r"frame 0: key 'REF_forces' \(forces\) has shape \[4, 2\], "
                                              r"expected \[4, 3\]"):
        open_dataset(bad, **keys)[0]
    with pytest.raises(DataFormatError, match="give a stress key or a virial key, not both"):
        open_dataset(bad, **keys, stress_key="REF_stress", virial_key="REF_virial")
    (tmp_path / "notes.bin").write_bytes(b"\x00\x01")
    with pytest.raises(DataFormatError, match="unknown dataset file type"):
        open_dataset(tmp_path / "notes.bin")
