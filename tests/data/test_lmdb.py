import pickle

import lmdb
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from so2nn.data import DataFormatError, LmdbDataset, atoms_to_data, open_dataset, write_lmdb


@pytest.fixture
def canonical_items(oc20_frames):
    def make(count=3):
        return [atoms_to_data(atoms, f"frame {k}", sid=100 + k, fid=k) for k, atoms in enumerate(oc20_frames(count))]

    return make


def assert_same(a: Data, b: Data):
    assert set(a.keys()) == set(b.keys())
    for key in a.keys():  # noqa: SIM118 (a Data, whose iteration yields (key, value) pairs)
        if torch.is_tensor(a[key]):
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def write_raw(path, records: dict[bytes, bytes]):
    """An LMDB file with exactly these keys, as fairchem's preprocessing opens it."""
    env = lmdb.open(str(path), subdir=False, map_size=1 << 24, lock=False)
    with env.begin(write=True) as txn:
        for key, value in records.items():
            txn.put(key, value)
    env.close()


def pyg1_data(**fields) -> Data:
    """A ``Data`` laid out as PyG 1.x laid it out: the fields directly in ``__dict__`` (unset
    ones ``None``), no ``_store``. It pickles as PyG 1.x pickles did (class, empty NEWOBJ, the
    dict as state), so unpickling it reproduces what an old OC20 LMDB gives under PyG 2."""
    old = Data.__new__(Data)
    old.__dict__.update({"x": None, "edge_index": None, "edge_attr": None, "y": None, "pos": None, "normal": None,
                         "face": None, "__num_nodes__": None, **fields})
    return old


def test_round_trip_keeps_every_field(tmp_path, canonical_items):
    items = canonical_items()
    assert write_lmdb(tmp_path / "data.lmdb", items) == 3
    dataset = LmdbDataset(tmp_path / "data.lmdb")
    assert len(dataset) == 3
    for k, item in enumerate(items):
        assert_same(dataset[k], item)
    assert_same(dataset[-1], items[-1])
    with pytest.raises(IndexError):
        dataset[3]


def test_file_layout_is_fairchems(tmp_path, canonical_items):
    write_lmdb(tmp_path / "data.lmdb", canonical_items(2))
    env = lmdb.open(str(tmp_path / "data.lmdb"), subdir=False, readonly=True, lock=False)
    with env.begin() as txn:
        assert sorted(key for key, _ in txn.cursor()) == [b"0", b"1", b"length"]
        assert pickle.loads(txn.get(b"length")) == 2
        assert isinstance(pickle.loads(txn.get(b"1")), Data)
    env.close()
    assert [p.name for p in tmp_path.iterdir()] == ["data.lmdb"]  # no temporary or lock file left


def test_directory_of_shards_is_one_dataset_in_natural_order(tmp_path, canonical_items):
    items = canonical_items(3)
    for shard, chunk in [(10, items[2:]), (2, items[:2])]:
        write_lmdb(tmp_path / f"data.{shard}.lmdb", chunk)
    (tmp_path / "notes.txt").write_text("not a shard")
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, LmdbDataset)
    assert [p.name for p in dataset.files] == ["data.2.lmdb", "data.10.lmdb"]
    assert [dataset[k].sid for k in range(3)] == [100, 101, 102]


def test_oc20_records_are_converted(tmp_path, canonical_items):
    """fairchem's current AtomsToGraphs output (uint8 numbers, int32 tags/fixed, python float
    energy, a stored graph) and the 2020 names (`y`, `force`, float numbers and `fixed`)."""
    reference = canonical_items(1)[0]
    n = reference.natoms
    graph = dict(edge_index=torch.zeros(2, 5, dtype=torch.long), cell_offsets=torch.zeros(5, 3), nedges=5)
    current = Data(pos=reference.pos, cell=reference.cell, atomic_numbers=reference.atomic_numbers.to(torch.uint8),
                   natoms=n, tags=reference.tags.int(), fixed=reference.fixed.int(), energy=float(reference.energy),
                   forces=reference.forces, sid=100, fid=0, **graph)
    old = Data(pos=reference.pos, cell=reference.cell, atomic_numbers=reference.atomic_numbers.float(), natoms=n,
               tags=reference.tags, fixed=reference.fixed.float(), y=float(reference.energy), force=reference.forces,
               sid=100, fid=0, **graph)
    write_lmdb(tmp_path / "oc20.lmdb", [current, old])
    dataset = LmdbDataset(tmp_path / "oc20.lmdb")
    assert_same(dataset[0], reference)
    assert_same(dataset[1], reference)


def test_pyg1_pickles_are_read(tmp_path, canonical_items):
    reference = canonical_items(1)[0]
    old = pyg1_data(pos=reference.pos, cell=reference.cell, atomic_numbers=reference.atomic_numbers.float(),
                     natoms=reference.natoms, tags=reference.tags, fixed=reference.fixed.float(),
                     y=float(reference.energy), force=reference.forces, sid=100, fid=0,
                     edge_index=torch.zeros(2, 4, dtype=torch.long), cell_offsets=torch.zeros(4, 3))
    blob = pickle.dumps(old, protocol=2)
    assert blob.startswith(b"\x80\x02ctorch_geometric.data.data\nData\nq\x00)\x81")  # NEWOBJ, no args
    unpickled = pickle.loads(blob)
    assert type(unpickled) is Data and "_store" not in unpickled.__dict__
    with pytest.raises(RuntimeError, match="older version of PyG"):  # what a naive reader hits
        _ = unpickled.pos
    write_raw(tmp_path / "old.lmdb", {b"0": blob, b"length": pickle.dumps(1)})
    assert_same(LmdbDataset(tmp_path / "old.lmdb")[0], reference)


def test_length_falls_back_to_the_entry_count(tmp_path, canonical_items):
    items = canonical_items(2)
    write_raw(tmp_path / "nolength.lmdb", {b"0": pickle.dumps(items[0]), b"1": pickle.dumps(items[1])})
    assert len(LmdbDataset(tmp_path / "nolength.lmdb")) == 2


def test_missing_field_names_file_and_record(tmp_path, canonical_items):
    item = canonical_items(1)[0]
    del item.forces
    write_lmdb(tmp_path / "x.lmdb", [canonical_items(1)[0], item])
    dataset = LmdbDataset(tmp_path / "x.lmdb")
    with pytest.raises(DataFormatError, match=r"x\.lmdb: record 1: missing field 'forces'"):
        dataset[1]
    # unlabelled data (OC20's test LMDBs) reads without targets
    assert "forces" not in LmdbDataset(tmp_path / "x.lmdb", with_targets=False)[1]


def test_corrupt_record_names_file_and_record(tmp_path, canonical_items):
    good = pickle.dumps(canonical_items(1)[0])
    write_raw(tmp_path / "bad.lmdb", {b"0": good, b"1": good[: len(good) // 2], b"length": pickle.dumps(3)})
    dataset = LmdbDataset(tmp_path / "bad.lmdb")
    with pytest.raises(DataFormatError, match=r"bad\.lmdb: record 1 cannot be unpickled"):
        dataset[1]
    with pytest.raises(DataFormatError, match=r"bad\.lmdb: record 2 is missing"):
        dataset[2]


@pytest.mark.parametrize("field, value, message", [
    ("forces", torch.zeros(5, 3), r"record 0: field 'forces' must have shape \[13, 3\], got \[5, 3\]"),
    ("pos", torch.zeros(13, 2), r"record 0: field 'pos' must have shape \[N, 3\]"),
    ("tags", torch.zeros(3, dtype=torch.long), r"record 0: field 'tags' must have shape \[13\]"),
    ("energy", torch.tensor([float("nan")]), r"record 0: field 'energy' contains NaN"),
    ("atomic_numbers", torch.full((13,), 29.5), r"record 0: field 'atomic_numbers' holds non-integer"),
    ("natoms", 12, r"record 0: field 'natoms' is 12 but 'pos' has 13 atoms"),
])
def test_malformed_record_names_the_field(tmp_path, field, value, message, canonical_items):
    item = canonical_items(1)[0]
    item[field] = value
    write_lmdb(tmp_path / "shape.lmdb", [item])
    with pytest.raises(DataFormatError, match=message):
        LmdbDataset(tmp_path / "shape.lmdb")[0]


def test_a_record_that_is_not_data(tmp_path):
    write_raw(tmp_path / "list.lmdb", {b"0": pickle.dumps([1, 2]), b"length": pickle.dumps(1)})
    with pytest.raises(DataFormatError, match=r"list\.lmdb: record 0: holds a list"):
        LmdbDataset(tmp_path / "list.lmdb")[0]


def test_unreadable_files(tmp_path):
    (tmp_path / "text.lmdb").write_text("this is not an LMDB file" * 200)
    with pytest.raises(DataFormatError, match=r"text\.lmdb: not an LMDB file"):
        LmdbDataset(tmp_path / "text.lmdb")
    with pytest.raises(FileNotFoundError, match="absent.lmdb"):
        LmdbDataset(tmp_path / "absent.lmdb")
    write_raw(tmp_path / "length.lmdb", {b"length": b"garbage"})
    with pytest.raises(DataFormatError, match=r"length\.lmdb: the 'length' record"):
        LmdbDataset(tmp_path / "length.lmdb")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"empty: the directory holds no \*\.lmdb"):
        LmdbDataset(tmp_path / "empty")


def test_dataset_pickles_for_worker_processes(tmp_path, canonical_items):
    items = canonical_items(2)
    write_lmdb(tmp_path / "data.lmdb", items)
    dataset = LmdbDataset(tmp_path / "data.lmdb")
    clone = pickle.loads(pickle.dumps(dataset))  # what a spawned DataLoader worker receives
    assert_same(clone[1], items[1])


def test_interrupted_write_leaves_no_file(tmp_path, canonical_items):
    def items():
        yield canonical_items(1)[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_lmdb(tmp_path / "partial.lmdb", items())
    assert list(tmp_path.iterdir()) == []


def test_map_grows_past_its_initial_size(tmp_path):
    big = Data(pos=torch.zeros(1, 3), atomic_numbers=torch.ones(1, dtype=torch.long), energy=0.0,
               forces=torch.zeros(1, 3), blob=torch.from_numpy(np.random.default_rng(0).random(200_000)))
    write_lmdb(tmp_path / "big.lmdb", [big] * 3, commit_every=2, map_size=1 << 20)  # 4.8 MB in a 1 MiB map
    assert len(LmdbDataset(tmp_path / "big.lmdb")) == 3


def test_lmdb_file_finds_what_lmdb_finds(tmp_path):
    """so2nn's bounds-checked reader against the LMDB library on a tree three levels deep, with
    values inline and on overflow pages, keys of many lengths, and absent keys; also after
    updates and deletions in a later transaction (the second meta page current)."""
    from so2nn.data._lmdb import LmdbFile

    rng = np.random.default_rng(0)
    records = {}
    for k in range(3000):
        key = (f"{k}" if k % 3 else f"key-{k:06d}-" + "x" * int(rng.integers(0, 200))).encode()
        records[key] = rng.bytes(int(rng.choice([0, 5, 300, 2000, 9000])))
    write_raw(tmp_path / "tree.lmdb", records)
    env = lmdb.open(str(tmp_path / "tree.lmdb"), subdir=False, map_size=1 << 26, lock=False)
    with env.begin(write=True) as txn:
        for key in list(records)[::7]:
            txn.delete(key)
        txn.put(b"late", b"added")
    assert env.stat()["depth"] >= 3
    with env.begin() as txn:
        expected = dict(txn.cursor())
    env.close()
    reader = LmdbFile(tmp_path / "tree.lmdb")
    assert reader.entries == len(expected)
    for key, value in expected.items():
        assert reader.get(key) == value, key
    for key in [b"", b"absent", b"0", b"key-", b"\xff" * 10, *list(records)[::7]]:
        assert reader.get(key) == expected.get(key), key


def test_crafted_record_does_not_run_code(tmp_path, capfd):
    """A record whose pickle calls os.system is refused, naming what it calls; nothing runs."""
    import os

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo the record ran code",))

    write_raw(tmp_path / "crafted.lmdb", {b"0": pickle.dumps(Payload()), b"length": pickle.dumps(1)})
    dataset = LmdbDataset(tmp_path / "crafted.lmdb")
    with pytest.raises(DataFormatError, match=r"crafted\.lmdb: record 0 cannot be unpickled .*posix\.system"):
        dataset[0]
    assert "ran code" not in capfd.readouterr().out
    write_raw(tmp_path / "length.lmdb", {b"length": pickle.dumps(Payload())})
    with pytest.raises(DataFormatError, match=r"length\.lmdb: the 'length' record .*posix\.system"):
        LmdbDataset(tmp_path / "length.lmdb")
    assert "ran code" not in capfd.readouterr().out


def test_records_of_every_pickle_protocol_and_pyg_layout_are_admitted(tmp_path, canonical_items):
    """The restricted unpickler admits what OC20 records hold: current and PyG 1.x Data, numpy
    arrays and scalars, tensors of several dtypes, under every pickle protocol."""
    from so2nn.data._canonical import record_fields
    from so2nn.data._safe_pickle import restricted_loads

    reference = canonical_items(1)[0]
    old = pyg1_data(pos=reference.pos, atomic_numbers=reference.atomic_numbers.float(), y=np.float64(-1.5),
                    force=reference.forces.numpy(), tags=reference.tags.int(), fixed=reference.fixed.to(torch.uint8))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for record in (reference, old):
            loaded = restricted_loads(pickle.dumps(record, protocol=protocol))
            assert type(loaded) is Data
            fields = record_fields(loaded, "record")
            assert torch.equal(fields["pos"], reference.pos) and torch.equal(fields["tags"], reference.tags.int())
