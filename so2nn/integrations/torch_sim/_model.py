r"""torch-sim's model interface for so2nn models."""

from __future__ import annotations

import os

import torch
import torch_sim as ts
from torch import nn
from torch_sim.models.interface import ModelInterface

from ...models import CompiledModel, evaluation_model
from . import _compat

__all__ = ["TorchSimModel"]


class TorchSimModel(ModelInterface):
    r"""An so2nn model as a torch-sim model: energies, forces (and stress) of many systems at once.

    .. math::

        E_b = \mathrm{model}(Z, r, A)_b, \qquad F_i = \text{the model's forces}, \qquad
        \sigma_b = \text{the model's stress (when it has one)}

    for every system :math:`b` of a torch-sim ``SimState``, evaluated in one forward over the
    whole batch. Outputs: ``"energy" [n_systems]`` (eV), ``"forces" [n_atoms, 3]`` (eV/A) and,
    when ``"stress"`` is in the model's ``output_names`` and the systems are periodic,
    ``"stress" [n_systems, 3, 3]`` (eV/A^3, ASE's sign), all detached (torch-sim's optimisers and integrators never
    differentiate through the model).

    **Graph.** Every call builds the neighbour graph of the state with the model's own
    ``build_graph`` (its cutoff, neighbour cap and ``graph_mode``), per system: no edge joins
    two systems. So the graph follows the atoms at every optimiser or MD step; there is no
    skin and no stale neighbour list.

    **Fixed atoms.** torch-sim 0.5.1 and later hold atoms with their own constraints
    (``state.constraints``, ``FixAtoms``), which :func:`~so2nn.integrations.torch_sim.state_from_atoms`
    sets from ASE's :class:`~ase.constraints.FixAtoms`; the model's forces are then those of every
    atom, as the model computes them. torch-sim 0.3 has no constraints: there ``fixed``
    (``[n_atoms]`` bool, in the order of the states this model is given) zeroes the forces on
    those atoms, which holds them in place under FIRE;
    :func:`~so2nn.integrations.torch_sim.relax_batch` and :func:`~so2nn.integrations.torch_sim.run_md`
    set it from each system's fixed atoms and keep it in step with the state (MD also zeroes
    their momenta). A state with another atom count than ``fixed`` raises, and so does setting
    ``fixed`` on a release with constraints (use the constraint there).

    **Cell.** torch-sim stores the cell as column vectors; the model reads
    ``state.row_vector_cell`` (the lattice vectors as rows, as ASE). torch-sim's ``pbc``
    (one bool in 0.3, ``[3]`` in 0.6) applies to every system.

    Args:
        model: an so2nn model (any :class:`~so2nn.models.AtomisticModel`), or a checkpoint (path
            or loaded dict) that :func:`~so2nn.models.load_model` reads: so2nn's own or an
            official fairchem EquiformerV2 one.
        device: where to run. Default: where the model's weights are; for a checkpoint,
            ``"cuda"`` when available, else ``"cpu"``.
        dtype: ``torch.float32`` or ``torch.float64`` (or their names); torch-sim states must
            use the same. Default: the model's dtype; ``float32`` for a checkpoint.
        fixed: ``[n_atoms]`` bool, the atoms held in place on torch-sim 0.3 (see above), or None.
        compile: evaluate through ``torch.compile(model, dynamic=True)``: one compiled graph for
            every batch, atom and edge count (the first call compiles; its time is printed once on
            standard error). For large batches on a GPU.
        cuda_graphs: pad every call's batch to a size bucket (:func:`~so2nn.models.pad_inputs`:
            the padding contributes nothing to the results) and run
            ``torch.compile(model, mode="reduce-overhead", dynamic=False)``, which captures one CUDA
            graph per bucket (and number of systems) and replays it: for small batches, where an
            eager model is bound by kernel launches. Each new bucket's warm-up is printed. Needs a
            CUDA ``device`` (a ValueError says so otherwise); ``compile`` is then implied.
        compile_backend: :func:`torch.compile`'s backend with ``compile=True``: ``"inductor"``
            (default), or ``"aot_eager"`` / ``"eager"`` (fast to compile, no code generated; for
            tests). See :class:`~so2nn.models.CompiledModel`.
        use_ema, trust, config_changes: as :func:`~so2nn.models.load_model` (a checkpoint only).

    Example:
        >>> import torch_sim as ts
        >>> from ase.build import bulk, molecule
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> model = EquiformerV2(EquiformerV2Config.tiny(max_radius=4.0))
        >>> sim_model = TorchSimModel(model, dtype=torch.float64)
        >>> state = ts.io.atoms_to_state([bulk("Cu", cubic=True), bulk("Al", cubic=True) * (2, 1, 1)],
        ...                              sim_model.device, sim_model.dtype)
        >>> out = sim_model(state)
        >>> out["energy"].shape, out["forces"].shape
        (torch.Size([2]), torch.Size([12, 3]))
    """

    def __init__(
        self,
        model: nn.Module | str | os.PathLike | dict,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        fixed: torch.Tensor | None = None,
        use_ema: bool = True,
        trust: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
        compile_backend: str = "inductor",
        **config_changes,
    ) -> None:
        super().__init__()
        self.model, self._device, self._dtype = evaluation_model(model, device, dtype, use_ema=use_ema, trust=trust,
                                                                 **config_changes)
        outputs = set(self.model.output_names)
        if not {"energy", "forces"} <= outputs:
            raise ValueError(f"a torch-sim model needs energy and forces; the model's outputs are {sorted(outputs)}")
        self._compute_forces = True
        self._compute_stress = "stress" in outputs
        # EquiformerV2 keeps at most max_neighbors edges per atom: memory grows with the atom
        # count, not with the density (torch-sim's autobatcher sizes batches by this)
        capped = getattr(self.model.config, "max_neighbors", None) is not None
        self._memory_scales_with = "n_atoms" if capped else "n_atoms_x_density"
        self.fixed = fixed
        if not (compile or cuda_graphs) and compile_backend != "inductor":
            raise ValueError(f"compile_backend={compile_backend!r} applies with compile=True or "
                             "cuda_graphs=True")
        self._compiled = (CompiledModel(self.model, cuda_graphs=cuda_graphs, backend=compile_backend)
                          if compile or cuda_graphs else None)

    @property
    def fixed(self) -> torch.Tensor | None:
        """``[n_atoms]`` bool: atoms whose forces are zeroed (held in place; torch-sim 0.3), or None."""
        return self._fixed

    @fixed.setter
    def fixed(self, mask: torch.Tensor | None) -> None:
        if mask is not None and _compat.HAS_CONSTRAINTS:
            raise ValueError("this torch-sim release holds atoms with its own constraints: set state.constraints "
                             "(torch_sim.constraints.FixAtoms), or build the state with "
                             "so2nn.integrations.torch_sim.state_from_atoms, instead of TorchSimModel.fixed")
        if mask is not None:
            mask = torch.as_tensor(mask, device=self._device)
            if mask.dim() != 1 or mask.dtype != torch.bool:
                raise ValueError(f"fixed must be a [n_atoms] bool tensor, "
                                 f"got {mask.dtype} of shape {tuple(mask.shape)}")
        self._fixed = mask

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        """Energy ``[n_systems]``, forces ``[n_atoms, 3]`` (and stress ``[n_systems, 3, 3]``) of ``state``."""
        if not isinstance(state, ts.SimState):
            state = ts.SimState(**state)
        if state.positions.dtype != self._dtype:
            raise ValueError(f"the state is {state.positions.dtype} but the model runs in {self._dtype}: "
                             "build the state with the model's dtype")
        num_systems = state.n_systems
        pbc = _compat.state_pbc(state, num_systems)
        fields = {
            "pos": state.positions,
            "atomic_numbers": state.atomic_numbers.long(),
            "batch": state.system_idx.long(),
            "natoms": torch.bincount(state.system_idx, minlength=num_systems),
            "pbc": pbc,
        }
        if bool(pbc.any()):
            fields["cell"] = state.row_vector_cell
        with torch.no_grad():
            out = (self.model if self._compiled is None else self._compiled)(**fields)
        result = {"energy": out["energy"].detach(), "forces": out["forces"].detach()}
        if self._compute_stress and "stress" in out:  # a model's stress needs periodic systems
            result["stress"] = out["stress"].detach()
        if self._fixed is not None:
            if self._fixed.shape[0] != state.n_atoms:
                raise ValueError(f"fixed has {self._fixed.shape[0]} entries but the state has {state.n_atoms} atoms: "
                                 "set model.fixed for the state it evaluates")
            result["forces"] = result["forces"].masked_fill(self._fixed[:, None], 0.0)
        return result

    def extra_repr(self) -> str:
        compiled = "" if self._compiled is None else \
            f", compiled={'cuda_graphs' if self._compiled.cuda_graphs else 'dynamic'}"
        return f"device={self._device}, dtype={self._dtype}, stress={self._compute_stress}{compiled}"
