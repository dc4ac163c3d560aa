r"""Any file that ASE reads, as S2EF data: extxyz, ASE trajectories, VASP's ``vasprun.xml``, ``OUTCAR``, ...

The targets of a frame are found by key, as MACE names them: an energy and a stress (or a
virial) in ``atoms.info``, forces in ``atoms.arrays``, each under the key the user gives
(``REF_energy``, ``REF_forces``, ...); a key that is not there is looked up among the results
of the frame's calculator (ASE's extxyz reader moves ``energy=``, ``stress=`` and a ``forces``
column there). Without a key, the calculator's results are the targets: what a DFT code's
output (``vasprun.xml``, ``OUTCAR``) or an ASE trajectory holds.

How a file is read depends on what its format allows:

* extxyz (``.xyz``, ``.extxyz``, also ``.gz``/``.bz2``/``.xz``-compressed): indexed once (the
  byte offset of every frame) and each frame parsed when it is asked for; a compressed file is
  decompressed in memory, the ``cache_files`` most recently used kept;
* ASE trajectories (``.traj``): ASE's own random access, which reads one frame per index;
* VASP's ``OUTCAR`` and ``vasprun.xml`` (also compressed, as extxyz): indexed once (the byte
  range of every ionic step) and each step parsed by ASE's own parsers when it is asked for,
  with the results ``ase.io.read`` gives;
* every other format: ASE reads the whole file once, at construction, and its frames stay in
  memory. For a large one, convert it once to extxyz or ``.traj`` (``ase convert run.out
  data.extxyz``) and read that.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from ._canonical import DataFormatError, atoms_to_data
from ._extxyz import _frame_offsets
from ._shards import ShardedDataset, natural_sorted
from ._vasp import outcar_header, outcar_steps, read_outcar_step, read_vasprun_step, vasprun_steps

__all__ = ["DIRECTORY_FORMATS", "AseFileDataset", "ase_format", "expand_paths"]

#: The formats a directory (or a glob) is searched for, by file name: ASE also guesses a
#: format from names that are not data (``README.md`` reads as CASTEP output), so only these
#: count. A file given by name may have any format that ASE reads.
DIRECTORY_FORMATS = ("extxyz", "traj", "vasp-xml", "vasp-out")

_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_GLOB = set("*?[")
# the canonical target -> where MACE's convention keeps it (per frame: info, per atom: arrays)
_TARGETS = {"energy": "info", "forces": "arrays", "stress": "info", "virial": "info"}


def ase_format(path: Path, from_name_only: bool = False) -> str | None:
    """The ASE format of ``path`` (``"extxyz"``, ``"traj"``, ``"vasp-xml"``, ...), or ``None``
    when ASE cannot read it. ``from_name_only`` accepts only :data:`DIRECTORY_FORMATS`."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    try:
        name = filetype(str(path), read=not from_name_only, guess=not from_name_only)
    except (UnknownFileTypeError, OSError, ValueError):
        return None
    if from_name_only:
        return name if name in DIRECTORY_FORMATS else None
    return name if name in ioformats and ioformats[name].can_read else None


def expand_paths(path: str | os.PathLike) -> tuple[list[Path], bool]:
    """The files a glob pattern matches (natural name order), and whether ``path`` was a pattern.

    A path that exists is never a pattern, even with ``*`` or ``[`` in its name.

    Raises:
        FileNotFoundError: a pattern that matches no file.
    """
    text = str(path)
    if Path(text).exists() or not (_GLOB & set(text)):
        return [Path(text)], False
    files = natural_sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"no file matches {text}")
    return files, True


