"""The ASE facts that several packages need (kept apart so that none of them imports another)."""

from __future__ import annotations

import numpy as np

__all__ = ["fixed_atoms_mask"]


def fixed_atoms_mask(atoms) -> np.ndarray:
    """``[N]`` bool, True for the atoms that an :class:`ase.constraints.FixAtoms` holds in place
    (OC20's ``fixed``); other constraints do not count.

    Example:
        >>> from ase.build import molecule
        >>> from ase.constraints import FixAtoms
        >>> atoms = molecule("H2O")
        >>> atoms.set_constraint(FixAtoms(indices=[0]))
        >>> fixed_atoms_mask(atoms).tolist()
        [True, False, False]
    """
    from ase.constraints import FixAtoms

    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        # OC20 fixes whole atoms (FixAtoms; `move_mask:L:1` in its extxyz files)
        if isinstance(constraint, FixAtoms):
            fixed[constraint.index] = True
    return fixed
