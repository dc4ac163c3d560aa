"""OC20's preprocessed LMDB format: read (one file or a directory of shards) and write.

The format, as fairchem's ``preprocess_ef.py`` writes it: one LMDB environment per file
(opened with ``subdir=False``), records under the ascii keys ``"0"``, ``"1"``, ..., each a
pickled torch_geometric ``Data``, and a ``"length"`` key holding the pickled record count.
A directory of ``*.lmdb`` files (``data.0000.lmdb``, ``data.0001.lmdb``, ...) is one dataset,
its files in natural name order.

Records are unpickled by a restricted unpickler that admits only what OC20's records are made of
(torch_geometric ``Data``, tensors, numpy arrays, plain containers): a record that names anything
else raises :class:`DataFormatError` instead of running code (``trust=True`` lifts this for
files of other layouts whose origin you trust).

Damaged files raise :class:`DataFormatError` too, never a signal. LMDB itself (the C library)
maps the file and trusts every page number, offset and size it reads there: a file shorter than
its meta pages claim (a partial download) or a damaged node makes it read past the end of the
file (SIGBUS) or fail an internal assertion (SIGABRT), killing the process. So files are read by
:class:`LmdbFile`, which follows LMDB's search in Python over a bounds-checked memory map: the
meta pages are checked against the file's size first, then every page, node and value on a
lookup's path. (LMDB has no checksums: a flipped byte inside a stored value goes unnoticed, and
the record then fails to unpickle or to convert, or reads with a wrong value.) The ``lmdb``
package is needed only to write.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from torch_geometric.data import Data

from .._files import atomic_write
from ._canonical import DataFormatError, canonical_data, record_fields
from ._safe_pickle import restricted_loads
from ._shards import ShardedDataset, natural_sorted

if TYPE_CHECKING:
    import lmdb

__all__ = ["LmdbDataset", "write_lmdb"]

_LENGTH_KEY = b"length"


def _lmdb():
    try:
        import lmdb
    except ImportError as error:
        raise ImportError("reading or writing LMDB files needs the lmdb package (pip install lmdb)") from error
    return lmdb


# LMDB 0.9's on-disk layout (64-bit builds, which py-lmdb's are). Every page starts with a 16-byte
# header: page number, pad, flags, then `lower`/`upper` (the ends of the node-offset array and the
# start of the node area; an overflow page holds its page count there instead). Pages 0 and 1 are
# meta pages: after the header, magic, version, address, map size, the free and main databases
# (48 bytes each: pad (the free one's holds the page size), flags, depth, page counts, entries,
# root) and the last page number and transaction id; the newer meta (higher txnid) is current.
# A node is lo, hi, flags, key size (4 x u16), then the key, then (in a leaf) the value or, with
# F_BIGDATA, the number of its first overflow page; a branch node's child page is lo|hi<<16|flags<<32.
_MAGIC, _VERSION = 0xBEEFC0DE, 1
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META, _P_LEAF2, _P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
_F_BIGDATA = 0x01
_PAGE_HEADER, _META = struct.Struct("<QHHHH"), struct.Struct("<IIQQ")
_DB, _NODE = struct.Struct("<IHHQQQQQ"), struct.Struct("<HHHH")
_P_INVALID = 2**64 - 1
_CURSOR_STACK = 32  # LMDB's deepest tree


def _read_meta(path: Path) -> dict:
    """The current meta page of the LMDB file ``path``, checked against the file's size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(2 * 65536 + 256)
    except OSError as error:
        raise DataFormatError(f"{path}: cannot read ({error})") from error
    if size == 0:
        raise DataFormatError(f"{path}: the file is empty, not an LMDB file")
    metas, offset = [], 0
    for page in range(2):
        if len(head) < offset + 16 + _META.size + 2 * _DB.size + 16:
            raise DataFormatError(f"{path}: too short for an LMDB file ({size} bytes; meta page {page} is cut off)")
        flags = _PAGE_HEADER.unpack_from(head, offset)[2]
        magic, version, _, map_size = _META.unpack_from(head, offset + 16)
        free = _DB.unpack_from(head, offset + 16 + _META.size)
        main = _DB.unpack_from(head, offset + 16 + _META.size + _DB.size)
        last_page, txnid = struct.unpack_from("<QQ", head, offset + 16 + _META.size + 2 * _DB.size)
        if magic != _MAGIC or not flags & _P_META:
            raise DataFormatError(f"{path}: not an LMDB file (meta page {page} has no LMDB signature)")
        if version != _VERSION:
            raise DataFormatError(f"{path}: LMDB format version {version} in meta page {page}, expected {_VERSION}")
        page_size = free[0] if page == 0 else metas[0]["page_size"]
        if page == 0 and (page_size < 512 or page_size > 65536 or page_size & (page_size - 1)):
            raise DataFormatError(f"{path}: meta page 0 is damaged (page size {page_size})")
        metas.append({"page_size": page_size, "last_page": last_page, "txnid": txnid, "map_size": map_size,
                      "flags": main[1], "entries": main[6], "root": main[7]})
        offset += page_size
    meta = max(metas, key=lambda m: m["txnid"])  # LMDB's choice: the later transaction
    needed = (meta["last_page"] + 1) * meta["page_size"]
    if meta["last_page"] >= 2**48 or needed > size:
        raise DataFormatError(
            f"{path}: the file is truncated or damaged: its meta pages say it holds {meta['last_page'] + 1} pages "
            f"of {meta['page_size']} bytes ({needed} bytes), the file has {size} bytes (a partial download or copy?)"
        )
    if meta["root"] != _P_INVALID and not 2 <= meta["root"] <= meta["last_page"]:
        raise DataFormatError(f"{path}: the meta pages are damaged (a database root beyond the last page)")
    if meta["flags"] != 0:  # sorted-duplicate or integer-key databases: not what these files are
        raise DataFormatError(f"{path}: the main database has flags {meta['flags']:#x}; so2nn reads plain "
                              f"key-value LMDBs (or the meta pages are damaged)")
    return meta


