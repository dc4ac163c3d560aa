"""so2nn models in torch-sim: the model interface, batched FIRE relaxations, and MD.

The suite runs these with torch-sim 0.3 (Python 3.11) and the newest release (Python 3.12,
``.ci/run``): tests of what only one of them has say so in their skip condition."""

from importlib.metadata import version

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim")

from ase import Atoms  # noqa: E402
from ase.build import add_adsorbate, fcc100, fcc111, molecule  # noqa: E402
from ase.constraints import FixAtoms  # noqa: E402
from ase.geometry import find_mic  # noqa: E402
from ase.optimize import FIRE  # noqa: E402
from torch_sim.models.interface import validate_model_outputs  # noqa: E402

from so2nn.calculators import So2nnCalculator  # noqa: E402
from so2nn.data import atoms_to_data, data_to_atoms  # noqa: E402
from so2nn.data.emt import ADSORBATES  # noqa: E402
from so2nn.integrations.torch_sim import TorchSimModel, relax_batch, run_md, state_from_atoms  # noqa: E402
from so2nn.models import EquiformerV2, EquiformerV2Config  # noqa: E402

#: (major, minor) of the installed torch-sim: 0.3 has no constraints, ts.Optimizer / ts.Integrator
#: or torch_sim.testing; 0.6 has them all (constraints since 0.5.1)
TORCH_SIM = tuple(int(part) for part in version("torch-sim-atomistic").split(".")[:2])
only_0_3 = pytest.mark.skipif(TORCH_SIM >= (0, 4), reason="torch-sim 0.3 only (no constraints)")
from_0_6 = pytest.mark.skipif(TORCH_SIM < (0, 6), reason="torch-sim 0.6 and later")

TINY = dict(lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
            attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
            num_distance_basis=16, max_radius=4.5, max_neighbors=12)


def tiny_model(**changes) -> EquiformerV2:
    torch.manual_seed(0)
    return EquiformerV2(EquiformerV2Config.tiny(**(TINY | changes))).double().eval()


def smooth_model() -> EquiformerV2:
    """A conservative model with gate activations (no grid): a smooth random energy whose
    minima FIRE reaches from these starts in 20-30 steps (energy_std scales its forces to a
    few eV/A)."""
    return tiny_model(direct_forces=False, activation="gate", use_grid_mlp=False, energy_std=100.0)


def slab(metal: str, facet: str, size, adsorbate: str, site: str, height: float) -> Atoms:
    """An OC20-style slab: periodic, tags 0/1/2, the subsurface fixed."""
    atoms = (fcc111 if facet == "111" else fcc100)(metal, size=size, vacuum=5.0, periodic=True)
    layer = atoms.get_tags()
    symbols, positions = ADSORBATES[adsorbate]  # binding atom first, pointing away from the surface
    add_adsorbate(atoms, Atoms(symbols, positions=positions), height, site)
    tags = np.concatenate([np.where(layer == 1, 1, 0), np.full(len(atoms) - len(layer), 2)])
    atoms.set_tags(tags)
    atoms.set_constraint(FixAtoms(mask=tags == 0))
    return atoms


def systems() -> list[Atoms]:
    """Three different slab+adsorbate systems of 13, 19 and 14 atoms."""
    return [slab("Cu", "111", (2, 2, 3), "O", "fcc", 1.4), slab("Pt", "100", (3, 2, 3), "CO", "ontop", 1.9),
            slab("Au", "111", (2, 2, 3), "OH", "bridge", 1.6)]


def validate(model: TorchSimModel) -> None:
    """torch-sim's own check of the interface: shapes, batch vs single systems, no mutation;
    from 0.6 on, also that the outputs are detached."""
    detached = {"check_detached": True} if TORCH_SIM >= (0, 6) else {}
    validate_model_outputs(model, model.device, model.dtype, **detached)


def test_validate_model_outputs():
    model = TorchSimModel(tiny_model(), dtype=torch.float64)
    validate(model)
    assert not model.compute_stress and model.memory_scales_with == "n_atoms"


def test_a_batch_of_different_systems_gives_what_the_calculator_gives_for_each():
    model = tiny_model()
    sim = TorchSimModel(model, dtype=torch.float64)
    atoms = systems()
    state = ts.io.atoms_to_state(atoms, sim.device, sim.dtype)
    out = sim(state)
    assert out["energy"].shape == (3,) and out["forces"].shape == (state.n_atoms, 3)
    assert not out["energy"].requires_grad and not out["forces"].requires_grad
    start = 0
    for b, one in enumerate(atoms):
        one = one.copy()
        one.calc = So2nnCalculator(model, dtype=torch.float64)
        forces = one.get_forces(apply_constraint=False)
        assert abs(out["energy"][b].item() - one.get_potential_energy()) < 1e-10
        np.testing.assert_allclose(out["forces"][start:start + len(one)].numpy(), forces, atol=1e-10)
        start += len(one)
    assert abs(forces).max() > 1e-3  # the comparison is of forces that are not all zero


