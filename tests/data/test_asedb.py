import builtins
import importlib.util

import ase.db
import pytest

from so2nn.data import AseDBDataset, DataFormatError, open_dataset
from so2nn.data.emt import reference_energy

HAS_BACKENDS = importlib.util.find_spec("ase_db_backends") is not None
SUFFIXES = [".db", ".json", pytest.param(".aselmdb", marks=pytest.mark.skipif(
    not HAS_BACKENDS, reason="ase-db-backends is not installed"))]


def write_db(path, frames, **extra):
    with ase.db.connect(str(path)) as db:
        for k, atoms in enumerate(frames):
            db.write(atoms, sid=200 + k, fid=k, **extra)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_round_trip_of_every_field(tmp_path, suffix, oc20_frames, assert_matches_atoms):
    frames = oc20_frames(3)
    write_db(tmp_path / f"frames{suffix}", frames)
    dataset = open_dataset(tmp_path / f"frames{suffix}")
    assert isinstance(dataset, AseDBDataset) and len(dataset) == 3
    for k, atoms in enumerate(frames):
        assert_matches_atoms(dataset[k], atoms, atoms.get_potential_energy(), sid=200 + k, fid=k)
    referenced = AseDBDataset(tmp_path / f"frames{suffix}", reference_energy=reference_energy)
    energy = frames[1].get_potential_energy() - reference_energy(frames[1].numbers)
    assert abs(float(referenced[1].energy) - energy) < 1e-5


@pytest.mark.skipif(not HAS_BACKENDS, reason="ase-db-backends is not installed")
def test_aselmdb_shards_and_a_second_reader(tmp_path, oc20_frames):
    frames = oc20_frames(3)
    write_db(tmp_path / "b.aselmdb", frames[2:])
    write_db(tmp_path / "a.aselmdb", frames[:2])
    first, second = open_dataset(tmp_path), AseDBDataset(tmp_path / "a.aselmdb")  # LMDB allows one env per file
    assert [first[k].natoms for k in range(3)] == [len(f) for f in frames]
    assert second[1].sid == 201


def test_rows_without_targets(tmp_path, oc20_frames):
    atoms = oc20_frames(1)[0]
    atoms.calc = None
    write_db(tmp_path / "bare.db", [atoms])
    with pytest.raises(DataFormatError, match=r"bare\.db: row id 1: has no energy and forces"):
        AseDBDataset(tmp_path / "bare.db")[0]
    assert "forces" not in AseDBDataset(tmp_path / "bare.db", with_targets=False)[0]


def test_unreadable_files(tmp_path):
    (tmp_path / "text.db").write_text("not a database")
    with pytest.raises(DataFormatError, match=r"text\.db: not an SQLite file"):
        AseDBDataset(tmp_path / "text.db")
    (tmp_path / "text.json").write_text("{ not json")
    with pytest.raises(DataFormatError, match=r"text\.json: cannot read as an ASE database"):
        AseDBDataset(tmp_path / "text.json")
    with pytest.raises(FileNotFoundError, match="absent.db"):
        AseDBDataset(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()  # ASE would have created it


def test_aselmdb_without_the_backend_package_says_so(tmp_path, monkeypatch):
    (tmp_path / "x.aselmdb").write_bytes(b"")
    real_import = builtins.__import__

    def no_backends(name, *args, **kwargs):
        if name.startswith("ase_db_backends"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_backends)
    with pytest.raises(ImportError, match=r"x\.aselmdb: reading \.aselmdb files needs the ase-db-backends package"):
        AseDBDataset(tmp_path / "x.aselmdb")
