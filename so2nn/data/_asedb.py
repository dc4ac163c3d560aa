"""ASE databases as S2EF datasets: SQLite (``.db``), JSON (``.json``) and ASE-LMDB (``.aselmdb``).

ASE-LMDB is the format of fairchem's newer releases; ASE reads it through the
``ase-db-backends`` package.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from ._canonical import DataFormatError, atoms_to_data
from ._lmdb import LmdbFile
from ._shards import ShardedDataset, natural_sorted

__all__ = ["ASE_DB_SUFFIXES", "AseDBDataset"]

ASE_DB_SUFFIXES = (".db", ".json", ".aselmdb")


def _aselmdb_codec(path: Path | str = "ASE-LMDB"):
    """ase-db-backends' record decoder; the package is what defines the ASE-LMDB format."""
    try:
        from ase_db_backends.aselmdb import decode_bytestream
    except ImportError as error:
        raise ImportError(f"{path}: reading .aselmdb files needs the ase-db-backends package "
                          f"(pip install ase-db-backends)") from error
    return decode_bytestream


def _connect(path: Path):
    """An ASE connection to an SQLite or JSON database, with errors that name the file."""
    import ase.db

    if path.suffix == ".db":
        # ASE would turn an empty or foreign file into a new database: check SQLite's magic first
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise DataFormatError(f"{path}: not an SQLite file (an ASE .db database is one)")
    try:
        return ase.db.connect(str(path), type=path.suffix[1:], use_lock_file=False)
    except Exception as error:
        raise DataFormatError(f"{path}: cannot open as an ASE database ({type(error).__name__}: {error})") \
            from error


def _rows(db, path: Path) -> tuple[list[int], dict | None]:
    """The row ids of an SQLite or JSON database, and for JSON its rows (a JSON database is
    parsed whole on every access, so its rows are kept once read)."""
    try:
        if path.suffix == ".json":
            rows = {row.id: row for row in db.select()}
            return list(rows), rows
        return [row.id for row in db.select(include_data=False)], None
    except Exception as error:  # sqlite3.DatabaseError, JSON errors, ...
        raise DataFormatError(f"{path}: cannot read as an ASE database ({type(error).__name__}: {error})") \
            from error


def _aselmdb_ids(env, path: Path) -> list[int]:
    """Row ids of an ASE-LMDB file: ``1 .. nextid - 1`` less its ``deleted_ids`` (the backend's
    bookkeeping keys)."""
    decode = _aselmdb_codec()
    try:
        nextid = env.get(b"nextid", "the 'nextid' record")
        deleted = env.get(b"deleted_ids", "the 'deleted_ids' record")
        nextid = 1 if nextid is None else int(decode(nextid, decompress=True, json_decode=True))
        deleted = set() if deleted is None else set(decode(deleted, decompress=True, json_decode=True))
    except DataFormatError:
        raise
    except Exception as error:  # zlib/JSON errors on a foreign LMDB
        raise DataFormatError(f"{path}: not an ASE-LMDB database ({type(error).__name__}: {error})") from error
    # every row is an entry: a count beyond them is a damaged record (and would build a huge list)
    if nextid < 1 or nextid - 1 - len(deleted) > env.entries:
        raise DataFormatError(f"{path}: the 'nextid' record ({nextid}) does not match the file's "
                              f"{env.entries} entries")
    return [i for i in range(1, nextid) if i not in deleted]


def _aselmdb_row(env, path: Path, row_id: int):
    from ase.calculators.calculator import all_properties
    from ase.db.row import AtomsRow

    raw = env.get(str(row_id).encode("ascii"), f"row id {row_id}")
    if raw is None:
        raise DataFormatError(f"{path}: row id {row_id} is missing")
    try:
        fields = _aselmdb_codec()(raw, decompress=True, json_decode=True)
    except Exception as error:
        raise DataFormatError(f"{path}: row id {row_id} cannot be decoded ({type(error).__name__}: {error})") \
            from error
    for key in all_properties:  # as the backend does: calculator results as arrays
        if isinstance(fields.get(key), list):
            fields[key] = np.array(fields[key])
    fields["id"] = row_id
    return AtomsRow(fields)