class AseFileDataset(ShardedDataset):
    r"""Frames of files that ASE reads, as canonical S2EF items (see :mod:`so2nn.data`).

    Each frame gives positions (wrapped into the cell along periodic directions), cell, pbc,
    ``tags`` (OC20's, when the file has a ``tags`` column; else zeros) and ``fixed`` (from a
    ``FixAtoms`` constraint, e.g. an extxyz ``move_mask`` column; else every atom is free),
    and the targets, in ASE's units:

    =========  ======================  =================  =============================================
    target     key (``None``: the      where the key is   unit, shape
               calculator's result)    looked up
    =========  ======================  =================  =============================================
    energy     ``energy_key``          ``atoms.info``     eV, one number
    forces     ``forces_key``          ``atoms.arrays``   eV/A, ``[N, 3]``
    stress     ``stress_key``          ``atoms.info``     eV/A^3, ASE's sign; Voigt ``[6]`` or ``[3, 3]``
    virial     ``virial_key``          ``atoms.info``     eV, ``[3, 3]`` or ``[9]``; stress = -virial / V
    =========  ======================  =================  =============================================

    A key that is not in ``info``/``arrays`` is looked up in the calculator's results under
    the same name. Without ``stress_key`` and ``virial_key``, the calculator's stress is read
    when the frame has one (and a ``virial`` in ``info``, as OC20's extxyz files write it);
    ``read_stress=False`` reads none (for a file with stress on some frames only: a dataset has
    stress on every frame or on none). A key that is given must be in every frame. ``sid`` and
    ``fid`` come from ``atoms.info`` when it has them, else ``sid`` is the frame's position in the
    dataset and ``fid`` 0.

    How each format is read (lazily where it can be) is in the module's docstring.

    Args:
        path: a file, a directory (its files of :data:`DIRECTORY_FORMATS`, found by name, in
            natural name order), a glob pattern (``"runs/*/OUTCAR"``), or a list of files.
        energy_key, forces_key, stress_key, virial_key: where the targets are (see above).
        with_targets: require an energy and forces in every frame (``False`` for data to predict).
        read_stress: ``False``: no stress or virial, whatever the frames hold.
        format: ASE's name of the files' format, when ASE cannot tell it from the name or content.
        cache_files: decompressed extxyz files kept in memory per process.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a pattern matches nothing.
        DataFormatError: a file ASE cannot read; on access, a frame without a target's key,
            with NaN or inf in it, or of the wrong shape (named by file, frame and key).

    Example:
        >>> import tempfile, ase.io
        >>> from ase.build import bulk
        >>> from ase.calculators.emt import EMT
        >>> copper = bulk("Cu", cubic=True)
        >>> copper.calc = EMT()
        >>> copper.info["REF_energy"] = copper.get_potential_energy()
        >>> copper.arrays["REF_forces"] = copper.get_forces()
        >>> copper.calc = None
        >>> path = tempfile.mkdtemp() + "/cu.extxyz"
        >>> ase.io.write(path, [copper] * 3)
        >>> dataset = AseFileDataset(path, energy_key="REF_energy", forces_key="REF_forces")
        >>> len(dataset), dataset[2].energy.shape, dataset[2].forces.shape, dataset[2].sid
        (3, torch.Size([1]), torch.Size([4, 3]), 2)
    """

    record_name = "frame"

    def __init__(self, path: str | os.PathLike | Sequence[str | os.PathLike], energy_key: str | None = None,
                 forces_key: str | None = None, stress_key: str | None = None, virial_key: str | None = None,
                 with_targets: bool = True, format: str | None = None, cache_files: int = 2,
                 read_stress: bool = True):
        if isinstance(path, (str, os.PathLike)):
            self.path = Path(path)
            files, pattern = expand_paths(path)
            if not pattern and not self.path.exists():
                raise FileNotFoundError(f"data file or directory not found: {self.path}")
            if not pattern and self.path.is_dir():
                files = natural_sorted(p for p in self.path.iterdir()
                                       if p.is_file() and ase_format(p, from_name_only=True) is not None)
                if not files:
                    raise DataFormatError(f"{self.path}: the directory holds no files of the formats "
                                          f"{', '.join(DIRECTORY_FORMATS)}")
        else:
            files = [Path(p) for p in path]
            self.path = files[0] if len(files) == 1 else Path(os.path.commonpath(files) if files else ".")
            if not files:
                raise DataFormatError("no data files given")
        self.keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key, "virial": virial_key}
        if stress_key is not None and virial_key is not None:
            raise DataFormatError(f"give a stress key or a virial key, not both "
                                  f"({stress_key!r}, {virial_key!r})")
        if not read_stress and (stress_key is not None or virial_key is not None):
            raise DataFormatError(f"read_stress=False reads no stress: give no {'stress' if stress_key else 'virial'} "
                                  f"key ({stress_key or virial_key!r})")
        self.read_stress = bool(read_stress)
        self.with_targets = with_targets
        self.cache_files = max(1, int(cache_files))
        self.files = list(files)  # read by _buffer and _trajectory while indexing
        self.formats, self._offsets, self._frames, self._headers = [], [], [], []
        self._buffers: OrderedDict[int, object] = OrderedDict()
        self._trajectories: dict[int, object] = {}
        self._pid = os.getpid()
        lengths = []
        for shard, file in enumerate(files):
            if not file.is_file():
                raise FileNotFoundError(f"data file not found: {file}")
            name = format or ase_format(file)
            if name is None:
                raise DataFormatError(f"{file}: ASE cannot tell this file's format; name it (format='...', "
                                      f"--data-format on the command line)")
            self.formats.append(name)
            offsets = frames = header = None
            if name == "extxyz":
                offsets = _frame_offsets(self._buffer(shard), file)
                length = len(offsets) - 1
            elif name in ("vasp-out", "vasp-xml"):
                header, offsets = self._index_vasp(shard, name)
                length = len(offsets)
                if length == 0:  # no complete step: what ASE makes of the file (an error, or its start)
                    offsets, frames = None, _read_all(file, name)
                    length = len(frames)
            elif name == "traj":
                length = len(self._trajectory(shard))
            else:
                frames = _read_all(file, name)
                length = len(frames)
            if frames is not None and length == 0:  # ASE's guess can be a format the file is not
                guessed = "" if format else (" (the format ASE guessed; name the file's own with format='...', "
                                             "--data-format on the command line)")
                raise DataFormatError(f"{file}: ASE read no frames from it as {name}{guessed}")
            self._offsets.append(offsets)
            self._frames.append(frames)
            self._headers.append(header)
            lengths.append(length)
        super().__init__(files, lengths)

    # -- reading frames -------------------------------------------------------------------------

    def _fresh_process(self) -> None:
        """Memory maps and open trajectories belong to the process that opened them."""
        if self._pid != os.getpid():
            self._buffers, self._trajectories, self._pid = OrderedDict(), {}, os.getpid()

    def _buffer(self, shard: int):
        self._fresh_process()
        if shard in self._buffers:
            self._buffers.move_to_end(shard)
            return self._buffers[shard]
        file = self.files[shard]
        try:
            opener = _COMPRESSED.get(file.suffix)
            if opener is not None:
                with opener(file, "rb") as f:
                    buffer = f.read()
            else:
                with open(file, "rb") as f:
                    empty = os.fstat(f.fileno()).st_size == 0  # mmap refuses empty files
                    buffer = b"" if empty else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, EOFError, lzma.LZMAError) as error:
            raise DataFormatError(f"{file}: cannot read ({error})") from error
        self._buffers[shard] = buffer
        while len(self._buffers) > self.cache_files:
            self._buffers.popitem(last=False)
        return buffer

    def _index_vasp(self, shard: int, name: str):
        """``(header, [(start, end) of each ionic step])`` of an OUTCAR (ASE's parsed header) or a
        vasprun.xml (the header's end)."""
        buffer, file = self._buffer(shard), self.files[shard]
        try:
            if name == "vasp-xml":
                steps = vasprun_steps(buffer)
                return (steps[0][0] if steps else 0), steps
            header_end, steps = outcar_steps(buffer)
            return (outcar_header(buffer, header_end, file.parent) if steps else None), steps
        except Exception as error:  # ASE's header parsers raise their own kinds
            raise DataFormatError(f"{file}: cannot be read as {name} ({type(error).__name__}: {error})") from error

    def _trajectory(self, shard: int):
        from ase.io import Trajectory

        self._fresh_process()
        if shard not in self._trajectories:
            try:
                self._trajectories[shard] = Trajectory(str(self.files[shard]))
            except Exception as error:  # ulm raises its own kinds on foreign or damaged files
                raise DataFormatError(f"{self.files[shard]}: cannot read as an ASE trajectory "
                                      f"({type(error).__name__}: {error})") from error
        return self._trajectories[shard]

    def read_atoms(self, index: int):
        """The ASE ``Atoms`` of frame ``index`` as the file holds it (calculator results attached)."""
        from ase.io.extxyz import read_xyz

        shard, local = self.locate(index)
        file, name = self.files[shard], self.formats[shard]
        try:
            if name == "extxyz":
                start, end = self._offsets[shard][local], self._offsets[shard][local + 1]
                text = bytes(self._buffer(shard)[start:end]).decode()
                return next(read_xyz(io.StringIO(text), 0))
            if name in ("vasp-out", "vasp-xml") and self._offsets[shard] is not None:
                start, end = self._offsets[shard][local]
                if name == "vasp-out":
                    return read_outcar_step(self._buffer(shard), self._headers[shard], start, end)
                return read_vasprun_step(self._buffer(shard), self._headers[shard], start, end)
            if name == "traj":
                return self._trajectory(shard)[local]
            frame = self._frames[shard][local]
            atoms = frame.copy()  # a copy the caller may change; the results are the file's
            atoms.calc = frame.calc
            return atoms
        except DataFormatError:
            raise
        except Exception as error:  # ASE raises many kinds on malformed text
            raise DataFormatError(f"{file}: frame {local} cannot be parsed "
                                  f"({type(error).__name__}: {error})") from error

    def __getitem__(self, index: int) -> Data:
        shard, local = self.locate(index)
        where = f"{self.files[shard]}: frame {local}"
        atoms = self.read_atoms(index)
        if self.with_targets:
            energy = self._target(atoms, "energy", where, required=True)
            forces = self._target(atoms, "forces", where, required=True)
        else:
            energy = forces = None
        stress, virial = self._stress(atoms, where) if self.read_stress else (None, None)
        calc = atoms.calc
        atoms.calc = None  # the targets are chosen above: none is taken from the calculator behind their back
        try:
            sid = atoms.info.get("sid", self.offset(shard) + local)
            return atoms_to_data(atoms, where, energy, forces, sid=sid, fid=atoms.info.get("fid", 0),
                                 with_targets=self.with_targets, stress=stress, virial=virial)
        finally:
            atoms.calc = calc

    def _stress(self, atoms, where: str) -> tuple:
        """``(stress, virial)`` of the frame, either or both ``None``: by key, else the calculator's."""
        if self.keys["stress"] is not None:
            return self._target(atoms, "stress", where, required=True), None
        if self.keys["virial"] is not None:
            return None, self._target(atoms, "virial", where, required=True)
        if atoms.calc is not None and atoms.calc.results.get("stress") is not None:
            return self._target(atoms, "stress", where, required=True), None
        if atoms.info.get("virial") is not None:
            return None, _checked(atoms.info["virial"], where, "virial", "virial", len(atoms))
        return None, None

    def _target(self, atoms, target: str, where: str, required: bool):
        """The frame's ``target`` (energy, forces, stress, virial) by its key, checked."""
        key = self.keys[target]
        results = atoms.calc.results if atoms.calc is not None else {}
        store = atoms.info if _TARGETS[target] == "info" else atoms.arrays
        if key is None:
            value, name, source = results.get(target), target, "the calculator's results"
        elif key in store:
            value, name, source = store[key], key, f"atoms.{_TARGETS[target]}"
        else:
            value, name = results.get(key), key
            source = f"atoms.{_TARGETS[target]} or the calculator's results"
        if value is None:
            if not required:
                return None
            present = [*atoms.info, *(k for k in atoms.arrays if k not in ("numbers", "positions")), *results]
            hint = f" (the frame has: {', '.join(present)})" if present else " (the frame has no targets)"
            what = f"no {target} key ('{key}')" if key is not None else f"no {target}"
            raise DataFormatError(f"{where}: {what} in {source}{hint}")
        return _checked(value, where, name, target, len(atoms))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_buffers"], state["_trajectories"] = OrderedDict(), {}  # workers reopen their own
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, files={len(self.files)}, frames={len(self)})"


