r"""The ASE calculator of so2nn models (any :class:`~so2nn.models.AtomisticModel`)."""

from __future__ import annotations

import os

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from .._ase import fixed_atoms_mask
from ..models import CompiledModel, evaluation_model, read_inputs

__all__ = ["EquiformerV2Calculator", "So2nnCalculator", "fixed_atoms_mask"]



class So2nnCalculator(Calculator):
    r"""ASE calculator that evaluates an so2nn model on an ``Atoms``.

    .. math::

        E = \mathrm{model}(Z, r, A), \qquad
        F_i = \text{the model's forces (a force head, or } -\partial E / \partial r_i)

    Any model that offers :class:`~so2nn.models.AtomisticModel` works (EquiformerV2 or a model
    of your own, registered with :func:`~so2nn.models.register_model` to load it from a
    checkpoint). Results: ``energy`` (a float; ``free_energy`` is the same), ``forces``
    (``[N, 3]``, a float64 numpy array) and ``stress`` (see below), in eV, eV/Angstrom and
    eV/Angstrom^3 for a model that carries its training-set normalisation (so2nn checkpoints
    and imported fairchem ones do); each is in ``implemented_properties`` when the model's
    ``output_names`` has it.
    ``EquiformerV2Calculator`` is the same class under its earlier name.

    Stress follows ASE's conventions: :math:`\sigma = \frac{1}{V}\,\partial E/\partial\varepsilon`
    (positive = tensile; the pressure is :math:`-\operatorname{tr}\sigma/3`), stored in Voigt
    order ``xx yy zz yz xz xy``; ``atoms.get_stress(voigt=False)`` gives the ``3 x 3`` matrix.
    Conservative EquiformerV2 models (``direct_forces=False``) provide it through the strain
    derivative of the energy. As for ASE's own calculators, it needs a volume: ``Atoms`` with
    three cell vectors and a periodic direction; otherwise (a molecule, a 2D cell) asking for
    it raises :class:`~ase.calculators.calculator.PropertyNotImplementedError`, as
    ``get_stress`` does for a model without stress.

    Args:
        model: a model, or a checkpoint (path or loaded dict) read by
            :func:`~so2nn.models.load_model`: so2nn's own (a model's ``save``, the training
            example's ``model.pt``) or an official fairchem EquiformerV2 one.
        device: where to run. Default: where the given model's weights are; for a checkpoint,
            ``"cuda"`` when available, else ``"cpu"``.
        dtype: ``torch.float32`` or ``torch.float64`` (or their names). Default: the given
            model's dtype; ``float32`` for a checkpoint. Use ``float64`` for finite-difference
            checks and long molecular dynamics.
        use_ema: read a checkpoint's EMA weights when it has them.
        trust: a checkpoint file is read as data only (no code named in it runs); ``True``
            allows a full unpickle, for a file whose origin you trust.
        compile: evaluate through ``torch.compile(model, dynamic=True)``: one compiled graph for
            every atom and edge count. The first call compiles (seconds to a minute, printed once
            on standard error); later calls run the compiled code.
        cuda_graphs: pad every call's inputs to a size bucket (:func:`~so2nn.models.pad_inputs`:
            the padding contributes nothing to the results) and run
            ``torch.compile(model, mode="reduce-overhead", dynamic=False)``, which captures one CUDA
            graph per bucket and replays it: the fastest way to run a relaxation or molecular
            dynamics of one structure on a GPU. Each new bucket's warm-up is printed. Needs a CUDA
            ``device`` (a ValueError says so otherwise); ``compile`` is then implied.
        compile_backend: :func:`torch.compile`'s backend with ``compile=True``: ``"inductor"``
            (default), or ``"aot_eager"`` / ``"eager"``, which compile fast and generate no code
            (for tests). See :class:`~so2nn.models.CompiledModel`.
        **config_changes: inference options applied when loading a checkpoint
            (``grid_resolution``, ``graph_mode``, ...).

    The calculator moves the model to ``device`` and ``dtype`` and puts it in eval mode.

    The inputs taken from the ``Atoms`` are exactly what the model reads
    (:data:`~so2nn.models.INPUT_FIELDS`):

    * ``numbers`` (each must have a row in the model's embedding table, ``1 <= Z < max_num_elements``);
    * ``positions``, ``pbc`` and ``cell``: a direction that is periodic needs a non-zero cell
      vector; zero vectors along non-periodic directions (ASE's 2D slabs) are completed with
      orthogonal unit vectors, which no edge uses;
    * the graph, see below. Tags and constraints are not model inputs: the returned forces are
      those of every atom, and ASE's ``atoms.get_forces()`` zeroes those that
      :class:`~ase.constraints.FixAtoms` holds.

    The radius graph (the model's own, via its ``build_graph``) is built once per geometry and
    passed to the model as ``edge_index`` / ``cell_offsets``: when numbers, positions, cell and
    pbc are exactly those of the last graph (a change of tags or magnetic moments, or a
    :meth:`~ase.calculators.calculator.Calculator.reset`), the cached graph is reused. An atom
    without neighbours is valid input (an isolated atom: zero force). Evaluation runs under
    :class:`torch.no_grad`; a conservative model takes its gradient inside its own forward.

    Example:
        >>> from ase.build import molecule
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> model = EquiformerV2(EquiformerV2Config.tiny())
        >>> atoms = molecule("H2O")
        >>> atoms.calc = So2nnCalculator(model, device="cpu", dtype=torch.float64)
        >>> atoms.get_forces().shape
        (3, 3)
        >>> isinstance(atoms.get_potential_energy(), float)
        True
    """

    implemented_properties = ["energy", "free_energy", "forces"]  # narrowed per instance to the model's outputs

    def __init__(
        self,
        model: nn.Module | str | os.PathLike | dict,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        use_ema: bool = True,
        trust: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
        compile_backend: str = "inductor",
        **config_changes,
    ) -> None:
        super().__init__()
        self.model, self.device, self.dtype = evaluation_model(model, device, dtype, use_ema=use_ema, trust=trust,
                                                               **config_changes)
        outputs = set(self.model.output_names)
        if "energy" not in outputs:
            raise ValueError(f"the model's outputs {sorted(outputs)} have no 'energy'")
        self._compiled = _compiled_model(self.model, compile, cuda_graphs, compile_backend)
        self.implemented_properties = ["energy", "free_energy"] + [p for p in ("forces", "stress") if p in outputs]
        self._graph_key: tuple | None = None
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None

    def calculate(
        self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        # ASE's rule (its EMT's too): a stress needs a volume, three cell vectors.
        has_volume = bool(self.atoms.pbc.any()) and self.atoms.cell.rank == 3
        if "stress" in properties and "stress" in self.implemented_properties and not has_volume:
            raise PropertyNotImplementedError(
                f"stress needs a periodic cell with three vectors (a volume); these Atoms have "
                f"pbc={self.atoms.pbc.tolist()} and a cell of rank {self.atoms.cell.rank}"
            )
        fields = self._fields(self.atoms)
        fields["edge_index"], fields["cell_offsets"] = self._cached_graph(fields)
        with torch.no_grad():
            out = (self.model if self._compiled is None else self._compiled)(**fields)
        energy = float(out["energy"][0])
        self.results = {"energy": energy, "free_energy": energy}
        if "forces" in self.implemented_properties:
            self.results["forces"] = out["forces"].detach().to("cpu", torch.float64).numpy()
        if "stress" in self.implemented_properties and has_volume:
            stress = out["stress"][0].detach().to("cpu", torch.float64).numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

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


def _compiled_model(model: nn.Module, compile: bool, cuda_graphs: bool, backend: str) -> CompiledModel | None:
    """The :class:`~so2nn.models.CompiledModel` that the calculator and the torch-sim model
    evaluate through (None: the model itself), from their ``compile``, ``cuda_graphs`` and
    ``compile_backend`` options."""
    if not (compile or cuda_graphs):
        if backend != "inductor":
            raise ValueError(f"compile_backend={backend!r} applies with compile=True or cuda_graphs=True")
        return None
    return CompiledModel(model, cuda_graphs=cuda_graphs, backend=backend)


#: The calculator's earlier name, kept for existing code: the same class.
EquiformerV2Calculator = So2nnCalculator
