"""Pick the reader from a path, and the training-set statistics a trainer normalises with."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from ._ase_files import DIRECTORY_FORMATS, AseFileDataset, ase_format, expand_paths
from ._asedb import ASE_DB_SUFFIXES, AseDBDataset
from ._canonical import DataFormatError
from ._extxyz import S2EFExtxyzDataset, _is_extxyz, sidecar_path
from ._lmdb import LmdbDataset

__all__ = ["open_dataset", "target_statistics"]


_KEY_OPTIONS = ("energy_key", "forces_key", "stress_key", "virial_key", "format", "read_stress")
_MIXED_STRESS = ("keep the frames with stress in a file of their own, or, for files read through ASE, read no "
                 "stress: read_stress=False, --no-stress on the command line")


def _kind(path: Path, in_directory: bool = False, format: str | None = None) -> str | None:
    if path.name.endswith(".lmdb"):
        return "lmdb"
    if _is_extxyz(path) and sidecar_path(path).exists():
        return "extxyz"
    if path.suffix in ASE_DB_SUFFIXES:
        return "ase-db"
    if path.name.endswith((".txt", ".txt.xz")):  # OC20's sidecars are read with their extxyz files
        return None
    if format is not None:  # the user names ASE's format where ASE cannot tell it from the name or content
        return "ase-file"
    return "ase-file" if ase_format(path, from_name_only=in_directory) is not None else None


_READERS = {"lmdb": LmdbDataset, "extxyz": S2EFExtxyzDataset, "ase-db": AseDBDataset,
            "ase-file": AseFileDataset}


def _one_kind(kinds: set, where: str) -> str:
    # OC20's extxyz files are one kind: a file that lacks its sidecar is that reader's error to name
    if kinds == {"extxyz", "ase-file"}:
        return "extxyz"
    if len(kinds) > 1:
        raise DataFormatError(f"{where}: the directory mixes dataset formats ({', '.join(sorted(kinds))}); "
                              f"keep one format per directory")
    return kinds.pop()


def open_dataset(path: str | os.PathLike, **options) -> Dataset:
    """The S2EF dataset at ``path``, read by the reader its file type calls for.

    ================================================  ==========================================
    ``path``                                          reader
    ================================================  ==========================================
    ``*.lmdb``, or a directory of them                :class:`LmdbDataset` (OC20 preprocessed)
    ``*.extxyz[.xz]`` with ``.txt``, or a directory   :class:`S2EFExtxyzDataset` (OC20 raw S2EF)
    ``*.db``, ``*.json``, ``*.aselmdb``, or a dir     :class:`AseDBDataset`
    any other file ASE reads, or a directory          :class:`AseFileDataset` (extxyz, ``.traj``,
                                                      ``vasprun.xml``, ``OUTCAR``, ...)
    ================================================  ==========================================

    A directory is one dataset (its files in natural name order) and must hold one kind of
    file; of the files only ASE reads, a directory counts those named as extxyz, ``.traj``,
    ``vasprun.xml`` or ``OUTCAR`` files. A glob pattern (``"runs/*/OUTCAR"``, quoted on a
    command line) is the files it matches, of one kind. An extxyz file is OC20's when its
    ``.txt`` sidecar is beside it, else any extxyz. ``options`` go to the reader
    (``with_targets=False`` for unlabelled data; ``energy_key``, ``forces_key``, ``stress_key``,
    ``virial_key``, ``read_stress`` and ``format`` for :class:`AseFileDataset`). ``format`` (ASE's name of it)
    makes a file, or every file of a pattern, one that ASE reads in that format, whatever its
    name (``open_dataset("run1.log", format="vasp-out")``); a directory's files are still found
    by name.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a pattern matches no file.
        DataFormatError: a file type no reader knows, a directory with none or several kinds,
            target keys for a format whose reader has its own names.

    Example:
        >>> import tempfile, torch
        >>> from torch_geometric.data import Data
        >>> from so2nn.data import write_lmdb
        >>> root = tempfile.mkdtemp()
        >>> frame = Data(pos=torch.zeros(1, 3), atomic_numbers=torch.tensor([1]), energy=0.0, forces=torch.zeros(1, 3))
        >>> for shard in range(2):
        ...     _ = write_lmdb(f"{root}/data.{shard:04d}.lmdb", [frame] * 3)
        >>> dataset = open_dataset(root)
        >>> type(dataset).__name__, len(dataset.files), len(dataset)
        ('LmdbDataset', 2, 6)
    """
    files, pattern = expand_paths(path)
    path = Path(path)
    if not pattern and not path.exists():
        raise FileNotFoundError(f"dataset not found: {path}")
    format = options.get("format")
    if pattern:
        kinds = {_kind(file, in_directory=True, format=format) for file in files}
        if None in kinds:
            unknown = next(file for file in files if _kind(file, in_directory=True, format=format) is None)
            raise DataFormatError(f"{unknown}: matched by {path} but of no dataset format (name ASE's format of "
                                  f"files it cannot tell with format='...', --data-format on the command line)")
        kind = _one_kind(kinds, str(path))
    elif path.is_dir():
        kinds = {kind for p in path.iterdir()
                 if p.is_file() and (kind := _kind(p, in_directory=True)) is not None}
        if not kinds:
            databases = ", ".join("*" + s for s in ASE_DB_SUFFIXES)
            raise DataFormatError(f"{path}: the directory holds no dataset files "
                                  f"(*.lmdb, *.extxyz[.xz] with .txt, {databases}, or files ASE reads: "
                                  f"{', '.join(DIRECTORY_FORMATS)})")
        kind = _one_kind(kinds, str(path))
    else:
        kind = _kind(path, format=format)
        if kind is None:
            raise DataFormatError(f"{path}: unknown dataset file type (expected .lmdb, .extxyz, .extxyz.xz, "
                                  f"{', '.join(ASE_DB_SUFFIXES)}, or a file ASE reads; name ASE's format of a file "
                                  f"it cannot tell with format='...', --data-format on the command line)")
    # read_stress=True is every reader's way: only False is a choice that other readers cannot make
    given = [name for name in _KEY_OPTIONS if options.get(name) is not None and options[name] is not True]
    if kind != "ase-file":
        if given:
            raise DataFormatError(f"{path}: {', '.join(given)} apply to files read through ASE; "
                                  f"{_READERS[kind].__name__} reads its format's own fields")
        options = {name: value for name, value in options.items() if name not in _KEY_OPTIONS}
    if pattern:
        if kind == "ase-file":
            return AseFileDataset(files, **options)
        return ConcatDataset([_READERS[kind](file, **options) for file in files])
    return _READERS[kind](path, **options)


def _origin(dataset: Dataset, index: int) -> str:
    """Where item ``index`` of ``dataset`` comes from (``"data.extxyz: frame 7"``), through subsets
    and concatenations, for a reader that can say (``describe``); else its place in ``dataset``."""
    position = index
    while True:
        if isinstance(dataset, Subset):
            dataset, index = dataset.dataset, dataset.indices[index]
        elif isinstance(dataset, ConcatDataset):
            part = next(k for k, end in enumerate(dataset.cumulative_sizes) if index < end)
            index -= dataset.cumulative_sizes[part - 1] if part else 0
            dataset = dataset.datasets[part]
        else:
            break
    describe = getattr(dataset, "describe", None)
    return describe(index) if describe is not None else f"item {position} of the dataset"


def target_statistics(dataset: Dataset, free_atoms_only: bool = False, max_items: int | None = None, seed: int = 0,
                      element_references: int | None = None) -> dict:
    r"""Energy mean and standard deviation and force RMS over a (training) dataset.

    .. math::
        \mu_E = \frac{1}{M}\sum_m E_m, \qquad
        \sigma_E = \sqrt{\frac{1}{M-1}\sum_m (E_m - \mu_E)^2}, \qquad
        F_\mathrm{rms} = \sqrt{\frac{1}{3K}\sum_{k}\lVert \mathbf F_k \rVert^2}

    over the :math:`M` frames and their :math:`K` atoms (only atoms not ``fixed`` with
    ``free_atoms_only``). Forces have zero mean by symmetry, so :math:`F_\mathrm{rms}` is
    their standard deviation: what :class:`~so2nn.models.EquiformerV2Config` calls
    ``forces_std`` (and ``energy_mean``, ``energy_std`` for the other two). Accumulated in
    float64. ``max_items`` draws that many frames at random (seeded) instead of reading all
    (OC20's 2M+ records take longer to read than the estimate needs).

    With ``element_references=Z`` (the size of the element table), per-element energies
    :math:`\varepsilon_Z` are fitted first by least squares, :math:`E_m \approx \sum_{i \in m}
    \varepsilon_{Z_i}` (a linear reference, as MACE's E0s or fairchem's for OC22), and
    :math:`\mu_E, \sigma_E` are those of the residuals; ``"element_references"`` holds the
    :math:`\varepsilon` (zero for elements absent from the data) and ``"raw_energy_mean"`` the
    mean before the references are subtracted.

    A dataset with stress (on every item; some with and some without raises) adds
    ``"stress_std"``, :math:`\sigma_S = \sqrt{\frac{1}{9M}\sum_m \lVert S_m - \bar S
    \rVert_F^2}` (eV/A^3, :math:`\bar S` the mean stress tensor; the scale of the stress loss),
    and ``"stress_mean_pressure"``, the mean of :math:`\frac13 \mathrm{tr}\, S_m`.

    Returns:
        ``{"energy_mean", "energy_std", "forces_rms", "num_frames", "num_atoms"}`` (plus
        ``"element_references"`` and ``"raw_energy_mean"``; ``"stress_std"`` and
        ``"stress_mean_pressure"`` with stress).

    Example:
        >>> from torch_geometric.data import Data
        >>> frames = [Data(energy=torch.tensor([e]), forces=torch.full((2, 3), 0.5), fixed=torch.zeros(2, dtype=bool))
        ...           for e in (1.0, 3.0)]
        >>> target_statistics(frames)
        {'energy_mean': 2.0, 'energy_std': 1.4142135623730951, 'forces_rms': 0.5, 'num_frames': 2, 'num_atoms': 4}
    """
    indices = list(range(len(dataset)))
    if max_items is not None and len(indices) > max_items:
        indices = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:max_items].tolist()
    energies = torch.empty(len(indices), dtype=torch.float64)
    counts = torch.zeros(len(indices), element_references or 0, dtype=torch.float64)
    squares, components = 0.0, 0
    stresses, with_stress, without_stress = [], None, None  # the first item with a stress, and without
    for row, i in enumerate(indices):
        item = dataset[i]
        if getattr(item, "stress", None) is not None:
            stresses.append(item.stress.double().reshape(3, 3))
            with_stress = _origin(dataset, i) if with_stress is None else with_stress
        else:
            without_stress = _origin(dataset, i) if without_stress is None else without_stress
        if with_stress is not None and without_stress is not None:
            raise DataFormatError(f"{without_stress}: has no stress but {with_stress} has one: a dataset has stress "
                                  f"on every item or on none ({_MIXED_STRESS})")
        if getattr(item, "energy", None) is None or getattr(item, "forces", None) is None:
            raise DataFormatError(f"{_origin(dataset, i)}: has no energy or forces")
        energies[row] = float(item.energy.reshape(-1)[0])
        if element_references:
            numbers = item.atomic_numbers.long()
            if int(numbers.max()) >= element_references:
                raise DataFormatError(f"{_origin(dataset, i)}: has atomic number {int(numbers.max())} >= "
                                      f"{element_references}")
            counts[row] = torch.bincount(numbers, minlength=element_references).double()
        forces = item.forces.double()
        if free_atoms_only:
            forces = forces[~item.fixed]
        squares += float(forces.square().sum())
        components += forces.numel()
    if len(indices) < 2 or components == 0:
        raise ValueError(f"target_statistics needs at least 2 frames with atoms, got {len(indices)} frames")
    result = {}
    if stresses:
        stress = torch.stack(stresses)
        result["stress_std"] = float((stress - stress.mean(0)).square().mean().sqrt())
        result["stress_mean_pressure"] = float(torch.diagonal(stress, dim1=1, dim2=2).sum(-1).mean() / 3)
    if element_references:
        present = counts.sum(0) > 0
        # a small ridge keeps elements that always appear together (e.g. in fixed ratios) finite
        x = counts[:, present]
        fit = torch.linalg.solve(x.T @ x + 1e-8 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ energies)
        references = torch.zeros(element_references, dtype=torch.float64)
        references[present] = fit
        result["raw_energy_mean"] = float(energies.mean())
        energies = energies - counts @ references
        result["element_references"] = references.tolist()
    return {
        "energy_mean": float(energies.mean()),
        "energy_std": float(energies.std()),
        "forces_rms": math.sqrt(squares / components),
        "num_frames": len(indices),
        "num_atoms": components // 3,
        **result,
    }
