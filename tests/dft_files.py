"""DFT-like data files written with ASE and EMT, as users bring them: an extxyz file with
MACE-style keys (``REF_energy`` in info, ``REF_forces`` in arrays, ``REF_stress`` on the bulk
frames), an ASE trajectory with calculator results, and VASP's ``vasprun.xml`` and ``OUTCAR``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.build import add_adsorbate, bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms
from ase.units import GPa


def emt_frames(count: int, seed: int = 0, slabs: bool = True) -> list:
    """Bulk crystals and alloys (with stress) and, every third frame when ``slabs``, an O
    adsorbate on a Cu(111) slab (tags 0/1/2, its bottom layer fixed, no stress), rattled,
    each with EMT's results attached as a SinglePointCalculator."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(count):
        if slabs and k % 3 == 2:
            atoms = fcc111("Cu", (2, 2, 2), vacuum=5.0, periodic=True)
            add_adsorbate(atoms, "O", 1.5, "fcc")
            del atoms.info["adsorbate_info"]  # a dict, which extxyz does not write
            tags = np.where(atoms.get_tags() == 1, 1, 0)  # fcc111 tags layers 1 (top), 2, ...
            tags[-1] = 2
            atoms.set_tags(tags)
            atoms.set_constraint(FixAtoms(mask=tags == 0))
        else:
            element, other = rng.choice(["Cu", "Ni", "Pd", "Ag", "Au"], 2, replace=False)
            atoms = bulk(str(element), "fcc", a=3.6 + 0.1 * rng.normal(), cubic=True)
            if k % 2:
                atoms.numbers[rng.integers(len(atoms))] = bulk(str(other)).numbers[0]
            atoms.set_cell(atoms.cell * (1 + 0.02 * rng.normal(size=(3, 3))), scale_atoms=True)
        atoms.rattle(0.08, seed=int(rng.integers(2**31)))
        atoms.calc = EMT()
        results = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(apply_constraint=False))
        if atoms.get_tags().max() == 0:
            results["stress"] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def write_ref_extxyz(path, frames) -> Path:
    """``frames`` as an extxyz file with their targets under MACE-style keys, no calculator:
    ``REF_energy`` (info), ``REF_forces`` (arrays), ``REF_stress`` (info, where a frame has one)."""
    import ase.io

    out = []
    for atoms in frames:
        copy = atoms.copy()
        results = atoms.calc.results
        copy.info["REF_energy"] = results["energy"]
        copy.arrays["REF_forces"] = np.array(results["forces"])
        if "stress" in results:
            copy.info["REF_stress"] = np.array(results["stress"])
        out.append(copy)
    ase.io.write(path, out, format="extxyz")
    return Path(path)


def write_traj(path, frames) -> Path:
    import ase.io

    ase.io.write(path, frames, format="traj")
    return Path(path)


def _varray(name: str, rows) -> str:
    return f'<varray name="{name}">' + "".join("<v>" + " ".join(f"{x:.10f}" for x in row) + "</v>"
                                             for row in rows) + "</varray>"


def _structure(atoms, name: str | None = None) -> str:
    label = f' name="{name}"' if name else ""
    return (f"<structure{label}><crystal>{_varray('basis', np.array(atoms.cell))}</crystal>"
            f"{_varray('positions', atoms.get_scaled_positions(wrap=False))}</structure>")


