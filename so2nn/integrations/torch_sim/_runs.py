r"""Batched relaxation and molecular dynamics of ASE structures through torch-sim."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch_sim as ts
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from . import _compat
from ._model import TorchSimModel
from ._state import as_atoms_list, state_and_fixed

__all__ = ["MDRun", "Relaxation", "relax_batch", "run_md"]


@dataclass
class Relaxation:
    """One system's relaxation by :func:`relax_batch`.

    Attributes:
        atoms: the relaxed structure (a copy of the input with its tags and constraints; the
            model's energy and forces attached as a single-point calculator).
        energy: the model's energy at ``atoms`` (eV).
        max_force: the largest force on a free atom there (eV/A); with the cell relaxed, the
            largest of that and the cell's (virial per atom, ASE's ``UnitCellFilter``).
        steps: FIRE steps taken (model evaluations minus one).
        converged: ``max_force <= fmax`` reached within ``max_steps``.
    """

    atoms: Atoms
    energy: float
    max_force: float
    steps: int
    converged: bool


def _as_sim_model(model, dtype) -> TorchSimModel:
    return model if isinstance(model, TorchSimModel) else TorchSimModel(model, dtype=dtype)


def relax_batch(
    model,
    systems: Sequence[Atoms],
    *,
    fmax: float = 0.05,
    max_steps: int = 200,
    relax_cell: bool = False,
    batch_size: int | None = None,
    max_step: float = 0.2,
    dt_max: float = 1.0,
    dt_start: float = 0.1,
    progress: bool = False,
) -> list[Relaxation]:
    r"""Relax many structures at once with torch-sim's FIRE through one model.

    FIRE (ASE's flavour: at most ``max_step`` A per atom and step) runs on a batch of up to
    ``batch_size`` systems (default: all), each with its own time step and mixing, so a
    system's trajectory is the one it would have alone; a system leaves the batch when the
    largest force on its free atoms is at most ``fmax`` (or after ``max_steps``), and the next
    waiting system takes its place. Atoms that a :class:`~ase.constraints.FixAtoms` (or an so2nn
    data item's ``fixed`` field) holds, OC20's subsurface, get zero force and do not move:
    torch-sim's own ``FixAtoms`` constraint holds them (0.5.1 and later), or on torch-sim 0.3 the
    model zeroes their forces (:attr:`~so2nn.integrations.torch_sim.TorchSimModel.fixed`). With
    ``relax_cell``, the cell relaxes too (torch-sim's unit-cell filter, ASE's ``UnitCellFilter``),
    which needs a model with a stress output. The neighbour graph is rebuilt by the model at every
    step, so it follows the atoms.

    Args:
        model: a :class:`TorchSimModel`, or what it accepts (an so2nn model or checkpoint;
            then float64 for a model object's own dtype).
        systems: ASE structures or so2nn data items, all periodic or none (one ``pbc`` per
            torch-sim state); a constraint other than ``FixAtoms`` raises.
        fmax: convergence threshold on the largest free-atom force (eV/A).
        max_steps: FIRE steps at most per system.
        relax_cell: relax the cell too.
        batch_size: systems evaluated together (None: all).
        max_step, dt_max, dt_start: FIRE's parameters (ASE's defaults).
        progress: show a progress bar of finished systems (tqdm).

    Returns:
        One :class:`Relaxation` per input system, in order.

    Example:
        >>> from ase.build import fcc111, add_adsorbate
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> model = EquiformerV2(EquiformerV2Config.tiny(max_radius=4.0))
        >>> slabs = [fcc111(metal, size=(2, 2, 2), vacuum=5.0, periodic=True) for metal in ("Cu", "Pt")]
        >>> for slab in slabs:
        ...     add_adsorbate(slab, "O", 1.5, "fcc")
        >>> results = relax_batch(TorchSimModel(model, dtype=torch.float64), slabs, fmax=0.1, max_steps=3)
        >>> [len(r.atoms) for r in results], [r.steps <= 3 for r in results]
        ([9, 9], [True, True])
    """
    if not fmax > 0 or max_steps < 0:
        raise ValueError(f"fmax must be > 0 and max_steps >= 0, got fmax={fmax}, max_steps={max_steps}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    systems = as_atoms_list(systems)
    model = _as_sim_model(model, None)
    if relax_cell and not model.compute_stress:
        raise ValueError("relax_cell needs a model with a stress output ('stress' in its output_names)")
    init, step = _compat.fire(model, relax_cell=relax_cell, max_step=max_step, dt_max=dt_max, dt_start=dt_start)
    waiting = deque(range(len(systems)))
    capacity = len(systems) if batch_size is None else batch_size
    results: list[Relaxation | None] = [None] * len(systems)
    bar = _progress(len(systems), progress)

    def retire(batch: _Batch) -> _Batch:
        """Take the converged (or out of steps) systems out of the batch, into ``results``."""
        largest = _largest_forces(batch.state, len(batch.ids), relax_cell)
        done = [k for k in range(len(batch.ids)) if largest[k] <= fmax or batch.steps[k] >= max_steps]
        for k in done:
            results[batch.ids[k]] = _finish(systems[batch.ids[k]], batch.state[[k]], float(largest[k]),
                                            batch.steps[k], bool(largest[k] <= fmax), relax_cell)
        bar.update(len(done))
        return batch.without(done)

    def advance(batch: _Batch) -> _Batch:
        _zero_forces_on(model, batch.fixed)
        return _Batch(step(batch.state), batch.fixed, batch.ids, [s + 1 for s in batch.steps])

    batch = _Batch(None, None, [], [])
    try:
        while waiting or batch.ids:
            while waiting and len(batch.ids) < capacity:
                new = [waiting.popleft() for _ in range(min(capacity - len(batch.ids), len(waiting)))]
                state, fixed = state_and_fixed([systems[i] for i in new], model.device, model.dtype)
                _zero_forces_on(model, fixed)
                arrivals = retire(_Batch(init(state), fixed, new, [0] * len(new)))
                # torch-sim's FIRE takes a system's first step (velocities not yet set) in a
                # branch that skips the time-step update of every system in the batch: newcomers
                # take theirs on their own, so that each trajectory is the one it has alone
                if arrivals.ids:
                    batch = batch.join(advance(arrivals))
            if batch.ids:
                batch = retire(batch)
            if batch.ids:
                batch = advance(batch)
    finally:
        bar.close()
        _zero_forces_on(model, None)
    return results


def _zero_forces_on(model: TorchSimModel, fixed: torch.Tensor | None) -> None:
    """torch-sim 0.3 has no constraints: the model zeroes the forces on the fixed atoms of the
    state it evaluates next (``fixed`` in that state's atom order)."""
    if not _compat.HAS_CONSTRAINTS:
        model.fixed = fixed


@dataclass
class _Batch:
    """The systems being relaxed: their state, fixed-atom mask, input indices and steps taken."""

    state: object
    fixed: torch.Tensor | None
    ids: list[int]
    steps: list[int]

    def without(self, done: list[int]) -> _Batch:
        if not done:
            return self
        keep = [k for k in range(len(self.ids)) if k not in set(done)]
        if not keep:
            return _Batch(None, None, [], [])
        atoms = torch.isin(self.state.system_idx, torch.tensor(keep, device=self.state.system_idx.device))
        return _Batch(self.state[keep], self.fixed[atoms], [self.ids[k] for k in keep], [self.steps[k] for k in keep])

    def join(self, other: _Batch) -> _Batch:
        if not self.ids:
            return other
        return _Batch(_compat.concatenate([self.state, other.state]), torch.cat([self.fixed, other.fixed]),
                      self.ids + other.ids, self.steps + other.steps)


def _largest_forces(state, num_systems: int, relax_cell: bool) -> torch.Tensor:
    """``[B]``: the largest atom force norm per system (and the cell's, when it relaxes)."""
    norms = state.forces.norm(dim=1)
    largest = torch.zeros(num_systems, dtype=norms.dtype, device=norms.device)
    largest = largest.scatter_reduce(0, state.system_idx.long(), norms, reduce="amax")
    if relax_cell:
        largest = torch.maximum(largest, state.cell_forces.norm(dim=2).amax(dim=1))
    return largest.cpu()


def _finish(start: Atoms, state, largest: float, steps: int, converged: bool, relax_cell: bool) -> Relaxation:
    atoms = start.copy()
    atoms.set_positions(state.positions.detach().cpu().double().numpy(), apply_constraint=False)
    if relax_cell:
        atoms.set_cell(state.row_vector_cell[0].detach().cpu().double().numpy(), scale_atoms=False)
    energy = float(state.energy[0])
    atoms.calc = SinglePointCalculator(atoms, energy=energy, free_energy=energy,
                                       forces=state.forces.detach().cpu().double().numpy())
    return Relaxation(atoms, energy, largest, steps, converged)


class _NoBar:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, show: bool):
    if not show:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="relaxed", unit="system")


@dataclass
class MDRun:
    """A molecular-dynamics run of :func:`run_md`: energies per recorded step and system.

    Attributes:
        atoms: the final structures (positions and velocities set), in input order.
        time_fs: ``[T]`` the recorded times (fs).
        potential_energy, kinetic_energy: ``[T, B]`` (eV).
        temperature: ``[T, B]`` (K), from the kinetic energy of the free atoms (3 degrees of
            freedom each).
    """

    atoms: list[Atoms]
    time_fs: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    temperature: np.ndarray

    @property
    def total_energy(self) -> np.ndarray:
        """``[T, B]`` potential plus kinetic energy (eV): conserved by NVE dynamics."""
        return self.potential_energy + self.kinetic_energy

    def energy_drift_per_atom(self) -> np.ndarray:
        r"""``[B]``: :math:`\max_t |E(t) - E(0)| / N` of the total energy (eV/atom)."""
        natoms = np.array([len(a) for a in self.atoms])
        return np.abs(self.total_energy - self.total_energy[:1]).max(axis=0) / natoms


def run_md(
    model,
    systems: Sequence[Atoms],
    *,
    steps: int,
    timestep_fs: float,
    temperature_K: float,
    ensemble: str = "nvt_langevin",
    friction_per_fs: float | None = None,
    seed: int | None = 0,
    interval: int = 1,
) -> MDRun:
    r"""Molecular dynamics of many systems at once with torch-sim's integrators through one model.

    ``"nve"``: velocity Verlet, whose total energy error falls as :math:`\Delta t^2` for a
    smooth potential; ``"nvt_langevin"``: BAOAB Langevin dynamics at ``temperature_K`` with
    friction ``friction_per_fs`` (torch-sim's default :math:`1/(100\,\Delta t)` when None).
    Momenta start from a Maxwell-Boltzmann distribution at ``temperature_K`` (``seed``).
    Atoms that a :class:`~ase.constraints.FixAtoms` (or an so2nn data item's ``fixed`` field)
    holds keep their positions and zero momenta: torch-sim's own ``FixAtoms`` constraint holds
    them (0.5.1 and later), or on torch-sim 0.3 the model zeroes their forces and each step puts
    them back with zero momenta. The model rebuilds the neighbour graph at every step.

    Args:
        model: a :class:`TorchSimModel`, or what it accepts.
        systems: ASE structures or so2nn data items, all periodic or none.
        steps: integration steps.
        timestep_fs: the time step (fs).
        temperature_K: the initial (NVE) or bath (NVT) temperature (K).
        ensemble: ``"nve"`` or ``"nvt_langevin"``.
        friction_per_fs: Langevin friction (1/fs), or None.
        seed: random seed of the initial momenta and the Langevin noise (None: a fresh one each run).
        interval: record energies every this many steps (the first and last are recorded).

    Example:
        >>> from ase.build import molecule
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> model = EquiformerV2(EquiformerV2Config.tiny(max_radius=6.0, direct_forces=False))
        >>> run = run_md(TorchSimModel(model, dtype=torch.float64), [molecule("H2O"), molecule("CH4")],
        ...              steps=4, timestep_fs=0.5, temperature_K=300.0)
        >>> run.potential_energy.shape, run.time_fs.tolist()
        ((5, 2), [0.0, 0.5, 1.0, 1.5, 2.0])
    """
    if ensemble not in ("nve", "nvt_langevin"):
        raise ValueError(f"ensemble must be 'nve' or 'nvt_langevin', got {ensemble!r}")
    if steps < 0 or not timestep_fs > 0 or not temperature_K >= 0 or interval < 1:
        raise ValueError("steps must be >= 0, timestep_fs > 0, temperature_K >= 0 and interval >= 1, got "
                         f"{steps}, {timestep_fs}, {temperature_K}, {interval}")
    systems = as_atoms_list(systems)
    model = _as_sim_model(model, None)
    units = ts.units.MetalUnits
    fs = units.time / 1000.0  # torch-sim's time unit is sqrt(amu A^2 / eV); MetalUnits.time is 1 ps in it
    gamma = None if friction_per_fs is None else friction_per_fs / fs
    init, step = _compat.integrator(ensemble, model, dt=timestep_fs * fs, kT=temperature_K * units.temperature,
                                    gamma=gamma, seed=seed)
    state, fixed = state_and_fixed(systems, model.device, model.dtype)
    held = state.positions[fixed].clone()
    _zero_forces_on(model, fixed)
    try:
        state = init(state)
        if _compat.HAS_CONSTRAINTS:  # the first momenta are drawn for every atom, fixed or not
            state.set_constrained_momenta(state.momenta)
        _hold(state, fixed, held)
        num_systems = len(systems)
        free = torch.zeros(num_systems, dtype=torch.long).index_add_(
            0, state.system_idx.cpu().long(), (~fixed).cpu().long())
        times, potential, kinetic = [], [], []

        def record(t: int) -> None:
            times.append(t * timestep_fs)
            potential.append(state.energy.detach().cpu().double().numpy().copy())
            kinetic.append(_kinetic(state, num_systems))

        record(0)
        for t in range(1, steps + 1):
            state = step(state)
            _hold(state, fixed, held)
            if t % interval == 0 or t == steps:
                record(t)
    finally:
        _zero_forces_on(model, None)
    kinetic_energy = np.stack(kinetic)
    dof = 3 * np.maximum(free.numpy(), 1)
    temperature = 2 * kinetic_energy / (dof * float(units.temperature))
    atoms = []
    for b, start in enumerate(systems):
        one = state.system_idx == b
        final = start.copy()
        final.set_positions(state.positions[one].detach().cpu().double().numpy(), apply_constraint=False)
        velocities = (state.momenta[one] / state.masses[one, None]).detach().cpu().double().numpy()
        final.set_velocities(velocities)  # ASE's units are torch-sim's metal units (eV, A, amu)
        atoms.append(final)
    return MDRun(atoms, np.array(times), np.stack(potential), kinetic_energy, temperature)


def _hold(state, fixed: torch.Tensor, held: torch.Tensor) -> None:
    """Fixed atoms back at their positions with zero momenta: torch-sim 0.3's Langevin noise
    moves them (later releases hold them with their ``FixAtoms`` constraint)."""
    if not _compat.HAS_CONSTRAINTS and bool(fixed.any()):
        state.positions[fixed] = held
        state.momenta[fixed] = 0.0


def _kinetic(state, num_systems: int) -> np.ndarray:
    per_atom = 0.5 * (state.momenta**2).sum(dim=1) / state.masses
    out = torch.zeros(num_systems, dtype=per_atom.dtype, device=per_atom.device)
    return out.index_add_(0, state.system_idx.long(), per_atom).detach().cpu().double().numpy()

