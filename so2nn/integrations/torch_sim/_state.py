r"""torch-sim states of ASE structures, their fixed atoms held by torch-sim's own constraint."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms
from ase.constraints import FixAtoms

from ..._ase import fixed_atoms_mask
from ...data import data_to_atoms
from . import _compat

__all__ = ["state_from_atoms"]


def state_from_atoms(systems, device: str | torch.device, dtype: torch.dtype):
    r"""A torch-sim state of ASE structures whose fixed atoms stay fixed under ``ts.optimize`` and
    ``ts.integrate``.

    torch-sim's own ``ts.io.atoms_to_state`` (and ``ts.initialize_state``, which ``ts.optimize``
    and ``ts.integrate`` call on ASE input) drops ASE's constraints, so OC20's subsurface atoms
    would move. This builds the same state and holds the atoms that each structure's
    :class:`~ase.constraints.FixAtoms` names (or, for an so2nn data item, its ``fixed`` field)
    with torch-sim's ``FixAtoms`` in ``state.constraints``: its optimisers zero their forces and
    its integrators their momenta, and neither moves them.

    torch-sim 0.3 has no constraints: there a structure with fixed atoms raises (use
    :func:`~so2nn.integrations.torch_sim.relax_batch` and :func:`~so2nn.integrations.torch_sim.run_md`,
    which hold them on every release, or set :attr:`~so2nn.integrations.torch_sim.TorchSimModel.fixed`);
    structures without fixed atoms give the plain state.

    Args:
        systems: one ASE ``Atoms`` or so2nn data item (what :func:`~so2nn.data.open_dataset`
            gives: tags, ``fixed``), or a sequence of them; all periodic or none (one ``pbc`` per
            torch-sim state). A constraint other than ``FixAtoms`` raises.
        device, dtype: the state's, which must be the model's (``model.device``,
            ``model.dtype``).

    Returns:
        A ``torch_sim.SimState`` of the systems in order, for ``ts.optimize``, ``ts.integrate``
        or a :class:`~so2nn.integrations.torch_sim.TorchSimModel`.

    Example:
        >>> from ase.build import fcc111
        >>> from ase.constraints import FixAtoms
        >>> slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0, periodic=True)
        >>> state_from_atoms([slab, slab], "cpu", torch.float64).n_atoms
        24
        >>> slab.set_constraint(FixAtoms(mask=slab.get_tags() == 3))  # the bottom layer
        >>> state_from_atoms([slab, slab], "cpu", torch.float64).constraints  # doctest: +SKIP
        [FixAtoms(indices=[0, 1, 2, 3, 12, 13, 14, 15])]

        (torch-sim 0.5.1 and later; ``tests/integrations`` checks it on the newest release.)
    """
    atoms = as_atoms_list(systems)
    state, fixed = state_and_fixed(atoms, device, dtype)
    if bool(fixed.any()) and not _compat.HAS_CONSTRAINTS:
        raise ValueError("this torch-sim release has no constraints (torch-sim 0.5.1 and later do), so the state "
                         "cannot hold fixed atoms: relax_batch and run_md hold them on every release, or set "
                         "TorchSimModel.fixed to the state's fixed-atom mask")
    return state


def as_atoms_list(systems) -> list[Atoms]:
    """The ASE structures of ``systems`` (ASE ``Atoms`` or so2nn data items, or a sequence of
    them), checked for what one torch-sim state can hold."""
    if isinstance(systems, Atoms) or _is_data(systems):
        systems = [systems]
    if not isinstance(systems, Sequence) or len(systems) == 0:
        raise ValueError("no systems given: pass ASE Atoms or so2nn data items (or a sequence of them)")
    atoms = []
    for k, system in enumerate(systems):
        if isinstance(system, Atoms):
            atoms.append(system)
        elif _is_data(system):
            atoms.append(data_to_atoms(system))
        else:
            raise ValueError(f"system {k}: systems must be ASE Atoms or so2nn data items, got {type(system).__name__}")
        other = [type(c).__name__ for c in atoms[-1].constraints if not isinstance(c, FixAtoms)]
        if other:
            raise ValueError(f"system {k}: torch-sim holds atoms with FixAtoms only; the structure also has "
                             f"{', '.join(other)}")
    pbc = {tuple(bool(p) for p in a.pbc) for a in atoms}
    if len(pbc) > 1 or len(set(next(iter(pbc)))) > 1:
        raise ValueError("torch-sim needs one pbc for every system and direction (all periodic or none), "
                         f"got {sorted(pbc)}")
    return atoms


def state_and_fixed(atoms: list[Atoms], device, dtype) -> tuple[object, torch.Tensor]:
    """The state of ``atoms`` and its ``[n_atoms]`` fixed-atom mask; with torch-sim's
    constraints, those atoms are held by a ``FixAtoms`` on the state."""
    state = ts.io.atoms_to_state(atoms, device, dtype)
    fixed = torch.as_tensor(np.concatenate([fixed_atoms_mask(a) for a in atoms]), device=state.positions.device)
    if _compat.HAS_CONSTRAINTS:
        _compat.hold(state, fixed)
    return state, fixed


def _is_data(system) -> bool:
    return all(hasattr(system, field) for field in ("pos", "atomic_numbers", "fixed"))