def test_from_checkpoint(tmp_path):
    model = tiny_model()
    model.save(tmp_path / "model.pt")
    sim = TorchSimModel(tmp_path / "model.pt", device="cpu", dtype="float64")
    state = ts.io.atoms_to_state(systems()[:1], sim.device, sim.dtype)
    reference = TorchSimModel(model, dtype=torch.float64)(state)
    assert torch.allclose(sim(state)["energy"], reference["energy"], atol=1e-12)


def test_fixed_atoms_do_not_move_in_relaxations_and_md():
    """Held by torch-sim's FixAtoms constraint (0.5.1 and later) or by zeroed forces (0.3); from
    ASE's FixAtoms, or from the fixed field of so2nn data items."""
    model = tiny_model()
    atoms = systems()
    fixed = [a.get_tags() == 0 for a in atoms]
    items = [atoms_to_data(a, f"system {k}", with_targets=False) for k, a in enumerate(atoms)]
    sim = TorchSimModel(model, dtype=torch.float64)
    relaxed = relax_batch(sim, atoms, fmax=0.02, max_steps=15, batch_size=2)
    from_items = relax_batch(sim, items, fmax=0.02, max_steps=15)
    run = run_md(sim, atoms, steps=10, timestep_fs=2.0, temperature_K=600.0, ensemble="nvt_langevin",
                 friction_per_fs=0.05)
    first = run_md(sim, items, steps=0, timestep_fs=2.0, temperature_K=600.0)  # the momenta drawn at the start
    assert sim.fixed is None  # the runs leave the model as they found it
    for start, item_start, mask, result, item, final, at_start in zip(atoms, items, fixed, relaxed, from_items,
                                                                       run.atoms, first.atoms):
        assert mask.sum() >= 8
        item_start = data_to_atoms(item_start)  # float32 positions, as the data stores them
        for moved, begin in ((result.atoms, start), (item.atoms, item_start), (final, start)):
            np.testing.assert_array_equal(moved.positions[mask], begin.positions[mask])
            assert np.abs(moved.positions[~mask] - begin.positions[~mask]).max() > 1e-3  # the rest moved
        apart, _ = find_mic(item.atoms.positions - result.atoms.positions, start.cell, start.pbc)  # data wraps
        assert np.abs(apart).max() < 1e-4
        assert np.all(final.get_velocities()[mask] == 0.0) and np.all(at_start.get_velocities()[mask] == 0.0)
        assert np.abs(at_start.get_velocities()[~mask]).max() > 0.0
        assert np.all(result.atoms.get_forces()[mask] == 0.0)  # torch-sim's forces, with the constraint


def test_the_seed_of_md_decides_its_random_numbers():
    """torch-sim 0.6 draws them from a generator on the state, 0.3 from torch's."""
    sim = TorchSimModel(tiny_model(), dtype=torch.float64)
    one = [slab("Cu", "111", (2, 2, 2), "O", "fcc", 1.4)]

    def md(seed):
        return run_md(sim, one, steps=2, timestep_fs=1.0, temperature_K=300.0, friction_per_fs=0.1,
                      seed=seed).atoms[0].positions

    np.testing.assert_array_equal(md(1), md(1))
    assert np.abs(md(1) - md(2)).max() > 1e-6
    assert np.abs(md(None) - md(None)).max() > 1e-6


@from_0_6
def test_ts_optimize_and_ts_integrate_hold_the_fixed_atoms_of_state_from_atoms():
    """torch-sim's own runners with the state of state_from_atoms: OC20's subsurface stays put."""
    sim = TorchSimModel(tiny_model(), dtype=torch.float64)
    atoms = systems()
    fixed = np.concatenate([a.get_tags() == 0 for a in atoms])
    start = np.concatenate([a.positions for a in atoms])
    state = state_from_atoms(atoms, sim.device, sim.dtype)
    assert [type(c).__name__ for c in state.constraints] == ["FixAtoms"]
    assert torch.equal(state.constraints[0].atom_idx, torch.nonzero(torch.as_tensor(fixed)).reshape(-1))
    relaxed = ts.optimize(state, sim, optimizer=ts.Optimizer.fire, max_steps=10)
    hot = ts.integrate(state, sim, integrator=ts.Integrator.nvt_langevin, n_steps=10, temperature=600.0,
                       timestep=0.002)
    for final in (relaxed, hot):
        positions = final.positions.numpy()
        np.testing.assert_array_equal(positions[fixed], start[fixed])
        assert np.abs(positions[~fixed] - start[~fixed]).max() > 1e-3
    assert torch.all(hot.momenta[torch.as_tensor(fixed)] == 0.0)
    # without it, torch-sim's own state moves them: what state_from_atoms is for
    plain = ts.optimize(ts.io.atoms_to_state(atoms, sim.device, sim.dtype), sim, optimizer=ts.Optimizer.fire,
                        max_steps=10)
    assert np.abs(plain.positions.numpy()[fixed] - start[fixed]).max() > 1e-3


@from_0_6
def test_model_and_calculator_agree_by_torch_sims_own_check():
    """torch_sim.testing's check of a model against an ASE calculator, for a model with stress."""
    from ase.build import bulk
    from torch_sim.testing import assert_model_calculator_consistency

    model = smooth_model()
    sim = TorchSimModel(model, dtype=torch.float64)
    assert sim.compute_stress
    crystal = bulk("Cu", "fcc", a=3.7) * (2, 1, 1)
    crystal.rattle(0.05, seed=1)
    state = ts.io.atoms_to_state([crystal], sim.device, sim.dtype)
    assert sim(state)["stress"].abs().max() > 1e-4 and sim(state)["forces"].abs().max() > 1e-3
    assert_model_calculator_consistency(sim, So2nnCalculator(model, dtype=torch.float64), state,
                                        energy_atol=1e-10, force_atol=1e-10, stress_atol=1e-10)


@only_0_3
def test_without_constraints_state_from_atoms_refuses_fixed_atoms():
    """torch-sim 0.3 cannot hold them on the state: the error says what does."""
    sim = TorchSimModel(tiny_model(), dtype=torch.float64)
    free = [a.copy() for a in systems()]
    for a in free:
        del a.constraints
    assert state_from_atoms(free, sim.device, sim.dtype).n_atoms == sum(len(a) for a in free)
    with pytest.raises(ValueError, match="no constraints .* relax_batch and run_md hold them"):
        state_from_atoms(systems(), sim.device, sim.dtype)


def test_batched_relaxation_reaches_the_minima_of_relaxing_each_alone():
    """All at once, two at a time (the batch refilled as systems converge), one by one, and
    ASE's FIRE through the calculator: the same minima."""
    model = smooth_model()
    atoms = systems()
    sim = TorchSimModel(model, dtype=torch.float64)
    together = relax_batch(sim, atoms, fmax=0.01, max_steps=300)
    two = relax_batch(sim, atoms, fmax=0.01, max_steps=300, batch_size=2)
    alone = [relax_batch(sim, [a], fmax=0.01, max_steps=300)[0] for a in atoms]
    unmoved = relax_batch(sim, atoms, fmax=1e-6, max_steps=0, batch_size=2)  # every batch leaves at once
    assert [r.steps for r in unmoved] == [0, 0, 0] and not any(r.converged for r in unmoved)
    assert all(np.array_equal(r.atoms.positions, a.positions) for r, a in zip(unmoved, atoms))
    assert all(r.converged for r in together + two + alone)
    for a, b, c, start in zip(together, two, alone, atoms):
        assert a.max_force <= 0.01 and a.steps > 5
        # each system keeps its own FIRE state: the batch changes only the rounding
        assert a.steps == b.steps == c.steps
        np.testing.assert_allclose(a.atoms.positions, c.atoms.positions, atol=1e-6)
        np.testing.assert_allclose(b.atoms.positions, c.atoms.positions, atol=1e-6)
        ase = start.copy()
        ase.calc = So2nnCalculator(model, dtype=torch.float64)
        FIRE(ase, logfile=None).run(fmax=0.01, steps=300)
        # a different implementation of FIRE: the same minimum to the optimiser's tolerance
        np.testing.assert_allclose(a.atoms.positions, ase.positions, atol=0.02)


def test_md_energy_error_falls_as_dt_squared():
    """NVE with a conservative float64 model without a neighbour cap on a cluster that stays
    inside the cutoff (the graph never changes): velocity Verlet's error falls as dt^2."""
    model = tiny_model(direct_forces=False, activation="gate", use_grid_mlp=False, max_radius=6.0,
                       max_neighbors=1000)
    cluster = Atoms("Cu4O", positions=[[0, 0, 0], [2.55, 0, 0], [1.275, 2.21, 0], [1.275, 0.74, 2.08],
                                       [1.275, 0.74, -1.2]])
    sim = TorchSimModel(model, dtype=torch.float64)
    drift = {}
    for dt in (2.0, 1.0, 0.5):
        run = run_md(sim, [cluster, cluster.copy()], steps=int(40 / dt), timestep_fs=dt, temperature_K=300.0,
                     ensemble="nve", seed=1)
        drift[dt] = run.energy_drift_per_atom()
        assert run.kinetic_energy.max() > 0.01  # the atoms do move
    assert np.all(drift[0.5] < 1e-4)
    assert np.all((3.0 < drift[2.0] / drift[1.0]) & (drift[2.0] / drift[1.0] < 5.5))
    assert np.all((3.0 < drift[1.0] / drift[0.5]) & (drift[1.0] / drift[0.5] < 5.5))


def test_bad_inputs_raise_errors_that_name_the_problem():
    sim = TorchSimModel(tiny_model(), dtype=torch.float64)
    state = ts.io.atoms_to_state(systems()[:1], sim.device, sim.dtype)
    if TORCH_SIM < (0, 4):
        sim.fixed = torch.zeros(3, dtype=torch.bool)
        with pytest.raises(ValueError, match="fixed has 3 entries but the state has 13 atoms"):
            sim(state)
        sim.fixed = None
    else:
        with pytest.raises(ValueError, match="holds atoms with its own constraints: set state.constraints"):
            sim.fixed = torch.zeros(13, dtype=torch.bool)
    with pytest.raises(ValueError, match="the state is torch.float32 but the model runs in torch.float64"):
        sim(ts.io.atoms_to_state(systems()[:1], sim.device, torch.float32))
    with pytest.raises(ValueError, match="relax_cell needs a model with a stress output"):
        relax_batch(sim, systems()[:1], relax_cell=True)
    with pytest.raises(ValueError, match="torch-sim needs one pbc for every system"):
        relax_batch(sim, [systems()[0], molecule("H2O")])
    from ase.constraints import FixBondLength

    bonded = systems()[1]
    bonded.set_constraint([FixAtoms(mask=bonded.get_tags() == 0), FixBondLength(len(bonded) - 2, len(bonded) - 1)])
    with pytest.raises(ValueError, match="system 1: torch-sim holds atoms with FixAtoms only; .* FixBondLength"):
        relax_batch(sim, [systems()[0], bonded])
    with pytest.raises(ValueError, match="system 0: systems must be ASE Atoms or so2nn data items, got str"):
        run_md(sim, ["Cu"], steps=1, timestep_fs=1.0, temperature_K=300.0)
    with pytest.raises(ValueError, match="no systems given"):
        state_from_atoms([], sim.device, sim.dtype)
    with pytest.raises(ValueError, match="ensemble must be 'nve' or 'nvt_langevin'"):
        run_md(sim, systems()[:1], steps=1, timestep_fs=1.0, temperature_K=300.0, ensemble="npt")


def test_stress_of_a_conservative_model_and_cell_relaxation():
    """A conservative model has a stress: per system what the calculator gives, and the cell
    relaxes with it, batched as alone, to zero stress."""
    from ase.build import bulk

    model = smooth_model()
    sim = TorchSimModel(model, dtype=torch.float64)
    assert sim.compute_stress
    validate(sim)
    crystals = [bulk("Cu", cubic=True), bulk("Al", "fcc", a=4.1) * (2, 1, 1), bulk("Pt", cubic=True)]
    crystals[2].cell *= 1.03
    out = sim(ts.io.atoms_to_state(crystals, sim.device, sim.dtype))
    for b, crystal in enumerate(crystals):
        one = crystal.copy()
        one.calc = So2nnCalculator(model, dtype=torch.float64)
        np.testing.assert_allclose(out["stress"][b].numpy(), one.get_stress(voigt=False), atol=1e-10)
    assert out["stress"].abs().max() > 1e-4
    together = relax_batch(sim, crystals, fmax=1e-4, max_steps=300, relax_cell=True)
    alone = [relax_batch(sim, [c], fmax=1e-4, max_steps=300, relax_cell=True)[0] for c in crystals]
    for a, c, start in zip(together, alone, crystals):
        assert a.converged and a.steps == c.steps
        np.testing.assert_allclose(np.array(a.atoms.cell), np.array(c.atoms.cell), atol=1e-6)
        assert np.abs(np.array(a.atoms.cell) - np.array(start.cell)).max() > 1e-3  # the cell moved
        check = a.atoms.copy()
        check.calc = So2nnCalculator(model, dtype=torch.float64)
        # FIRE's cell force is the virial per atom: below fmax at the end
        assert np.abs(check.get_stress(voigt=False) * check.get_volume() / len(check)).max() < 1e-4


def test_without_torch_sim_the_import_says_how_to_install_it(monkeypatch):
    import importlib
    import sys

    for name in [m for m in sys.modules if m.startswith("so2nn.integrations.torch_sim")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch_sim", None)  # what an environment without it imports
    with pytest.raises(ImportError, match="needs torch-sim: pip install torch-sim-atomistic"):
        importlib.import_module("so2nn.integrations.torch_sim")