class LmdbFile:
    """A read-only LMDB file, read in Python from a memory map that bounds-checks every access.

    Lookups follow LMDB's own search (the same binary search, page for page), so a valid file
    gives exactly what LMDB gives; a damaged one gives a :class:`DataFormatError` where LMDB,
    which trusts every offset and size it reads, would read past the end of the file (SIGBUS) or
    fail an assertion (SIGABRT). Read-only and lock-free: usable from forked workers.

    Example:
        >>> import tempfile, torch
        >>> from torch_geometric.data import Data
        >>> path = Path(tempfile.mkdtemp()) / "one.lmdb"
        >>> _ = write_lmdb(path, [Data(pos=torch.zeros(1, 3))])
        >>> lmdb_file = LmdbFile(path)
        >>> lmdb_file.entries, lmdb_file.get(b"absent")
        (2, None)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta = _read_meta(self.path)
        self.page_size, self.last_page = meta["page_size"], meta["last_page"]
        self.root, self.entries = meta["root"], meta["entries"]
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._end = (self.last_page + 1) * self.page_size

    def _damaged(self, where: str, problem: str) -> DataFormatError:
        return DataFormatError(f"{self.path}: {where}: the file is damaged ({problem})")

    def _page(self, pgno: int, where: str) -> tuple[int, int, int]:
        """``(offset, flags, number of keys)`` of branch or leaf page ``pgno``, its header checked."""
        if not 2 <= pgno <= self.last_page:
            raise self._damaged(where, f"a reference to page {pgno}, the file has {self.last_page + 1}")
        offset = pgno * self.page_size
        _, _, flags, lower, upper = _PAGE_HEADER.unpack_from(self._map, offset)
        kind = flags & (_P_BRANCH | _P_LEAF)
        if kind not in (_P_BRANCH, _P_LEAF) or flags & (_P_OVERFLOW | _P_META | _P_LEAF2 | _P_SUBP):
            raise self._damaged(where, f"page {pgno} has flags {flags:#x}")
        if not 16 <= lower <= upper <= self.page_size or lower % 2:
            raise self._damaged(where, f"page {pgno} has bounds {lower}..{upper}")
        return offset, flags, (lower - 16) >> 1

    def _node(self, page: int, index: int, nkeys: int, where: str) -> tuple[int, int, int, int, bytes]:
        """``(offset of its key, lo, hi, flags, key)`` of node ``index`` of the page at ``page``."""
        pointer = struct.unpack_from("<H", self._map, page + 16 + 2 * index)[0]
        if not 16 + 2 * nkeys <= pointer <= self.page_size - _NODE.size:
            raise self._damaged(where, f"node {index} of page {page // self.page_size} at offset {pointer}")
        lo, hi, flags, key_size = _NODE.unpack_from(self._map, page + pointer)
        start = page + pointer + _NODE.size
        if pointer + _NODE.size + key_size > self.page_size:
            raise self._damaged(where, f"node {index} of page {page // self.page_size} has a {key_size}-byte key")
        return start, lo, hi, flags, self._map[start:start + key_size]

    def _search(self, page: int, nkeys: int, leaf: bool, key: bytes, where: str):
        """LMDB's ``mdb_node_search``: ``(index, exact)``, index ``nkeys`` when every key is smaller."""
        low, high, i, order = (0 if leaf else 1), nkeys - 1, 0, 0
        while low <= high:
            i = (low + high) >> 1
            node_key = self._node(page, i, nkeys, where)[4]
            order = (key > node_key) - (key < node_key)
            if order == 0:
                break
            if order > 0:
                low = i + 1
            else:
                high = i - 1
        if order > 0:
            i += 1
        return i, order == 0 and nkeys > 0

    def get(self, key: bytes, where: str = "") -> bytes | None:
        """The value stored under ``key``, or ``None``. ``where`` names the record in errors."""
        where = where or f"key {key!r}"
        if self.root == _P_INVALID:
            return None
        pgno = self.root
        try:
            for _ in range(_CURSOR_STACK):
                page, flags, nkeys = self._page(pgno, where)
                index, exact = self._search(page, nkeys, bool(flags & _P_LEAF), key, where)
                if flags & _P_BRANCH:  # LMDB's mdb_page_search_root: the child whose range holds key
                    if index >= nkeys:
                        index = nkeys - 1
                    elif not exact:
                        index -= 1
                    if index < 0:
                        raise self._damaged(where, f"branch page {pgno} has no keys")
                    _, lo, hi, node_flags, _ = self._node(page, index, nkeys, where)
                    pgno = lo | hi << 16 | node_flags << 32
                    continue
                if not exact:
                    return None
                start, lo, hi, node_flags, node_key = self._node(page, index, nkeys, where)
                size, start = lo | hi << 16, start + len(node_key)
                if node_flags & ~_F_BIGDATA:  # sub-databases / sorted duplicates: not in these files
                    raise self._damaged(where, f"a value with flags {node_flags:#x}")
                if node_flags & _F_BIGDATA:
                    if start + 8 > page + self.page_size:
                        raise self._damaged(where, "an overflow reference outside its page")
                    overflow = struct.unpack_from("<Q", self._map, start)[0]
                    if not 2 <= overflow <= self.last_page:
                        raise self._damaged(where, f"a value on page {overflow}, the file has {self.last_page + 1}")
                    start, end = overflow * self.page_size + 16, self._end
                else:
                    end = page + self.page_size
                if start + size > end:
                    raise self._damaged(where, f"a {size}-byte value that runs past its page or the file")
                return self._map[start:start + size]
        except struct.error as error:  # an offset past the end of the map
            raise self._damaged(where, str(error)) from None
        raise self._damaged(where, f"a tree deeper than LMDB's limit of {_CURSOR_STACK}")

    def close(self) -> None:
        self._map.close()