def write_vasprun(path, frames) -> Path:
    """``frames`` (one composition, as a VASP relaxation or MD run) as a ``vasprun.xml`` in
    VASP's conventions: stress in kBar with VASP's sign (pressure positive), energies in
    ``e_fr_energy``/``e_0_energy``."""
    first = frames[0]
    species = "".join(f"<rc><c>{s}</c><c>1</c></rc>" for s in first.get_chemical_symbols())
    parts = ['<?xml version="1.0" encoding="ISO-8859-1"?>', "<modeling>",
             '<kpoints><varray name="kpointlist"><v>0 0 0</v></varray>'
             '<varray name="weights"><v>1.0</v></varray></kpoints>',
             '<parameters><i name="PSTRESS">0.0</i></parameters>',
             f'<atominfo><atoms>{len(first)}</atoms>'
             f'<array name="atoms"><set>{species}</set></array></atominfo>',
             _structure(first, "initialpos")]
    for atoms in frames:
        results = atoms.calc.results
        energy = (f'<i name="e_fr_energy">{results["energy"]:.10f}</i>'
                  f'<i name="e_0_energy">{results["energy"]:.10f}</i>')
        voigt = np.asarray(results["stress"])
        xx, yy, zz, yz, xz, xy = voigt
        stress_kbar = -np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]) / (0.1 * GPa)
        parts.append(f"<calculation><scstep><energy>{energy}</energy></scstep>{_structure(atoms)}"
                     f"{_varray('forces', results['forces'])}{_varray('stress', stress_kbar)}"
                     f"<energy>{energy}</energy></calculation>")
    parts.append("</modeling>")
    Path(path).write_text("\n".join(parts) + "\n")
    return Path(path)


def _species_blocks(atoms) -> list[tuple[str, int]]:
    """``[(symbol, count)]`` of runs of one element, as VASP orders its atoms."""
    blocks = []
    for symbol in atoms.get_chemical_symbols():
        if blocks and blocks[-1][0] == symbol:
            blocks[-1] = (symbol, blocks[-1][1] + 1)
        else:
            blocks.append((symbol, 1))
    return blocks


def write_outcar(path, frames) -> Path:
    """``frames`` (one composition, its elements in runs, as VASP orders them) as the ionic steps
    of an ``OUTCAR`` with what ASE's reader parses: the species (two ``POTCAR:`` lines each) and
    ions per type in the header; per step the lattice, positions and forces, the stress in kB
    with VASP's sign (pressure positive, order XX YY ZZ XY YZ ZX) and the energies."""
    blocks = _species_blocks(frames[0])
    lines = [" vasp.6.4.2 18Apr23 (build Jan 01 2024) complex", ""]
    lines += [f" POTCAR:    PAW_PBE {symbol} 06Sep2000" for symbol, _ in blocks] * 2
    lines += ["   ions per type =    " + "".join(f"{count:5d}" for _, count in blocks), ""]
    for step, atoms in enumerate(frames, start=1):
        results = atoms.calc.results
        lines.append(f"----------------------------------------- Iteration {step:4d}(   1)  "
                     "---------------------------------------")
        lines.append("      direct lattice vectors                 reciprocal lattice vectors")
        reciprocal = atoms.cell.reciprocal()
        lines += ["  " + " ".join(f"{x:14.9f}" for x in (*row, *inverse)) for row, inverse in
                  zip(np.array(atoms.cell), np.array(reciprocal))]
        xx, yy, zz, yz, xz, xy = np.asarray(results["stress"])
        kbar = -np.array([xx, yy, zz, xy, yz, xz]) / (0.1 * GPa)
        lines += ["  FORCE on cell =-STRESS in cart. coord.  units (eV):",
                  "  in kB  " + " ".join(f"{x:11.5f}" for x in kbar), ""]
        lines += [" POSITION                                       TOTAL-FORCE (eV/Angst)",
                  " " + "-" * 83]
        for position, force in zip(atoms.positions, results["forces"]):
            lines.append("  " + " ".join(f"{x:12.5f}" for x in position) + "  "
                         + " ".join(f"{f:13.6f}" for f in force))
        energy = results["energy"]
        lines += [" " + "-" * 83, "", "  FREE ENERGIE OF THE ION-ELECTRON SYSTEM (eV)",
                  "  ---------------------------------------------------",
                  f"  free  energy   TOTEN  = {energy:18.8f} eV", "",
                  f"  energy  without entropy= {energy:18.8f}  energy(sigma->0) = {energy:18.8f}", ""]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