_SHAPES = {"energy": ((), (1,)), "forces": None, "stress": ((6,), (1, 6), (3, 3), (1, 3, 3), (9,)),
           "virial": ((3, 3), (1, 3, 3), (9,))}


def _checked(value, where: str, key: str, target: str, natoms: int):
    """``value`` as a float array of an accepted shape for ``target``, finite; the error names the key."""
    try:
        array = np.array(value, dtype=float)
    except (TypeError, ValueError):
        raise DataFormatError(f"{where}: key '{key}' ({target}) is not numeric: {value!r:.60}") from None
    shapes = ((natoms, 3),) if target == "forces" else _SHAPES[target]
    if array.shape not in shapes:
        expected = " or ".join(str(list(s)) for s in shapes)
        raise DataFormatError(f"{where}: key '{key}' ({target}) has shape {list(array.shape)}, "
                              f"expected {expected}")
    if not np.isfinite(array).all():
        raise DataFormatError(f"{where}: key '{key}' ({target}) holds NaN or inf")
    return float(array.reshape(-1)[0]) if target == "energy" else array


def _read_all(file: Path, name: str) -> list:
    """Every frame of a file whose format has no random access, read by ASE at once."""
    import ase.io

    try:
        frames = ase.io.read(str(file), index=":", format=name)
    except Exception as error:  # each of ASE's parsers raises its own kinds
        raise DataFormatError(f"{file}: cannot be read as {name} "
                              f"({type(error).__name__}: {error})") from error
    return list(frames) if isinstance(frames, list) else [frames]