class AseDBDataset(ShardedDataset):
    r"""Rows of ASE databases, as canonical S2EF items (see :mod:`so2nn.data`).

    Each row's atoms give positions (wrapped into the cell, as OC20's preprocessing does),
    cell, pbc, tags and ``fixed`` (its ``FixAtoms`` constraint); ``energy`` and ``forces``
    come from the row's calculator results, and ``stress [1, 3, 3]`` (eV/A^3, ASE's sign) when
    the row has one. ``sid``/``fid`` come from the row's key-value
    pairs or data when it has them, else ``sid`` is the row's position in the dataset and
    ``fid`` 0.

    Args:
        path: a ``.db``, ``.json`` or ``.aselmdb`` file, or a directory of them (one dataset,
            files in natural name order).
        with_targets: require an energy and forces in every row.
        reference_energy: ``f(atomic_numbers) -> float`` subtracted from every energy (e.g.
            :func:`so2nn.data.emt.reference_energy`); ``None`` keeps the stored energy.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ImportError: an ``.aselmdb`` file without the ``ase-db-backends`` package.
        DataFormatError: a file that is not such a database; on access, a row without energy
            or forces or with malformed arrays (named by file and row id).

    Example:
        >>> import tempfile, ase.db
        >>> from ase.build import molecule
        >>> from ase.calculators.emt import EMT
        >>> path = tempfile.mkdtemp() + "/water.db"
        >>> water = molecule("H2O")
        >>> water.calc = EMT()
        >>> _ = water.get_forces()
        >>> with ase.db.connect(path) as db:
        ...     _ = db.write(water, sid=3)
        >>> item = AseDBDataset(path)[0]
        >>> item.sid, item.pbc.tolist(), item.forces.shape
        (3, [[False, False, False]], torch.Size([3, 3]))
    """

    def __init__(self, path: str | os.PathLike, with_targets: bool = True,
                 reference_energy: Callable[[np.ndarray], float] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"ASE database not found: {self.path}")
        if self.path.is_dir():
            files = natural_sorted(p for p in self.path.iterdir()
                                   if p.is_file() and p.suffix in ASE_DB_SUFFIXES)
            if not files:
                raise DataFormatError(f"{self.path}: the directory holds no {'/'.join(ASE_DB_SUFFIXES)} files")
        elif self.path.suffix in ASE_DB_SUFFIXES:
            files = [self.path]
        else:
            raise DataFormatError(f"{self.path}: not an ASE database ({', '.join(ASE_DB_SUFFIXES)})")
        self.with_targets = with_targets
        self.reference_energy = reference_energy
        # ASE-LMDB files are read by so2nn's bounds-checked LMDB reader (valid in forked workers),
        # the others through ASE's connections
        self._handles, self._ids, self._cached_rows = [], [], []
        for file in files:
            if file.suffix == ".aselmdb":
                _aselmdb_codec(file)
                handle = LmdbFile(file)
                ids, rows = _aselmdb_ids(handle, file), None
            else:
                handle = _connect(file)
                ids, rows = _rows(handle, file)
            self._handles.append(handle)
            self._ids.append(ids)
            self._cached_rows.append(rows)
        super().__init__(files, [len(ids) for ids in self._ids])

    def describe(self, index: int) -> str:
        shard, local = self.locate(index)
        return f"{self.files[shard]}: row id {self._ids[shard][local]}"

    def row(self, index: int):
        """The ASE ``AtomsRow`` behind item ``index``."""
        shard, local = self.locate(index)
        file, row_id = self.files[shard], self._ids[shard][local]
        if self._cached_rows[shard] is not None:
            return self._cached_rows[shard][row_id]
        if self._handles is None:  # unpickled in a spawned worker
            self._handles = [LmdbFile(f) if f.suffix == ".aselmdb" else _connect(f)
                             for f in self.files]
        if file.suffix == ".aselmdb":
            return _aselmdb_row(self._handles[shard], file, row_id)
        try:
            return self._handles[shard].get(id=row_id)
        except Exception as error:
            raise DataFormatError(f"{file}: row id {row_id} cannot be read ({type(error).__name__}: {error})") \
                from error

    def __getitem__(self, index: int) -> Data:
        shard, local = self.locate(index)
        row = self.row(index)
        where = f"{self.files[shard]}: row id {row.id}"
        try:
            atoms = row.toatoms()
        except Exception as error:
            raise DataFormatError(f"{where}: cannot be turned into atoms ({type(error).__name__}: {error})") \
                from error
        energy, forces = row.get("energy"), row.get("forces")
        if self.with_targets and (energy is None or forces is None):
            missing = " and ".join(name for name, value in (("energy", energy), ("forces", forces))
                                   if value is None)
            raise DataFormatError(f"{where}: has no {missing} in its calculator results")
        if energy is not None and self.reference_energy is not None:
            energy = energy - self.reference_energy(atoms.get_atomic_numbers())
        labels = {**row.get("data", {}), **row.key_value_pairs}
        return atoms_to_data(atoms, where, energy, forces, sid=labels.get("sid", self.offset(shard) + local),
                             fid=labels.get("fid", 0), with_targets=self.with_targets, stress=row.get("stress"))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, files={len(self.files)}, frames={len(self)})"
