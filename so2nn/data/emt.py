r"""The embedded demo datasets: OC20-like S2EF frames from ASE's EMT calculator, and bulk
crystals with stress.

Small adsorbates (H, O, N, C, OH, CH, NH, CO, NO, CH2, NH2) on fcc(111) and fcc(100) slabs
of Cu, Ag, Au, Ni, Pd, Pt and Al, laid out as OC20 lays out its systems:

- periodic in all three directions, the slab's normal along :math:`z` with vacuum above and
  below;
- ``tags``: 1 for the top metal layer (surface), 0 for the layers below (subsurface), 2 for
  the adsorbate; the tag-0 atoms are fixed (``FixAtoms``), as in OC20's relaxations;
- frames: a short relaxation trajectory (L-BFGS or FIRE, a few steps, from a jittered initial
  placement), then rattled copies of its frames (Gaussian displacements of the free atoms);
- targets: EMT's energy referenced OC20-style (:func:`reference_energy`), and EMT's forces on
  every atom (fixed ones included, as OC20 stores them).

:func:`make_dataset` writes the frames in OC20's LMDB format (train and val, split by system)
once, and reuses them afterwards. EMT is a toy potential (its H, C, N, O parameters especially),
so the numbers mean nothing chemically; the dataset is a fast, reproducible stand-in with
OC20's structure, for examples, tests and smoke-training.

:func:`make_bulk_dataset` does the same for bulk metals (an OMat24-like task: energy, forces
and stress): fcc crystals and random substitutional alloys of EMT's metals, in primitive
(triclinic) and cubic supercells, strained (random symmetric strains up to a few percent) and
rattled with the thermal amplitude of a few temperatures; every frame carries EMT's stress.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from torch_geometric.data import Data

from .._progress import progress_bar
from ._canonical import atoms_to_data
from ._lmdb import LmdbDataset, write_lmdb

__all__ = [
    "ADSORBATES",
    "BULK_CELLS",
    "ELEMENT_REFERENCES",
    "FACETS",
    "METALS",
    "TEMPERATURES",
    "generate_bulk_system",
    "generate_system",
    "make_bulk_dataset",
    "make_dataset",
    "reference_energy",
    "thermal_displacement",
]

#: The slab metals (all fcc, as EMT parameterises them).
METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
#: The surface facets: fcc(111) and fcc(100).
FACETS = ("111", "100")

#: Adsorbates: name -> (symbols, positions in Angstrom relative to the binding atom, which comes
#: first); the molecule's axis points away from the surface (+z).
ADSORBATES: dict[str, tuple[str, tuple[tuple[float, float, float], ...]]] = {
    "H": ("H", ((0.0, 0.0, 0.0),)),
    "O": ("O", ((0.0, 0.0, 0.0),)),
    "N": ("N", ((0.0, 0.0, 0.0),)),
    "C": ("C", ((0.0, 0.0, 0.0),)),
    "OH": ("OH", ((0.0, 0.0, 0.0), (0.0, 0.0, 0.97))),
    "CH": ("CH", ((0.0, 0.0, 0.0), (0.0, 0.0, 1.09))),
    "NH": ("NH", ((0.0, 0.0, 0.0), (0.0, 0.0, 1.02))),
    "CO": ("CO", ((0.0, 0.0, 0.0), (0.0, 0.0, 1.15))),
    "NO": ("NO", ((0.0, 0.0, 0.0), (0.0, 0.0, 1.17))),
    "CH2": ("CH2", ((0.0, 0.0, 0.0), (0.88, 0.0, 0.62), (-0.88, 0.0, 0.62))),
    "NH2": ("NH2", ((0.0, 0.0, 0.0), (0.82, 0.0, 0.58), (-0.82, 0.0, 0.58))),
}

# ASE's site names per facet, and the height (Angstrom) of the binding atom above the top
# layer before jitter: lower where it has more metal neighbours.
_SITES = {"111": ("ontop", "bridge", "fcc", "hcp"), "100": ("ontop", "bridge", "hollow")}
_HEIGHTS = {"ontop": 1.85, "bridge": 1.55, "fcc": 1.3, "hcp": 1.3, "hollow": 1.15}
_VACUUM = 6.0  # Angstrom above and below the slab

#: Per-element reference energies (eV), all from EMT, in OC20's scheme: for the metals, the
#: energy per atom of the fcc crystal at EMT's lattice constant; for the adsorbate atoms,
#: gas-phase molecules relaxed with EMT: H = E(H2)/2, O = E(H2O) - E(H2), C = E(CO) - O,
#: N = E(N2)/2 (OC20's references are H2, H2O, CO and N2). tests/data/test_emt.py recomputes them.
ELEMENT_REFERENCES: dict[str, float] = {
    "H": 0.535271,
    "C": -0.138061,
    "N": 0.131389,
    "O": 0.808343,
    "Al": -0.004883,
    "Ni": -0.013307,
    "Cu": -0.007036,
    "Pd": -0.000270,
    "Ag": -0.000367,
    "Pt": -0.000150,
    "Au": -0.000135,
}

# Bumped whenever generation changes what it writes, so an old cache is not reused.
_GENERATOR_VERSION = 1
_BULK_GENERATOR_VERSION = 1

#: Bulk supercells: name -> (ASE's ``bulk`` cell, repetitions). The primitive fcc cell is
#: triclinic (60 degree angles), the cubic one orthorhombic; 8 to 18 atoms.
BULK_CELLS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "primitive-2x2x2": ("primitive", (2, 2, 2)),
    "primitive-3x3x2": ("primitive", (3, 3, 2)),
    "cubic-2x2x1": ("cubic", (2, 2, 1)),
}
#: Temperatures (K) whose thermal displacements the bulk frames are rattled with.
TEMPERATURES = (300.0, 600.0, 1200.0)
# Einstein temperature (K) of the thermal-displacement model (that of Cu; the other fcc metals
# lie within a factor of two, which the spread of temperatures covers anyway)
_EINSTEIN_TEMPERATURE = 240.0


def reference_energy(atomic_numbers: Sequence[int] | np.ndarray) -> float:
    r"""The reference energy of a system: the sum of its atoms' element references.

    .. math:: E_\mathrm{ref} = \sum_i \varepsilon_{Z_i}, \qquad
              E_\mathrm{target} = E_\mathrm{EMT} - E_\mathrm{ref}

    with :math:`\varepsilon_Z` from :data:`ELEMENT_REFERENCES` (metals: the relaxed fcc
    crystal per atom; H, O, C, N: OC20's gas-phase scheme from H2, H2O, CO and N2), all
    computed with EMT. The dataset's ``energy`` is :math:`E_\mathrm{target}`, so a model
    trained on it predicts :math:`E_\mathrm{EMT} - E_\mathrm{ref}`: add this function's value
    back to compare with EMT.

    Raises:
        ValueError: an element without a reference.

    Example:
        >>> round(reference_energy([8, 1]), 6)  # OH: O + H
        1.343614
    """
    from ase.data import chemical_symbols

    total = 0.0
    for z in np.asarray(atomic_numbers).reshape(-1).tolist():
        symbol = chemical_symbols[int(z)] if 0 < int(z) < len(chemical_symbols) else str(z)
        if symbol not in ELEMENT_REFERENCES:
            raise ValueError(f"no EMT reference energy for element {symbol} (Z={z}); "
                             f"known: {', '.join(ELEMENT_REFERENCES)}")
        total += ELEMENT_REFERENCES[symbol]
    return total


def _build_system(rng: np.random.Generator, metal: str, facet: str, adsorbate: str, size: tuple[int, int, int]):
    """A slab with the adsorbate at a random site, jittered; tags and constraints as OC20."""
    from ase import Atoms
    from ase.build import add_adsorbate, fcc100, fcc111
    from ase.constraints import FixAtoms

    slab = (fcc111 if facet == "111" else fcc100)(metal, size=size, vacuum=_VACUUM, periodic=True)
    layer = slab.get_tags()  # ASE numbers layers from the top: 1 is the surface
    site = _SITES[facet][rng.integers(len(_SITES[facet]))]
    symbols, positions = ADSORBATES[adsorbate]
    molecule = Atoms(symbols, positions=positions)
    molecule.rotate(rng.uniform(0.0, 25.0), "x")  # a small tilt, then any azimuth
    molecule.rotate(rng.uniform(0.0, 360.0), "z")
    height = _HEIGHTS[site] + rng.uniform(-0.15, 0.25)
    offset = rng.integers(0, size[:2]) + rng.normal(0.0, 0.04, 2)  # any equivalent site, off-centre
    add_adsorbate(slab, molecule, height, site, offset=offset)
    tags = np.concatenate([np.where(layer == 1, 1, 0), np.full(len(molecule), 2)])
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    return slab


def generate_system(
    seed: int | np.random.Generator,
    frames: int = 10,
    relax_steps: int = 7,
    metals: Sequence[str] = METALS,
    facets: Sequence[str] = FACETS,
    adsorbates: Sequence[str] = tuple(ADSORBATES),
    sizes: Sequence[tuple[int, int, int]] = ((2, 2, 3), (3, 3, 3)),
    sid: int = 0,
) -> Iterator[Data]:
    """The ``frames`` S2EF frames of one random system, as canonical items.

    Frames ``0..k`` (``fid``) are the relaxation trajectory (initial structure included; ``k <=
    relax_steps``, fewer if it converges to 0.05 eV/A), the rest rattled copies of them.
    ``energy`` is EMT's minus :func:`reference_energy`.

    Example:
        >>> items = list(generate_system(seed=1, frames=3, relax_steps=1, metals=["Pt"], adsorbates=["CO"]))
        >>> [item.fid for item in items], sorted(set(items[0].tags.tolist()))
        ([0, 1, 2], [0, 1, 2])
    """
    from ase.calculators.emt import EMT
    from ase.optimize import FIRE, LBFGS

    rng = np.random.default_rng(seed)
    atoms = _build_system(rng, metals[rng.integers(len(metals))], facets[rng.integers(len(facets))],
                          adsorbates[rng.integers(len(adsorbates))], tuple(sizes[rng.integers(len(sizes))]))
    atoms.calc = EMT()
    offset = reference_energy(atoms.numbers)
    free = atoms.get_tags() != 0  # rattling moves what the relaxation moves

    def frame(fid: int) -> Data:
        energy = atoms.get_potential_energy(apply_constraint=False) - offset
        forces = atoms.get_forces(apply_constraint=False)
        data = atoms_to_data(atoms, f"EMT system {sid} frame {fid}", energy, forces, sid=sid, fid=fid)
        if "stress" in data:  # EMT computes one with the forces; OC20's slab frames (vacuum in the cell) have none
            del data.stress
        return data

    # L-BFGS rather than BFGS: the same quasi-Newton steps without BFGS's per-step eigendecomposition,
    # which dominates the generation time when BLAS threads compete for the cores
    optimizer = (LBFGS if rng.random() < 0.5 else FIRE)(atoms, logfile=None, maxstep=0.2)
    trajectory = []
    for _ in optimizer.irun(fmax=0.05, steps=min(relax_steps, frames - 1)):
        trajectory.append(atoms.positions.copy())
        yield frame(len(trajectory) - 1)
    for fid in range(len(trajectory), frames):
        start = trajectory[rng.integers(len(trajectory))]
        displacement = rng.normal(0.0, rng.uniform(0.02, 0.1), start.shape) * free[:, None]
        atoms.set_positions(start + displacement, apply_constraint=False)
        yield frame(fid)


def _parameters(**parameters) -> dict:
    """The generation parameters as JSON values (tuples become lists), version included."""
    return json.loads(json.dumps({"version": _GENERATOR_VERSION, **parameters}, sort_keys=True))


def _is_complete(folder: Path, parameters: dict) -> bool:
    """A cache folder is complete when its manifest (written last) matches and both splits read back."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if manifest["parameters"] != parameters:
            return False
        return all(len(LmdbDataset(folder / f"{split}.lmdb")) == manifest[f"{split}_frames"]
                   for split in ("train", "val"))
    except (OSError, ValueError, KeyError):  # missing or torn files: not complete
        return False


def make_dataset(
    root: str | os.PathLike,
    train_systems: int = 150,
    val_systems: int = 20,
    frames_per_system: int = 10,
    relax_steps: int = 7,
    seed: int = 0,
    metals: Sequence[str] = METALS,
    facets: Sequence[str] = FACETS,
    adsorbates: Sequence[str] = tuple(ADSORBATES),
    sizes: Sequence[tuple[int, int, int]] = ((2, 2, 3), (3, 3, 3)),
    progress: bool = False,
) -> tuple[Path, Path]:
    """Generate the EMT S2EF dataset under ``root`` once; return ``(train.lmdb, val.lmdb)``.

    The defaults give 1500 train and 200 val frames (150 and 20 systems of 10 frames: a
    7-step relaxation and rattled copies; 13 to 30 atoms each) in 10 to 15 s on two CPU cores.
    Systems are drawn from ``metals`` x ``facets`` x ``adsorbates`` x sites x ``sizes`` with
    random placements; the split is by system (``sid``), so no val system has a frame in
    train.

    The files live in ``root/emt-s2ef-<key>/``, ``key`` a hash of every parameter: a call with
    the same parameters reuses them, other parameters get another folder. Generation writes
    into a temporary folder and renames it into place when complete (its ``manifest.json``
    written last), so an interrupted run is never taken for a finished one and the next call
    regenerates. ``progress=True`` shows the systems generated so far (on standard error).

    Example:
        >>> import tempfile
        >>> train, val = make_dataset(tempfile.mkdtemp(), train_systems=2, val_systems=1, frames_per_system=2)
        >>> len(LmdbDataset(train)), len(LmdbDataset(val))
        (4, 2)
    """
    for name, value in (("train_systems", train_systems), ("val_systems", val_systems),
                        ("frames_per_system", frames_per_system), ("relax_steps", relax_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "relax_steps" else 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, values, known in (("metals", metals, METALS), ("facets", facets, FACETS),
                                ("adsorbates", adsorbates, tuple(ADSORBATES))):
        unknown = [v for v in values if v not in known]
        if unknown or not values:
            raise ValueError(f"{name} must be a non-empty selection of {known}, got {list(values)}")
    parameters = _parameters(train_systems=train_systems, val_systems=val_systems,
                             frames_per_system=frames_per_system, relax_steps=relax_steps, seed=seed,
                             metals=list(metals), facets=list(facets), adsorbates=list(adsorbates),
                             sizes=[list(s) for s in sizes])
    # one seed per system, so a system's frames do not depend on the others
    seeds = np.random.SeedSequence(seed).spawn(train_systems + val_systems)
    options = dict(frames=frames_per_system, relax_steps=relax_steps, metals=list(metals), facets=list(facets),
                   adsorbates=list(adsorbates), sizes=[tuple(s) for s in sizes])

    def frames(systems: range) -> Iterator[Data]:
        for sid in systems:
            yield from generate_system(np.random.default_rng(seeds[sid]), sid=sid, **options)

    return _cached(root, "emt-s2ef", parameters, frames, train_systems, val_systems, progress)


def _cached(root, prefix: str, parameters: dict, frames, train_systems: int, val_systems: int,
            progress: bool = False) -> tuple[Path, Path]:
    """``root/<prefix>-<key>/{train,val}.lmdb``, written once from ``frames(range of sids)``."""
    key = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(root)
    folder = root / f"{prefix}-{key}"
    paths = folder / "train.lmdb", folder / "val.lmdb"
    if _is_complete(folder, parameters):
        return paths

    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{folder.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
    partial.mkdir()
    bar = progress_bar(train_systems + val_systems, f"generating {folder.name} with EMT", "system", progress)

    def counted(systems: range) -> Iterator[Data]:
        for sid in systems:
            yield from frames(range(sid, sid + 1))
            if bar is not None:
                bar.update(1)

    try:
        start = time.perf_counter()
        counts = {
            "train": write_lmdb(partial / "train.lmdb", counted(range(train_systems))),
            "val": write_lmdb(partial / "val.lmdb", counted(range(train_systems, train_systems + val_systems))),
        }
        if bar is not None:
            bar.close()
        manifest = {"parameters": parameters, "train_frames": counts["train"], "val_frames": counts["val"],
                    "train_systems": train_systems, "val_systems": val_systems,
                    "seconds": round(time.perf_counter() - start, 2), "element_references": ELEMENT_REFERENCES}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if not _is_complete(folder, parameters):  # another process may have finished first
            if folder.exists():  # an incomplete leftover (copied in part, or edited by hand)
                shutil.rmtree(folder)
            try:
                os.rename(partial, folder)
            except OSError:  # a concurrent run renamed its folder in between
                if not _is_complete(folder, parameters):
                    raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return paths


def thermal_displacement(temperature: float, masses: np.ndarray) -> np.ndarray:
    r"""The RMS displacement per Cartesian component (Angstrom) of atoms of ``masses`` (amu) at
    ``temperature`` (K) in the classical Einstein model:

    .. math:: \sqrt{\langle u_x^2 \rangle} = \frac{1}{\omega_E} \sqrt{\frac{k_B T}{m}},
              \qquad \omega_E = \frac{k_B \theta_E}{\hbar}, \quad \theta_E = 240\ \mathrm{K}.

    Example:
        >>> np.round(thermal_displacement(300.0, np.array([63.546])), 3)  # Cu at room temperature
        array([0.063])
    """
    from ase import units

    omega = units._k * _EINSTEIN_TEMPERATURE / units._hbar  # rad/s (SI throughout)
    metres = np.sqrt(units._k * temperature / (np.asarray(masses, dtype=float) * units._amu)) / omega
    return metres * 1e10


def generate_bulk_system(
    seed: int | np.random.Generator,
    frames: int = 8,
    metals: Sequence[str] = METALS,
    cells: Sequence[str] = tuple(BULK_CELLS),
    temperatures: Sequence[float] = TEMPERATURES,
    alloy_fraction: float = 0.5,
    max_strain: float = 0.03,
    sid: int = 0,
) -> Iterator[Data]:
    r"""The ``frames`` bulk frames of one random crystal, as canonical items with ``stress``.

    The crystal: fcc ``metals[k]`` in one of ``cells``, with probability ``alloy_fraction`` a
    random substitutional alloy (a second metal on 10 to 50% of the sites, the lattice constant
    by Vegard's law from ASE's reference lattice constants), at one of ``temperatures``. Frame 0
    is the ideal lattice; each other frame applies a random symmetric strain
    :math:`\varepsilon` (entries uniform in :math:`\pm` ``max_strain``; cell and positions
    scaled by :math:`I + \varepsilon`) and Gaussian displacements of the temperature's thermal
    amplitude (:func:`thermal_displacement`). Targets: EMT's energy minus
    :func:`reference_energy`, forces, and stress (eV/A^3, ASE's sign: positive = tensile).
    Tags are 0 and no atom is fixed.

    Example:
        >>> items = list(generate_bulk_system(seed=2, frames=2, metals=["Cu", "Au"]))
        >>> [item.fid for item in items], items[1].stress.shape, bool(items[1].fixed.any())
        ([0, 1], torch.Size([1, 3, 3]), False)
    """
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states

    rng = np.random.default_rng(seed)
    host = metals[rng.integers(len(metals))]
    kind, repeat = BULK_CELLS[cells[rng.integers(len(cells))]]
    temperature = float(temperatures[rng.integers(len(temperatures))])
    alloy = len(metals) > 1 and rng.random() < alloy_fraction
    guest = [m for m in metals if m != host][rng.integers(len(metals) - 1)] if alloy else host
    atoms = bulk(host, "fcc", cubic=kind == "cubic").repeat(repeat)
    n = len(atoms)
    if alloy:
        count = max(1, int(round(rng.uniform(0.1, 0.5) * n)))
        symbols = np.array(atoms.get_chemical_symbols())
        symbols[rng.choice(n, count, replace=False)] = guest
        atoms.set_chemical_symbols(symbols.tolist())
    lattice = {m: reference_states[atomic_numbers[m]]["a"] for m in {host, guest}}
    mean_a = np.mean([lattice[symbol] for symbol in atoms.get_chemical_symbols()])
    atoms.set_cell(atoms.cell * (mean_a / lattice[host]), scale_atoms=True)
    ideal_cell, ideal_positions = atoms.cell.array.copy(), atoms.positions.copy()
    sigma = thermal_displacement(temperature, atoms.get_masses())[:, None]
    atoms.calc = EMT()
    offset = reference_energy(atoms.numbers)
    for fid in range(frames):
        strain = np.zeros((3, 3))
        displacement = np.zeros_like(ideal_positions)
        if fid > 0:
            upper = np.triu(rng.uniform(-max_strain, max_strain, (3, 3)))
            strain = (upper + upper.T) / 2 + np.diag(np.diag(upper)) / 2  # symmetric, diagonal in full range
            displacement = rng.normal(0.0, 1.0, ideal_positions.shape) * sigma
        deformation = np.eye(3) + strain
        atoms.set_cell(ideal_cell @ deformation, scale_atoms=False)
        atoms.set_positions(ideal_positions @ deformation + displacement)
        energy = atoms.get_potential_energy() - offset
        forces, stress = atoms.get_forces(), atoms.get_stress()
        yield atoms_to_data(atoms, f"EMT bulk system {sid} frame {fid}", energy, forces, sid=sid, fid=fid,
                            stress=stress)


def make_bulk_dataset(
    root: str | os.PathLike,
    train_systems: int = 100,
    val_systems: int = 20,
    frames_per_system: int = 8,
    seed: int = 0,
    metals: Sequence[str] = METALS,
    cells: Sequence[str] = tuple(BULK_CELLS),
    temperatures: Sequence[float] = TEMPERATURES,
    alloy_fraction: float = 0.5,
    max_strain: float = 0.03,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Generate the EMT bulk dataset (energy, forces, stress) under ``root`` once; return
    ``(train.lmdb, val.lmdb)``.

    The defaults give 800 train and 160 val frames (100 and 20 crystals of 8 frames,
    :func:`generate_bulk_system`; 8 to 18 atoms each) in a few seconds. The files are OC20's
    LMDB format with a ``stress [1, 3, 3]`` field per record, read back by
    :class:`~so2nn.data.LmdbDataset`; they live in ``root/emt-bulk-<key>/`` and are cached,
    split and written exactly as :func:`make_dataset`'s (``progress`` too).

    Example:
        >>> import tempfile
        >>> train, val = make_bulk_dataset(tempfile.mkdtemp(), train_systems=2, val_systems=1, frames_per_system=2)
        >>> item = LmdbDataset(train)[1]
        >>> len(LmdbDataset(train)), len(LmdbDataset(val)), item.stress.shape
        (4, 2, torch.Size([1, 3, 3]))
    """
    for name, value in (("train_systems", train_systems), ("val_systems", val_systems),
                        ("frames_per_system", frames_per_system)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    for name, values, known in (("metals", metals, METALS), ("cells", cells, tuple(BULK_CELLS))):
        unknown = [v for v in values if v not in known]
        if unknown or not values:
            raise ValueError(f"{name} must be a non-empty selection of {known}, got {list(values)}")
    if not temperatures or any(not t > 0 for t in temperatures):
        raise ValueError(f"temperatures must be positive (K), got {list(temperatures)}")
    if not 0.0 <= alloy_fraction <= 1.0:
        raise ValueError(f"alloy_fraction must be in [0, 1], got {alloy_fraction}")
    if not 0.0 <= max_strain < 0.5:
        raise ValueError(f"max_strain must be in [0, 0.5), got {max_strain}")
    parameters = json.loads(json.dumps({
        "version": _BULK_GENERATOR_VERSION, "train_systems": train_systems, "val_systems": val_systems,
        "frames_per_system": frames_per_system, "seed": seed, "metals": list(metals), "cells": list(cells),
        "temperatures": [float(t) for t in temperatures], "alloy_fraction": alloy_fraction,
        "max_strain": max_strain}, sort_keys=True))
    seeds = np.random.SeedSequence([seed, 1]).spawn(train_systems + val_systems)
    options = dict(frames=frames_per_system, metals=list(metals), cells=list(cells),
                   temperatures=[float(t) for t in temperatures], alloy_fraction=alloy_fraction,
                   max_strain=max_strain)

    def frames(systems: range) -> Iterator[Data]:
        for sid in systems:
            yield from generate_bulk_system(np.random.default_rng(seeds[sid]), sid=sid, **options)

    return _cached(root, "emt-bulk", parameters, frames, train_systems, val_systems, progress)
