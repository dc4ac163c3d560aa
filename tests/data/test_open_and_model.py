import pytest
import torch
from torch_geometric.loader import DataLoader

from so2nn.data import (
    AseDBDataset,
    DataFormatError,
    LmdbDataset,
    S2EFExtxyzDataset,
    atoms_to_data,
    open_dataset,
    write_lmdb,
    write_s2ef_extxyz,
)
from so2nn.models import EquiformerV2, EquiformerV2Config

TINY = EquiformerV2Config.tiny()


def test_open_dataset_picks_the_reader(tmp_path, oc20_frames):
    import ase.db

    frames = oc20_frames(2)
    write_lmdb(tmp_path / "a.lmdb", [atoms_to_data(f, "f", sid=0) for f in frames])
    write_s2ef_extxyz(tmp_path / "0.extxyz", frames, [1, 1], [0, 1], [0.0, 0.0])
    with ase.db.connect(str(tmp_path / "c.db")) as db:
        db.write(frames[0])
    assert type(open_dataset(tmp_path / "a.lmdb")) is LmdbDataset
    assert type(open_dataset(tmp_path / "0.extxyz")) is S2EFExtxyzDataset
    assert type(open_dataset(tmp_path / "c.db")) is AseDBDataset
    with pytest.raises(DataFormatError, match=r"mixes dataset formats \(ase-db, extxyz, lmdb\)"):
        open_dataset(tmp_path)
    with pytest.raises(DataFormatError, match=r"0\.txt: unknown dataset file type"):
        open_dataset(tmp_path / "0.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="holds no dataset files"):
        open_dataset(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nothing.lmdb"):
        open_dataset(tmp_path / "nothing.lmdb")
    assert len(open_dataset(tmp_path / "a.lmdb", with_targets=False)) == 2  # options reach the reader


def test_batches_feed_equiformer_v2(emt_small):
    dataset = open_dataset(emt_small[1])
    batch = next(iter(DataLoader(dataset, batch_size=3, shuffle=False)))
    assert batch.pos.dtype == torch.float32 and batch.cell.shape == (3, 3, 3) and batch.pbc.shape == (3, 3)
    assert batch.natoms.tolist() == [dataset[k].natoms for k in range(3)]
    torch.manual_seed(0)
    model = EquiformerV2(TINY).eval()
    with torch.no_grad():
        out = model(batch)
    assert out["energy"].shape == (3,) and out["forces"].shape == (int(batch.natoms.sum()), 3)
    assert bool(torch.isfinite(out["energy"]).all()) and bool(torch.isfinite(out["forces"]).all())
    # the batch holds the same systems as one-by-one calls
    with torch.no_grad():
        single = model(next(iter(DataLoader([dataset[1]], batch_size=1))))
    assert torch.allclose(out["energy"][1], single["energy"][0], atol=1e-5)


def test_worker_processes_read_the_same_items(emt_small):
    dataset = open_dataset(emt_small[2])
    serial = [b.energy for b in DataLoader(dataset, batch_size=4)]
    parallel = [b.energy for b in DataLoader(dataset, batch_size=4, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel)) and len(serial) == 2