def _stored_length(env: LmdbFile, path: Path) -> int:
    raw = env.get(_LENGTH_KEY, "the 'length' record")
    if raw is None:  # fairchem's readers fall back to the entry count too
        return env.entries
    try:
        length = restricted_loads(raw)
    except Exception as error:
        raise DataFormatError(f"{path}: the 'length' record cannot be unpickled ({error})") from error
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise DataFormatError(f"{path}: the 'length' record holds {length!r}, not a record count")
    if length > env.entries:
        raise DataFormatError(f"{path}: the 'length' record says {length} records, the file holds "
                              f"{env.entries} entries")
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
        trust: unpickle records without restriction (they may then name, and run, any code):
            only for LMDBs of another layout whose origin you trust.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataFormatError: not an LMDB, an empty, truncated or damaged one, a corrupt ``length``;
            on access, a missing, damaged, unpicklable or malformed record, or one whose pickle
            names a class or function outside the allowlist (the message names the file and the
            record index).

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

    def __init__(self, path: str | os.PathLike, with_targets: bool = True, trust: bool = False):
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
        self.trust = trust
        self._envs = [LmdbFile(file) for file in files]
        super().__init__(files, [_stored_length(env, file) for env, file in zip(self._envs, files)])

    def _env(self, shard: int) -> LmdbFile:
        if self._envs is None:  # unpickled in a spawned worker
            self._envs = [LmdbFile(file) for file in self.files]
        return self._envs[shard]

    def raw_record(self, index: int):
        """The unpickled record at global ``index``, before conversion (for inspection)."""
        shard, local = self.locate(index)
        file = self.files[shard]
        raw = self._env(shard).get(str(local).encode("ascii"), f"record {local}")
        if raw is None:
            raise DataFormatError(f"{file}: record {local} is missing "
                                  f"(the file says it holds {self.lengths[shard]})")
        try:
            return pickle.loads(raw) if self.trust else restricted_loads(raw)
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
        state["_envs"] = None  # memory maps do not pickle; a spawned worker reopens them
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
