"""OC20's preprocessed LMDB format: read (one file or a directory of shards) and write.

The format, as fairchem's ``preprocess_ef.py`` writes it: one LMDB environment per file
(opened with ``subdir=False``), records under the ascii keys ``"0"``, ``"1"``, ..., each a
pickled torch_geometric ``Data``, and a ``"length"`` key holding the pickled record count.
A directory of ``*.lmdb`` files (``data.0000.lmdb``, ``data.0001.lmdb``, ...) is one dataset,
its files in natural name order.

Unpickling runs code named in the file: open only LMDBs you trust, as with any pickle.
"""

from __future__ import annotations

import os
import pickle
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from torch_geometric.data import Data

from .._files import atomic_write
from ._canonical import DataFormatError, canonical_data, record_fields
from ._shards import ShardedDataset, natural_sorted

if TYPE_CHECKING:
    import lmdb

__all__ = ["LmdbDataset", "write_lmdb"]

_LENGTH_KEY = b"length"


# LMDB allows one environment per file per process (py-lmdb refuses a second, keyed by the file's
# inode), so every reader of a file shares one. Read-only, lock-free environments stay usable in a
# forked child (a DataLoader worker), where opening the file again would be refused.
_ENVIRONMENTS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _lmdb():
    try:
        import lmdb
    except ImportError as error:
        raise ImportError("reading or writing LMDB files needs the lmdb package (pip install lmdb)") from error
    return lmdb


def shared_environment(path: Path) -> lmdb.Environment:
    """The process's read-only environment of the LMDB file ``path``, opened on first use."""
    try:
        stat = path.stat()
    except OSError as error:
        raise DataFormatError(f"{path}: cannot read ({error})") from error
    key = (stat.st_dev, stat.st_ino)
    env = _ENVIRONMENTS.get(key)
    if env is None:
        lmdb = _lmdb()
        try:
            env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False,
                            max_readers=1)
        except lmdb.Error as error:
            raise DataFormatError(f"{path}: cannot open as an LMDB file ({error})") from error
        _ENVIRONMENTS[key] = env
    return env


def _stored_length(env: lmdb.Environment, path: Path) -> int:
    with env.begin() as txn:
        raw = txn.get(_LENGTH_KEY)
        if raw is None:  # fairchem's readers fall back to the entry count too
            return int(env.stat()["entries"])
    try:
        length = pickle.loads(raw)
    except Exception as error:
        raise DataFormatError(f"{path}: the 'length' record cannot be unpickled ({error})") from error
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise DataFormatError(f"{path}: the 'length' record holds {length!r}, not a record count")
    return length


class LmdbDataset(ShardedDataset):
    r"""Frames from OC20-style LMDB files, as canonical S2EF items (see :mod:`so2nn.data`).

    Records are converted on read: OC20's ``y``/``force`` become ``energy``/``forces``,
    float atomic numbers and ``fixed`` flags become integers and booleans, PyG 1.x pickles
    (fields in ``__dict__``, no ``_store``) are read like current ones. Energies are taken as
    stored (OC20's S2EF LMDBs hold the referenced energy :math:`E_\mathrm{DFT} - E_\mathrm{ref}`).

    Args:
        path: an ``*.lmdb`` file or a directory of them.
        with_targets: require ``energy`` and ``forces`` in every record (``False`` for OC20's
            unlabelled test LMDBs).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFormatError: not an LMDB, a corrupt ``length``; on access, a missing, unpicklable
            or malformed record (the message names the file and the record index).

    Example:
        >>> import tempfile, torch
        >>> from torch_geometric.data import Data
        >>> path = tempfile.mkdtemp() + "/tiny.lmdb"
        >>> frame = Data(pos=torch.zeros(1, 3), atomic_numbers=torch.tensor([8]), y=-1.0, force=torch.zeros(1, 3))
        >>> write_lmdb(path, [frame, frame])
        2
        >>> dataset = LmdbDataset(path)
        >>> len(dataset), dataset[1].energy
        (2, tensor([-1.]))
    """

    def __init__(self, path: str | os.PathLike, with_targets: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"LMDB not found: {self.path}")
        if self.path.is_dir():
            files = natural_sorted(p for p in self.path.glob("*.lmdb") if p.is_file())
            if not files:
                raise DataFormatError(f"{self.path}: the directory holds no *.lmdb files")
        else:
            files = [self.path]
        self.with_targets = with_targets
        self._envs = [shared_environment(file) for file in files]
        super().__init__(files, [_stored_length(env, file) for env, file in zip(self._envs, files)])

    def _env(self, shard: int) -> lmdb.Environment:
        if self._envs is None:  # unpickled in a spawned worker
            self._envs = [shared_environment(file) for file in self.files]
        return self._envs[shard]

    def raw_record(self, index: int):
        """The unpickled record at global ``index``, before conversion (for inspection)."""
        shard, local = self.locate(index)
        file = self.files[shard]
        with self._env(shard).begin() as txn:
            raw = txn.get(str(local).encode("ascii"))
        if raw is None:
            raise DataFormatError(f"{file}: record {local} is missing "
                                  f"(the file says it holds {self.lengths[shard]})")
        try:
            return pickle.loads(raw)
        except Exception as error:
            raise DataFormatError(f"{file}: record {local} cannot be unpickled ({type(error).__name__}: {error})") \
                from error

    def __getitem__(self, index: int) -> Data:
        shard, local = self.locate(index)
        where = f"{self.files[shard]}: record {local}"
        fields = record_fields(self.raw_record(index), where)
        return canonical_data(fields, where, self.with_targets, default_sid=self.offset(shard) + local)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_envs"] = None  # environments do not pickle; a spawned worker reopens them
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, files={len(self.files)}, frames={len(self)})"


def write_lmdb(path: str | os.PathLike, items: Iterable, commit_every: int = 1000,
               map_size: int = 64 << 20) -> int:
    """Write ``items`` (PyG ``Data``) as an OC20-style LMDB file, atomically; returns the count.

    Records go under ``"0"``, ``"1"``, ... as pickles (highest protocol) with a ``"length"``
    key, exactly as fairchem's ``preprocess_ef.py`` writes them. The file is built under a
    temporary name in the same directory and renamed over ``path`` when complete, so an
    interrupted write never leaves a truncated ``path``. The map starts at ``map_size`` bytes
    and doubles whenever a transaction does not fit.

    Example:
        >>> import tempfile, torch
        >>> from torch_geometric.data import Data
        >>> write_lmdb(tempfile.mkdtemp() + "/one.lmdb", [Data(pos=torch.zeros(2, 3))])
        1
    """
    count = 0
    with atomic_write(path) as tmp:
        env = _lmdb().open(str(tmp), subdir=False, map_size=map_size, lock=False, meminit=False)
        try:
            pending: list[tuple[bytes, bytes]] = []
            for item in items:
                pending.append((str(count).encode("ascii"), pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)))
                count += 1
                if len(pending) >= commit_every:
                    _put(env, pending)
                    pending = []
            pending.append((_LENGTH_KEY, pickle.dumps(count, protocol=pickle.HIGHEST_PROTOCOL)))
            _put(env, pending)
            env.sync(True)
        finally:
            env.close()
    return count


def _put(env: lmdb.Environment, pairs: list[tuple[bytes, bytes]]) -> None:
    """Put ``pairs`` in one transaction, doubling the map size until they fit."""
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in pairs:
                    txn.put(key, value)
            return
        except _lmdb().MapFullError:
            env.set_mapsize(2 * env.info()["map_size"])
