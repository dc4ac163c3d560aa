r"""The canonical S2EF item that every reader returns, and the conversions into it.

One frame of an S2EF (structure to energy and forces) dataset is a
:class:`torch_geometric.data.Data` with these fields, whatever file it came from:

==================  =============  =========  ==============================================
field               shape          dtype      meaning
==================  =============  =========  ==============================================
``pos``             ``[N, 3]``     float32    Cartesian positions (Angstrom), wrapped into
                                              the cell along periodic directions
``cell``            ``[1, 3, 3]``  float32    lattice vectors as rows (zeros: no cell)
``pbc``             ``[1, 3]``     bool       periodic directions
``atomic_numbers``  ``[N]``        int64      element of each atom
``natoms``          int                       N
``tags``            ``[N]``        int64      OC20: 0 subsurface, 1 surface, 2 adsorbate
                                              (zeros when the source has none)
``fixed``           ``[N]``        bool       atoms held fixed in the relaxation
``energy``          ``[1]``        float32    target energy (eV), referenced as the source
                                              defines it
``forces``          ``[N, 3]``     float32    forces (eV/Angstrom), on every atom
``stress``          ``[1, 3, 3]``  float32    stress (eV/Angstrom^3), ASE's sign convention
                                              (only where the source has one)
``sid``, ``fid``    int or str                system id and frame number
==================  =============  =========  ==============================================

Batched by :class:`torch_geometric.loader.DataLoader`, these become ``pos [sum N, 3]``,
``cell [B, 3, 3]``, ``pbc [B, 3]``, ``natoms [B]``, ``energy [B]``, ``stress [B, 3, 3]``,
``batch [sum N]``: exactly what :class:`~so2nn.models.EquiformerV2` reads.

Stress is always ASE's: :math:`\sigma = \frac{1}{V}\frac{\partial E}{\partial \varepsilon}`
(positive = tensile), in eV/Angstrom^3. A source may give it as ``stress`` (full ``[3, 3]``,
``[1, 3, 3]`` or ``[9]``, or Voigt ``[6]`` in ASE's order xx, yy, zz, yz, xz, xy) or as a
``virial`` :math:`W` (eV, any of the full forms), converted as :math:`\sigma = -W / V` with
:math:`V = |\det A|` the cell volume. A stress that is not symmetric, or a virial without a
3-d cell, raises :class:`DataFormatError` naming the field and record.

OC20's own names map onto these: ``y`` -> ``energy``, ``force`` -> ``forces``. Fields outside
the table (a stored graph ``edge_index``/``cell_offsets``, ``distances``, ...) are dropped:
the model builds its own graph with its own cutoff, as EquiformerV2's OC20 configurations do.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Data

from .._ase import fixed_atoms_mask as fixed_mask

__all__ = [
    "FIELDS",
    "DataFormatError",
    "atoms_to_data",
    "canonical_data",
    "data_to_atoms",
    "fixed_mask",
    "record_fields",
]

#: The fields of a canonical S2EF item, in order; their shapes, dtypes and units are in the
#: table of the docs' conventions page (from this module's docstring).
FIELDS = ("pos", "cell", "pbc", "atomic_numbers", "natoms", "tags", "fixed", "energy", "forces", "stress", "sid",
          "fid")

# OC20's historical names (AtomsToGraphs of 2020-2021 wrote `y` and `force`).
_ALIASES = {"energy": ("energy", "y"), "forces": ("forces", "force")}


class DataFormatError(ValueError):
    """A record or file that does not hold what its format promises.

    The message names the file and the record (or frame) index, then the problem.

    Example:
        >>> import pathlib, tempfile
        >>> from so2nn.data import open_dataset
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "frames.csv"
        >>> _ = path.write_text("")
        >>> open_dataset(path)  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        ...
        DataFormatError: .../frames.csv: unknown dataset file type (expected .lmdb, .extxyz, ...)
    """


def record_fields(record, where: str) -> dict:
    """The fields of a stored record: a PyG ``Data`` (current or PyG 1.x pickle) or a dict.

    PyG 1.x pickles unpickle into a ``Data`` whose ``__dict__`` holds the fields directly
    (no ``_store``); their unset attributes are ``None`` and their private counters
    (``__num_nodes__``) start with a double underscore. Both are left out.
    """
    if isinstance(record, Data):
        if "_store" in record.__dict__:
            return dict(record.to_dict())
        return {k: v for k, v in record.__dict__.items() if v is not None and not k.startswith("__")}
    if isinstance(record, dict):
        return dict(record)
    raise DataFormatError(f"{where}: holds a {type(record).__name__}, not a torch_geometric Data")


def _tensor(value, where: str, name: str) -> torch.Tensor:
    try:
        # np.array copies: ASE hands out read-only arrays, which torch warns about
        return value if torch.is_tensor(value) else torch.as_tensor(np.array(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise DataFormatError(f"{where}: field '{name}' is not numeric ({type(value).__name__})") from error


def _shaped(value, where: str, name: str, accepted: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """``value`` as a tensor of one of the ``accepted`` shapes, reshaped to the last one."""
    tensor = _tensor(value, where, name)
    if tuple(tensor.shape) not in accepted:
        expected = " or ".join(str(list(shape)) for shape in accepted)
        raise DataFormatError(f"{where}: field '{name}' must have shape {expected}, got {list(tensor.shape)}")
    return tensor.reshape(accepted[-1])


def _finite(tensor: torch.Tensor, where: str, name: str) -> torch.Tensor:
    if not bool(torch.isfinite(tensor).all()):
        raise DataFormatError(f"{where}: field '{name}' contains NaN or inf")
    return tensor


def _identifier(value):
    """``sid``/``fid`` as a plain Python int or str (one-element tensors and arrays unwrapped)."""
    if (torch.is_tensor(value) and value.numel() == 1) or (isinstance(value, np.ndarray) and value.size == 1):
        value = value.item()
    return int(value) if isinstance(value, np.integer) else value


# ASE's Voigt order: xx, yy, zz, yz, xz, xy
_VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def _full_tensor(value, where: str, name: str) -> torch.Tensor:
    """A ``[3, 3]`` float64 tensor from a full (``[3, 3]``, ``[1, 3, 3]``, ``[9]``) or, for
    ``stress``, a Voigt (``[6]``, ``[1, 6]``) form, checked finite and symmetric."""
    tensor = _finite(_tensor(value, where, name).double(), where, name)
    shape = tuple(tensor.shape)
    if shape in ((6,), (1, 6)) and name == "stress":
        voigt, tensor = tensor.reshape(6), tensor.new_zeros(3, 3)
        for k, (i, j) in enumerate(_VOIGT):
            tensor[i, j] = tensor[j, i] = voigt[k]
        return tensor
    if shape not in ((3, 3), (1, 3, 3), (9,), (1, 9)):
        forms = "[3, 3], [1, 3, 3] or [9]" + (" (full), or [6] (Voigt: xx, yy, zz, yz, xz, xy)"
                                              if name == "stress" else "")
        raise DataFormatError(f"{where}: field '{name}' must have shape {forms}, got {list(shape)}")
    tensor = tensor.reshape(3, 3)
    asymmetry = float((tensor - tensor.T).abs().max())
    if asymmetry > 1e-6 + 1e-4 * float(tensor.abs().max()):
        raise DataFormatError(f"{where}: field '{name}' is not symmetric (|{name} - {name}^T| up to "
                              f"{asymmetry:.3g}); a stress tensor is")
    return tensor


def _stress(fields: dict, where: str, cell: torch.Tensor) -> torch.Tensor | None:
    """The record's stress ``[1, 3, 3]`` (eV/A^3, ASE's sign) from ``stress`` or ``virial``."""
    stress, virial = fields.get("stress"), fields.get("virial")
    if stress is not None and virial is not None:
        raise DataFormatError(f"{where}: has both 'stress' and 'virial'; keep one")
    if stress is not None:
        return _full_tensor(stress, where, "stress").float().unsqueeze(0)
    if virial is None:
        return None
    volume = float(torch.linalg.det(cell[0].double()).abs())
    if volume < 1e-9:
        raise DataFormatError(f"{where}: field 'virial' needs a 3-d cell to become a stress (-virial / volume), "
                              f"but the cell is missing or singular")
    return (-_full_tensor(virial, where, "virial") / volume).float().unsqueeze(0)


def canonical_data(fields: dict, where: str, with_targets: bool = True, default_sid=None) -> Data:
    """Build the canonical item from a record's fields, checking every shape.

    Args:
        fields: field name -> value (tensors, arrays or numbers; OC20's ``y``/``force`` accepted;
            an optional ``stress`` or ``virial``, see the module docstring).
        where: names the file and record for error messages, e.g. ``"data.lmdb: record 7"``.
        with_targets: require ``energy`` and ``forces`` (``False`` for test splits without labels).
        default_sid: ``sid`` when the record has none.

    Raises:
        DataFormatError: a missing field, a wrong shape, a non-integer atomic number, NaN/inf, a bad stress.

    Example:
        >>> item = canonical_data({"pos": [[0.0, 0.0, 0.0]], "atomic_numbers": [8], "y": -1.5,
        ...                        "force": [[0.0, 0.0, 0.1]]}, "example")
        >>> item.energy, item.fixed, item.pbc
        (tensor([-1.5000]), tensor([False]), tensor([[False, False, False]]))
    """
    for name in ("pos", "atomic_numbers"):
        if name not in fields:
            raise DataFormatError(f"{where}: missing field '{name}'")
    pos = _tensor(fields["pos"], where, "pos")
    if pos.dim() != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
        raise DataFormatError(f"{where}: field 'pos' must have shape [N, 3] with N > 0, got {tuple(pos.shape)}")
    n = pos.shape[0]
    pos = _finite(pos.to(torch.float32), where, "pos")

    numbers = _shaped(fields["atomic_numbers"], where, "atomic_numbers", ((n,),))
    # OC20's early LMDBs store atomic numbers as floats
    if numbers.is_floating_point() and not bool((numbers == numbers.round()).all()):
        raise DataFormatError(f"{where}: field 'atomic_numbers' holds non-integer values")
    numbers = numbers.long()
    if bool((numbers < 1).any()) or bool((numbers > 118).any()):
        raise DataFormatError(f"{where}: field 'atomic_numbers' holds values outside 1..118")

    natoms = int(_shaped(fields.get("natoms", n), where, "natoms", ((), (1,))).item())
    if natoms != n:
        raise DataFormatError(f"{where}: field 'natoms' is {natoms} but 'pos' has {n} atoms")

    if fields.get("cell") is None:
        cell = torch.zeros(1, 3, 3)
    else:
        cell = _finite(_shaped(fields["cell"], where, "cell", ((3, 3), (1, 3, 3))).float(), where, "cell")
    spans_3d = bool(torch.linalg.det(cell[0].double()).abs() > 1e-9)
    if fields.get("pbc") is None:
        # OC20 does not store pbc: its systems are periodic in all three directions
        pbc = torch.full((1, 3), spans_3d)
    else:
        pbc = _shaped(fields["pbc"], where, "pbc", ((3,), (1, 3))).bool()
        if bool(pbc.any()) and not spans_3d:
            raise DataFormatError(f"{where}: 'pbc' is set but 'cell' is missing or singular")

    tags = fields.get("tags")
    tags = torch.zeros(n, dtype=torch.long) if tags is None else _shaped(tags, where, "tags", ((n,),)).long()
    fixed = fields.get("fixed")
    fixed = (torch.zeros(n, dtype=torch.bool) if fixed is None
             else _shaped(fixed, where, "fixed", ((n,),)).bool())

    data = Data(pos=pos, cell=cell, pbc=pbc, atomic_numbers=numbers, natoms=n, tags=tags, fixed=fixed)
    for name, (key, old) in _ALIASES.items():
        value = fields.get(key, fields.get(old))
        if value is None:
            if with_targets:
                raise DataFormatError(f"{where}: missing field '{name}' (OC20 also calls it '{old}')")
            continue
        if name == "energy":
            data.energy = _finite(_shaped(value, where, "energy", ((), (1,))).float(), where, "energy")
        else:
            data.forces = _finite(_shaped(value, where, "forces", ((n, 3),)).float(), where, "forces")
    stress = _stress(fields, where, cell)
    if stress is not None:
        data.stress = stress
    sid = fields.get("sid", default_sid)
    if sid is not None:
        data.sid = _identifier(sid)
    data.fid = _identifier(fields.get("fid", 0))
    return data


def atoms_to_data(atoms, where: str, energy: float | None = None, forces=None, sid=None, fid=0,
                  with_targets: bool = True, stress=None, virial=None) -> Data:
    r"""The canonical item of an ASE ``Atoms``, as OC20's preprocessing makes it.

    Positions are wrapped into the cell along periodic directions (as fairchem's
    ``AtomsToGraphs`` does before writing its LMDBs); ``tags`` come from ``atoms.get_tags()``
    and ``fixed`` from its ``FixAtoms`` constraints. ``energy`` and ``forces`` default to the
    attached calculator's results (forces without constraints applied, so fixed atoms keep
    theirs). ``stress`` (or ``virial``, in any form :func:`canonical_data` takes) defaults to a
    stress among the calculator's results, when it has one (never computed here).

    Example:
        >>> from ase.build import fcc100
        >>> from ase.calculators.emt import EMT
        >>> slab = fcc100("Cu", (2, 2, 2), vacuum=4.0, periodic=True)
        >>> slab.calc = EMT()
        >>> item = atoms_to_data(slab, "slab")
        >>> item.pos.shape, item.cell.shape, item.tags.tolist()
        (torch.Size([8, 3]), torch.Size([1, 3, 3]), [2, 2, 2, 2, 1, 1, 1, 1])
    """
    from ase.geometry import wrap_positions

    cell = np.array(atoms.get_cell(complete=True))
    pbc = np.array(atoms.pbc, dtype=bool)
    positions = atoms.get_positions()
    if pbc.any():
        positions = wrap_positions(positions, cell, pbc=pbc)  # ASE's eps keeps atoms on a face in place
    if with_targets and (energy is None or forces is None):
        if atoms.calc is None:
            raise DataFormatError(f"{where}: has no energy and forces (no calculator results)")
        try:
            energy = atoms.get_potential_energy(apply_constraint=False) if energy is None else energy
            forces = atoms.get_forces(apply_constraint=False) if forces is None else forces
        except Exception as error:  # a SinglePointCalculator without the property
            raise DataFormatError(f"{where}: has no energy or forces ({error})") from error
    if stress is None and atoms.calc is not None:
        stress = getattr(atoms.calc, "results", {}).get("stress")
    fields = dict(pos=positions, cell=cell if atoms.cell.rank > 0 else None, pbc=pbc,
                  atomic_numbers=atoms.get_atomic_numbers(), tags=atoms.get_tags(), fixed=fixed_mask(atoms),
                  energy=energy, forces=forces, stress=stress, virial=virial, sid=sid, fid=fid)
    present = {k: v for k, v in fields.items() if v is not None}
    return canonical_data(present, where, with_targets, default_sid=sid)


def data_to_atoms(data: Data):
    """The ASE ``Atoms`` of a canonical item: numbers, positions, cell, pbc, tags, ``FixAtoms``,
    and its energy and forces (and stress, in Voigt form) as a ``SinglePointCalculator`` when
    it has them.

    Example:
        >>> item = canonical_data({"pos": [[0.0, 0.0, 0.0], [0.0, 0.0, 0.97]], "atomic_numbers": [8, 1],
        ...                        "fixed": [True, False]}, "OH", with_targets=False)
        >>> atoms = data_to_atoms(item)
        >>> atoms.get_chemical_formula(), atoms.constraints
        ('HO', [FixAtoms(indices=[0])])
    """
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    atoms = Atoms(numbers=data.atomic_numbers.numpy(), positions=data.pos.double().numpy(),
                  cell=data.cell.reshape(3, 3).double().numpy(), pbc=data.pbc.reshape(3).numpy(),
                  tags=data.tags.numpy())
    fixed = data.fixed.numpy()
    if fixed.any():
        atoms.set_constraint(FixAtoms(mask=fixed))
    if getattr(data, "energy", None) is not None and getattr(data, "forces", None) is not None:
        results = dict(energy=float(data.energy.reshape(-1)[0]), forces=data.forces.double().numpy())
        if getattr(data, "stress", None) is not None:
            full = data.stress.reshape(3, 3).double().numpy()
            results["stress"] = np.array([full[i, j] for i, j in _VOIGT])
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms
