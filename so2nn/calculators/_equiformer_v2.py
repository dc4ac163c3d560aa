r"""The ASE calculator of :class:`~so2nn.models.EquiformerV2`."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.constraints import FixAtoms
from ase.data import chemical_symbols

from ..models import EquiformerV2
from ..models._inputs import read_inputs

__all__ = ["EquiformerV2Calculator"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def fixed_atoms_mask(atoms: Atoms) -> np.ndarray:
    """``[N]`` bool, True for the atoms that an :class:`ase.constraints.FixAtoms` holds in place
    (OC20's ``fixed``); other constraints do not count.

    Example:
        >>> from ase.build import molecule
        >>> atoms = molecule("H2O")
        >>> atoms.set_constraint(FixAtoms(indices=[0]))
        >>> fixed_atoms_mask(atoms).tolist()
        [True, False, False]
    """
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            fixed[constraint.index] = True
    return fixed


class EquiformerV2Calculator(Calculator):
    r"""ASE calculator that evaluates an :class:`~so2nn.models.EquiformerV2` on an ``Atoms``.

    .. math::

        E = \mathrm{model}(Z, r, A), \qquad
        F_i = \text{the direct force head}, \ \text{or} \
        -\partial E / \partial r_i \ \ (\texttt{config.direct\_forces = False}).

    Results: ``energy`` (a float; ``free_energy`` is the same) and ``forces`` (``[N, 3]``, a
    float64 numpy array), in eV and eV/Angstrom for a model whose config carries its training-set
    normalisation (so2nn checkpoints and imported fairchem ones do). Stress is not implemented:
    the model does not provide it.

    Args:
        model: an :class:`~so2nn.models.EquiformerV2`, or a checkpoint (path or loaded dict):
            so2nn's own (:meth:`~so2nn.models.EquiformerV2.save`, the training example's ``model.pt``) or an
            official fairchem one, read by :meth:`~so2nn.models.EquiformerV2.from_checkpoint`.
        device: where to run. Default: where the given model's weights are; for a checkpoint,
            ``"cuda"`` when available, else ``"cpu"``.
        dtype: ``torch.float32`` or ``torch.float64`` (or their names). Default: the given
            model's dtype; ``float32`` for a checkpoint. Use ``float64`` for finite-difference
            checks and long molecular dynamics.
        use_ema: read a checkpoint's EMA weights when it has them.
        **config_changes: inference options applied when loading a checkpoint
            (``grid_resolution``, ``graph_mode``, ...).

    The calculator moves the model to ``device`` and ``dtype`` and puts it in eval mode.

    Inputs taken from the ``Atoms``:

    * ``numbers`` (each must have a row in the model's embedding table, ``1 <= Z < max_num_elements``);
    * ``positions``, ``pbc`` and ``cell``: a direction that is periodic needs a non-zero cell
      vector; zero vectors along non-periodic directions (ASE's 2D slabs) are completed with
      orthogonal unit vectors, which no edge uses;
    * ``tags`` (OC20: 0 subsurface, 1 surface, 2 adsorbate) and the atoms held by
      :class:`~ase.constraints.FixAtoms` (OC20's ``fixed``), passed to the model as ``tags`` and
      ``fixed``. The released EquiformerV2 reads neither; they count as changes of the system so
      that a model that does never sees stale results. The returned forces are those of every
      atom; ASE's ``atoms.get_forces()`` then zeroes the fixed ones.

    The radius graph (the model's ``max_radius``, ``max_neighbors`` and ``graph_mode``, via
    :meth:`~so2nn.models.EquiformerV2.build_graph`) is built once per geometry and passed to the model as
    ``edge_index`` / ``cell_offsets``: when numbers, positions, cell and pbc are exactly those
    of the last graph (a change of tags, fixed atoms or magnetic moments, or a :meth:`~ase.calculators.calculator.Calculator.reset`),
    the cached graph is reused. Evaluation runs under :class:`torch.no_grad`; a conservative
    model takes its gradient inside its own forward.

    Example:
        >>> from ase.build import molecule
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> model = EquiformerV2(EquiformerV2Config(
        ...     lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
        ...     attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
        ...     num_distance_basis=16, max_radius=5.0))
        >>> atoms = molecule("H2O")
        >>> atoms.calc = EquiformerV2Calculator(model, device="cpu", dtype=torch.float64)
        >>> atoms.get_forces().shape
        (3, 3)
        >>> isinstance(atoms.get_potential_energy(), float)
        True
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        model: EquiformerV2 | str | os.PathLike | dict,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        use_ema: bool = True,
        **config_changes,
    ) -> None:
        super().__init__()
        if isinstance(model, EquiformerV2):
            if config_changes:
                raise ValueError(
                    f"config changes {sorted(config_changes)} apply when loading a checkpoint; "
                    "for a model object, build it with them"
                )
            weight = next(model.parameters())
            default_device, default_dtype = weight.device, weight.dtype
        elif isinstance(model, (str, os.PathLike, dict)):
            model = EquiformerV2.from_checkpoint(model, use_ema=use_ema, **config_changes)
            default_device = "cuda" if torch.cuda.is_available() else "cpu"
            default_dtype = torch.float32
        else:
            raise TypeError(
                f"model must be an EquiformerV2 or a checkpoint path/dict, got {type(model).__name__}"
            )
        self.device = torch.device(default_device if device is None else device)
        self.dtype = _as_dtype(default_dtype if dtype is None else dtype)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self._graph_key: tuple | None = None
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's system changes, plus ``"tags"`` and ``"fixed"`` (model inputs in OC20)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None:
            if not np.array_equal(self.atoms.get_tags(), atoms.get_tags()):
                changes.append("tags")
            if not np.array_equal(fixed_atoms_mask(self.atoms), fixed_atoms_mask(atoms)):
                changes.append("fixed")
        return changes

    def calculate(
        self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        fields = self._fields(self.atoms)
        fields["edge_index"], fields["cell_offsets"] = self._cached_graph(fields)
        with torch.no_grad():
            out = self.model(**fields)
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().to("cpu", torch.float64).numpy(),
        }

    def _fields(self, atoms: Atoms) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for one system, after checking what an ``Atoms`` can get wrong."""
        if len(atoms) == 0:
            raise ValueError("the Atoms object is empty")
        numbers = atoms.numbers
        limit = self.model.config.max_num_elements
        bad = np.flatnonzero((numbers < 1) | (numbers >= limit))
        if bad.size:
            i = int(bad[0])
            symbol = chemical_symbols[numbers[i]] if 0 <= numbers[i] < len(chemical_symbols) else "?"
            raise ValueError(
                f"atom {i} ({symbol}, Z={numbers[i]}) is not an element this model knows: "
                f"its embedding table covers Z = 1..{limit - 1}"
            )
        positions = atoms.positions
        finite = np.isfinite(positions).all(axis=1)
        if not finite.all():
            raise ValueError(f"atom {int(np.flatnonzero(~finite)[0])} has a NaN or inf position")

        def as_tensor(x, dtype=None) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x), dtype=dtype, device=self.device)

        fields = {
            "pos": as_tensor(positions, self.dtype),
            "atomic_numbers": as_tensor(numbers, torch.long),
            "natoms": torch.tensor([len(atoms)], device=self.device),
            "pbc": as_tensor(atoms.pbc, torch.bool).view(1, 3),
            "tags": as_tensor(atoms.get_tags(), torch.long),
            "fixed": as_tensor(fixed_atoms_mask(atoms), torch.long),
        }
        cell = _periodic_cell(atoms)
        if cell is not None:
            fields["cell"] = as_tensor(cell, self.dtype).view(1, 3, 3)
        return fields

    def _cached_graph(self, fields: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(edge_index, cell_offsets)`` of these inputs: the last graph if its geometry is the same."""
        names = ("atomic_numbers", "pos", "cell", "pbc")
        key = tuple(fields[k].cpu().numpy().copy() if k in fields else None for k in names)
        if self._graph_key is None or not all(_same(a, b) for a, b in zip(key, self._graph_key)):
            self._graph = self.model.build_graph(read_inputs(None, fields, self.model.config))
            self._graph_key = key
        return self._graph


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _periodic_cell(atoms: Atoms) -> np.ndarray | None:
    """The ``[3, 3]`` cell of a periodic ``Atoms`` (None for a molecule), completed along
    non-periodic directions; an error names a periodic direction without a cell vector."""
    pbc = atoms.pbc
    if not pbc.any():
        return None
    cell = np.array(atoms.cell)
    missing = [k for k in range(3) if pbc[k] and not np.linalg.norm(cell[k]) > 0]
    if missing:
        raise ValueError(
            f"Atoms have pbc={pbc.tolist()} but no cell vector along periodic direction(s) {missing}: "
            "set atoms.cell, or atoms.pbc = False for a molecule"
        )
    cell = np.array(atoms.cell.complete())
    if abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError(
            f"the cell of these periodic Atoms is singular (its vectors must span 3D): {cell.tolist()}"
        )
    return cell


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype
