"""What differs between the torch-sim releases so2nn supports (0.3 on Python 3.11, 0.6 and later).

- constraints: 0.5.1 and later hold atoms with ``state.constraints`` (``FixAtoms``), which
  their optimisers and integrators apply to positions, forces and momenta; 0.3 has none, so
  :class:`~so2nn.integrations.torch_sim.TorchSimModel` zeroes the forces on fixed atoms there
  (and :func:`~so2nn.integrations.torch_sim.run_md` puts them back after each step);
- the random numbers of MD: 0.6 draws them from a generator on the state (``state.rng``), 0.3
  from torch's global one;
- ``pbc`` is one bool for the whole state in 0.3 and a ``[3]`` bool tensor in 0.6;
- 0.6's validator wants detached outputs (0.3 does not care; so2nn always detaches);
- the optimisers and integrators: 0.3 builds ``(init_fn, step_fn)`` pairs from the model
  (``fire(model)``, ``unit_cell_fire(model)``, ``nvt_langevin(model, dt=, kT=)``); 0.6 has
  free functions that take the state and the model (``fire_init(state, model,
  cell_filter=...)``, ``fire_step(state, model)``, ``nvt_langevin_step(state, model, dt=, kT=)``).

Both store the cell as column vectors (``state.cell[b][:, k]`` is lattice vector k); so2nn
reads ``state.row_vector_cell``, the rows that ASE and so2nn use. This module turns each
difference into one function, so that the rest of the integration reads the same on both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch_sim as ts

#: True for the 0.6-style API (free ``fire_init`` / ``fire_step`` functions).
NEW_API = hasattr(ts.optimizers, "fire_init")

try:
    from torch_sim.constraints import FixAtoms
except ImportError:  # 0.3 (and 0.4 to 0.5.0): no constraints
    FixAtoms = None

#: True when torch-sim holds atoms with its own constraints (``state.constraints``).
HAS_CONSTRAINTS = FixAtoms is not None

Step = Callable[[Any], Any]


def state_pbc(state, num_systems: int) -> torch.Tensor:
    """``[B, 3]`` bool: the periodic directions of each system (one value for all in torch-sim)."""
    pbc = torch.as_tensor(state.pbc, device=state.positions.device).bool().reshape(-1)
    if pbc.numel() == 1:  # 0.3: one bool
        pbc = pbc.expand(3)
    return pbc.reshape(1, 3).expand(num_systems, 3)


def fire(model, *, relax_cell: bool, **params) -> tuple[Step, Step]:
    """``(init(state), step(state))`` of torch-sim's FIRE (ASE's flavour), with a unit-cell
    filter when ``relax_cell`` (ASE's ``UnitCellFilter``)."""
    if NEW_API:
        step_params = {k: v for k, v in params.items() if k not in ("dt_start", "alpha_start")}
        init_params = {k: v for k, v in params.items() if k in ("dt_start", "alpha_start")}
        cell_filter = ts.optimizers.cell_filters.CellFilter.unit if relax_cell else None

        def init(state):
            return ts.optimizers.fire_init(state, model, fire_flavor="ase_fire", cell_filter=cell_filter,
                                           **init_params)

        def step(state):
            return ts.optimizers.fire_step(state, model, fire_flavor="ase_fire", **step_params)

        return init, step
    if relax_cell:
        return ts.optimizers.unit_cell_fire(model, md_flavor="ase_fire", **params)
    return ts.optimizers.fire(model, md_flavor="ase_fire", **params)


def integrator(name: str, model, *, dt: float, kT: float, gamma: float | None, seed: int | None) -> tuple[Step, Step]:
    """``(init(state), step(state))`` of torch-sim's ``"nve"`` (velocity Verlet) or
    ``"nvt_langevin"`` (BAOAB) integrator; ``dt``, ``kT`` and the friction ``gamma`` (None:
    torch-sim's default) in torch-sim's metal units."""
    as_tensor = lambda x: torch.tensor(x, device=model.device, dtype=model.dtype)  # noqa: E731
    dt_t, kT_t = as_tensor(dt), as_tensor(kT)
    langevin = {} if name == "nve" else {"kT": kT_t} | ({} if gamma is None else {"gamma": as_tensor(gamma)})
    if NEW_API:
        init_fn = getattr(ts.integrators, f"{name}_init")
        step_fn = getattr(ts.integrators, f"{name}_step")
        kwargs = langevin

        def init(state):
            seed_random_numbers(state, seed)
            return init_fn(state, model, kT=kT_t)

        def step(state):
            return step_fn(state, model, dt=dt_t, **kwargs)

        return init, step
    make = {"nve": ts.integrators.nve, "nvt_langevin": ts.integrators.nvt_langevin}[name]
    init_fn, step_fn = make(model, dt=dt_t, kT=kT_t, seed=seed, **{k: v for k, v in langevin.items() if k == "gamma"})

    def init_03(state):
        seed_random_numbers(state, seed)  # 0.3 seeds only the first momenta itself, not the noise
        return init_fn(state, kT=kT_t)

    return init_03, step_fn


def concatenate(states: list) -> Any:
    """One state holding the systems of ``states``, in order."""
    return states[0] if len(states) == 1 else ts.concatenate_states(states)


def hold(state, fixed: torch.Tensor) -> None:
    """Hold the atoms of ``fixed`` (``[n_atoms]`` bool) with torch-sim's ``FixAtoms``, beside
    the state's other constraints (torch-sim 0.5.1 and later)."""
    if bool(fixed.any()):
        index = torch.nonzero(fixed.to(state.positions.device)).reshape(-1)
        state.constraints = [*state.constraints, FixAtoms(atom_idx=index)]


def seed_random_numbers(state, seed: int | None) -> None:
    """Seed the random numbers of MD on ``state``: 0.6 keeps a generator on the state (which,
    left unset, starts from the same fixed seed in every run), earlier releases draw the
    Langevin noise from torch's global one."""
    if hasattr(type(state), "rng"):
        generator = torch.Generator(device=state.positions.device)
        if seed is None:
            generator.seed()  # a fresh random seed, as "no seed" means
        else:
            generator.manual_seed(seed)
        state.rng = generator
    elif seed is not None:
        torch.manual_seed(seed)
