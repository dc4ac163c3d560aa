r"""OC20's raw S2EF files: ``<n>.extxyz`` (or ``.extxyz.xz``) trajectories with ``<n>.txt`` sidecars.

The layout, as OC20 ships it (``s2ef_train_200K/0.extxyz.xz``, ``0.txt.xz``, ...; fairchem's
``uncompress.py`` strips the ``.xz``): each extxyz frame is

.. code-block:: text

    <number of atoms>
    Lattice="<9 reals>" Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 energy=<E> free_energy=<F> pbc="T T T"
    <symbol> <x> <y> <z> <T|F> <tag> <fx> <fy> <fz>
    ...

with ``move_mask`` false for fixed atoms (ASE reads it as a ``FixAtoms`` constraint), and line
:math:`i` of the headerless ``.txt`` describes frame :math:`i`:

.. code-block:: text

    random<system id>,frame<frame number>,<reference energy>

The S2EF target is the DFT energy referenced as OC20 defines it (``preprocess_ef.py
--ref-energy``): :math:`E = E_\mathrm{DFT} - E_\mathrm{ref}`, with :math:`E_\mathrm{ref}` the
clean slab plus the gas-phase references of the adsorbate's atoms.
"""  # noqa: E501 (the frame header above is one line of the file format, verbatim)

from __future__ import annotations

import io
import lzma
import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from .._files import atomic_write
from ._canonical import DataFormatError, atoms_to_data, fixed_mask
from ._shards import ShardedDataset, natural_sorted

__all__ = ["S2EFExtxyzDataset", "sidecar_path", "write_s2ef_extxyz"]

_PROPERTIES = "species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3"


def _is_extxyz(path: Path) -> bool:
    return path.name.endswith(".extxyz") or path.name.endswith(".extxyz.xz")


def _stem(path: Path) -> str:
    return path.name[: -len(".extxyz.xz")] if path.name.endswith(".xz") else path.name[: -len(".extxyz")]


def sidecar_path(extxyz: str | os.PathLike) -> Path:
    """The ``.txt`` (or ``.txt.xz``) file that describes the frames of an OC20 extxyz file.

    ``0.extxyz`` pairs with ``0.txt``, ``0.extxyz.xz`` with ``0.txt.xz``; either sidecar is
    accepted when only the other exists.

    Example:
        >>> sidecar_path("s2ef/0.extxyz.xz").name
        '0.txt.xz'
    """
    extxyz = Path(extxyz)
    stem = _stem(extxyz)
    preferred = [".txt.xz", ".txt"] if extxyz.name.endswith(".xz") else [".txt", ".txt.xz"]
    candidates = [extxyz.with_name(stem + suffix) for suffix in preferred]
    return next((c for c in candidates if c.exists()), candidates[0])


def _open_text(path: Path):
    return lzma.open(path, "rt") if path.name.endswith(".xz") else open(path)


def _parse_identifier(text: str, prefix: str) -> int | str:
    """``random123`` -> 123 and ``frame4`` -> 4, as ``preprocess_ef.py`` stores them; else the text."""
    return int(text[len(prefix):]) if text.startswith(prefix) and text[len(prefix):].isdigit() else text


def _read_sidecar(path: Path) -> tuple[list, list, np.ndarray]:
    try:
        with _open_text(path) as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, lzma.LZMAError, UnicodeDecodeError) as error:
        raise DataFormatError(f"{path}: cannot read ({error})") from error
    while lines and not lines[-1].strip():
        lines.pop()
    sids, fids, references = [], [], np.empty(len(lines))
    for i, line in enumerate(lines):
        parts = line.strip().split(",")
        try:
            if len(parts) != 3:
                raise ValueError
            references[i] = float(parts[2])
        except ValueError:
            raise DataFormatError(f"{path}: line {i + 1}: expected 'system_id,frame_number,reference_energy', "
                                  f"got {line!r}") from None
        sids.append(_parse_identifier(parts[0], "random"))
        fids.append(_parse_identifier(parts[1], "frame"))
    return sids, fids, references


def _frame_offsets(buffer, path: Path) -> list[int]:
    """Byte offsets of the frames in an extxyz buffer (and its end): the file's frame index."""
    offsets, position, size = [], 0, len(buffer)
    while position < size:
        end = buffer.find(b"\n", position)
        end = size if end < 0 else end
        line = bytes(buffer[position:end]).strip()
        if not line:  # blank lines between or after frames
            position = end + 1
            continue
        try:
            natoms = int(line)
        except ValueError:
            raise DataFormatError(f"{path}: frame {len(offsets)}: expected the number of atoms, "
                                  f"got {line[:60]!r}") from None
        offsets.append(position)
        for line_number in range(natoms + 2):  # the count line, the header, one line per atom
            end = buffer.find(b"\n", position)
            if end < 0:
                if line_number < natoms + 1:
                    raise DataFormatError(f"{path}: frame {len(offsets) - 1} is truncated")
                end = size
            position = end + 1
    offsets.append(min(position, size))
    return offsets


class S2EFExtxyzDataset(ShardedDataset):
    r"""Frames of OC20's raw S2EF files, as canonical S2EF items (see :mod:`so2nn.data`).

    Each item is what fairchem's ``preprocess_ef.py --ref-energy`` would write for the same
    frame: positions wrapped into the cell, ``tags`` and ``fixed`` from the file,
    ``energy`` = the frame's ``energy`` minus the sidecar's reference energy, ``forces`` on
    every atom, ``sid``/``fid`` parsed from ``random<n>``/``frame<n>``; ``stress [1, 3, 3]``
    (eV/A^3, ASE's sign) when the header has a ``stress=`` (9 or 6 values, as ASE writes it) or a
    ``virial=`` (9 values, eV; the stress is ``-virial / volume``).

    Frames are read on demand: the sidecars are read at construction (their line counts are
    the dataset's length); an extxyz file is indexed (frame byte offsets) the first time one
    of its frames is read, and its frame count is checked against its sidecar then. ``.xz``
    files are decompressed in memory, the ``cache_files`` most recently used kept.

    Args:
        path: an ``.extxyz``/``.extxyz.xz`` file or a directory of them (where both ``n.extxyz``
            and ``n.extxyz.xz`` exist, the uncompressed one is read).
        with_targets: require an energy and forces in every frame.
        subtract_reference: subtract the sidecar's reference energy (OC20's S2EF target);
            ``False`` gives raw DFT energies.
        cache_files: decompressed ``.xz`` files kept in memory per process.

    Raises:
        FileNotFoundError: ``path`` or a frame file's ``.txt`` sidecar does not exist.
        DataFormatError: an unreadable file, a malformed sidecar line, a frame count that
            differs from the sidecar's, an unparsable frame (named by file and frame index).

    Example:
        >>> import tempfile
        >>> from ase.build import fcc111
        >>> from ase.calculators.emt import EMT
        >>> slab = fcc111("Cu", (2, 2, 2), vacuum=5.0, periodic=True)
        >>> slab.calc = EMT()
        >>> path = tempfile.mkdtemp() + "/0.extxyz"
        >>> _ = write_s2ef_extxyz(path, [slab], system_ids=[7], frame_numbers=[0], reference_energies=[0.5])
        >>> item = S2EFExtxyzDataset(path)[0]
        >>> item.sid, item.fid, abs(item.energy.item() - (float(slab.get_potential_energy()) - 0.5)) < 1e-5
        (7, 0, True)
    """

    record_name = "frame"

    def __init__(self, path: str | os.PathLike, with_targets: bool = True, subtract_reference: bool = True,
                 cache_files: int = 2):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"extxyz file or directory not found: {self.path}")
        if self.path.is_dir():
            found = [p for p in self.path.iterdir() if p.is_file() and _is_extxyz(p)]
            plain = {_stem(p) for p in found if p.name.endswith(".extxyz")}
            files = natural_sorted(p for p in found if p.name.endswith(".extxyz") or _stem(p) not in plain)
            if not files:
                raise DataFormatError(f"{self.path}: the directory holds no *.extxyz or *.extxyz.xz files")
        elif _is_extxyz(self.path):
            files = [self.path]
        else:
            raise DataFormatError(f"{self.path}: not an .extxyz or .extxyz.xz file")
        self.with_targets = with_targets
        self.subtract_reference = subtract_reference
        self.cache_files = max(1, int(cache_files))
        self.sidecars, self._sids, self._fids, self._references = [], [], [], []
        for file in files:
            sidecar = sidecar_path(file)
            if not sidecar.exists():
                raise FileNotFoundError(f"{file}: its sidecar {sidecar.name} (system_id,frame_number,"
                                        f"reference_energy per frame) is missing")
            sids, fids, references = _read_sidecar(sidecar)
            self.sidecars.append(sidecar)
            self._sids.append(sids)
            self._fids.append(fids)
            self._references.append(references)
        super().__init__(files, [len(s) for s in self._sids])
        self._offsets: dict[int, list[int]] = {}
        self._buffers: OrderedDict[int, object] = OrderedDict()
        self._pid = os.getpid()

    def _buffer(self, shard: int):
        """The file's bytes: a memory map, or the decompressed ``.xz`` (LRU-cached per process)."""
        if self._pid != os.getpid():
            self._buffers, self._pid = OrderedDict(), os.getpid()
        if shard in self._buffers:
            self._buffers.move_to_end(shard)
            return self._buffers[shard]
        file = self.files[shard]
        try:
            if file.name.endswith(".xz"):
                with lzma.open(file, "rb") as f:
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

    def _frame_text(self, shard: int, local: int) -> str:
        buffer = self._buffer(shard)
        if shard not in self._offsets:
            offsets = _frame_offsets(buffer, self.files[shard])
            if len(offsets) - 1 != self.lengths[shard]:
                raise DataFormatError(f"{self.files[shard]}: holds {len(offsets) - 1} frames but its sidecar "
                                      f"{self.sidecars[shard].name} describes {self.lengths[shard]}")
            self._offsets[shard] = offsets
        start, end = self._offsets[shard][local], self._offsets[shard][local + 1]
        try:
            return bytes(buffer[start:end]).decode()
        except UnicodeDecodeError as error:
            raise DataFormatError(f"{self.files[shard]}: frame {local} is not text ({error})") from error

    def read_atoms(self, index: int):
        """The ASE ``Atoms`` of frame ``index`` as the file holds it (calculator results attached)."""
        from ase.io.extxyz import read_xyz

        shard, local = self.locate(index)
        try:
            return next(read_xyz(io.StringIO(self._frame_text(shard, local)), 0))
        except DataFormatError:
            raise
        except Exception as error:  # ASE raises many kinds on malformed text
            raise DataFormatError(f"{self.files[shard]}: frame {local} cannot be parsed "
                                  f"({type(error).__name__}: {error})") from error

    def __getitem__(self, index: int) -> Data:
        shard, local = self.locate(index)
        where = f"{self.files[shard]}: frame {local}"
        atoms = self.read_atoms(index)
        energy = forces = None
        if self.with_targets:
            results = atoms.calc.results if atoms.calc is not None else {}
            if "energy" not in results or "forces" not in results:
                raise DataFormatError(f"{where}: has no energy= in its header or no forces column")
            try:  # ASE keeps a header value that is not a number as text
                energy = float(results["energy"])
            except (TypeError, ValueError):
                raise DataFormatError(f"{where}: energy={results['energy']!r} is not a number") from None
            energy -= self._references[shard][local] if self.subtract_reference else 0.0
            forces = results["forces"]
        # ASE moves a header's stress= into the calculator results (Voigt) and keeps a virial= in info
        return atoms_to_data(atoms, where, energy, forces, sid=self._sids[shard][local],
                             fid=self._fids[shard][local], with_targets=self.with_targets,
                             virial=atoms.info.get("virial"))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_buffers"] = OrderedDict()  # memory maps do not pickle; workers reopen
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, files={len(self.files)}, frames={len(self)})"


def _frame_lines(atoms, where: str) -> list[str]:
    if atoms.calc is None:
        raise ValueError(f"{where}: has no calculator results (energy and forces are required)")
    energy = atoms.get_potential_energy(apply_constraint=False)
    forces = atoms.get_forces(apply_constraint=False)
    free_energy = atoms.calc.results.get("free_energy", energy)
    header = []
    if atoms.cell.rank == 3:
        header.append('Lattice="' + " ".join(f"{v:.8f}" for v in np.asarray(atoms.cell).reshape(-1)) + '"')
    stress = atoms.calc.results.get("stress")
    if stress is not None:  # ASE's Voigt order in, the full 3x3 (row-major) out, as ASE's writer does
        full = np.asarray(stress, dtype=float)
        if full.shape == (6,):
            xx, yy, zz, yz, xz, xy = full
            full = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        header.append('stress="' + " ".join(f"{v:.10g}" for v in full.reshape(-1)) + '"')
    header += [f"Properties={_PROPERTIES}", f"energy={energy:.8f}", f"free_energy={free_energy:.8f}",
               'pbc="' + " ".join("T" if p else "F" for p in atoms.pbc) + '"']
    lines = [str(len(atoms)), " ".join(header)]
    moving = ~fixed_mask(atoms)
    for symbol, (x, y, z), move, tag, (fx, fy, fz) in zip(
        atoms.get_chemical_symbols(), atoms.positions, moving, atoms.get_tags(), forces
    ):
        lines.append(f"{symbol} {x:.8f} {y:.8f} {z:.8f} {'T' if move else 'F'} {int(tag)} "
                     f"{fx:.8f} {fy:.8f} {fz:.8f}")
    return lines


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp, (lzma.open(tmp, "wt") if path.name.endswith(".xz") else open(tmp, "w")) as f:
        f.write(text)


def write_s2ef_extxyz(path: str | os.PathLike, frames: Sequence, system_ids: Sequence[int | str],
                      frame_numbers: Sequence[int | str],
                      reference_energies: Sequence[float]) -> tuple[Path, Path]:
    """Write frames as an OC20 raw S2EF pair: ``path`` (``.extxyz`` or ``.extxyz.xz``) and its ``.txt``.

    Each ASE ``Atoms`` needs calculator results (energy, forces; a stress among them is written
    as the header's ``stress=``); its tags and ``FixAtoms`` constraint are written as OC20's
    ``tags`` and ``move_mask`` columns. Integer system ids and
    frame numbers are written as ``random<id>`` and ``frame<n>``, strings as given. A ``.xz``
    path is LZMA-compressed and gets a ``.txt.xz`` sidecar, as OC20 ships them. Both files are
    written atomically. Returns ``(extxyz path, sidecar path)``.

    Example:
        >>> import tempfile
        >>> from ase.build import fcc100
        >>> from ase.calculators.emt import EMT
        >>> slab = fcc100("Au", (2, 2, 2), vacuum=5.0, periodic=True)
        >>> slab.calc = EMT()
        >>> extxyz, txt = write_s2ef_extxyz(tempfile.mkdtemp() + "/3.extxyz.xz", [slab], [12], [0], [-1.25])
        >>> with lzma.open(txt, "rt") as f:
        ...     print(txt.name, f.read())
        3.txt.xz random12,frame0,-1.25
        <BLANKLINE>
    """
    path = Path(path)
    if not _is_extxyz(path):
        raise ValueError(f"path must end in .extxyz or .extxyz.xz, got {path.name}")
    counts = {len(frames), len(system_ids), len(frame_numbers), len(reference_energies)}
    if len(counts) != 1:
        raise ValueError(f"frames ({len(frames)}), system_ids ({len(system_ids)}), frame_numbers "
                         f"({len(frame_numbers)}) and reference_energies ({len(reference_energies)}) must match")
    frame_text, sidecar_text = [], []
    rows = zip(frames, system_ids, frame_numbers, reference_energies)
    for i, (atoms, sid, fid, reference) in enumerate(rows):
        frame_text.extend(_frame_lines(atoms, f"frame {i}"))
        sid = f"random{sid}" if isinstance(sid, (int, np.integer)) else str(sid)
        fid = f"frame{fid}" if isinstance(fid, (int, np.integer)) else str(fid)
        sidecar_text.append(f"{sid},{fid},{float(reference)!r}")
    sidecar = path.with_name(_stem(path) + (".txt.xz" if path.name.endswith(".xz") else ".txt"))
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_text(path, "\n".join(frame_text) + "\n")
    _write_text(sidecar, "\n".join(sidecar_text) + "\n")
    return path, sidecar
