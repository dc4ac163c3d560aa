"""so2nn models in torch-sim: the model interface, batched FIRE relaxations, and MD."""

import numpy as np
import pytest
import torch

ts = pytest.importorskip("torch_sim")

from ase import Atoms  # noqa: E402
from ase.build import add_adsorbate, fcc100, fcc111, molecule  # noqa: E402
from ase.constraints import FixAtoms  # noqa: E402
from ase.optimize import FIRE  # noqa: E402
from torch_sim.models.interface import validate_model_outputs  # noqa: E402

from so2nn.calculators import So2nnCalculator  # noqa: E402
from so2nn.data.emt import ADSORBATES  # noqa: E402
from so2nn.integrations.torch_sim import TorchSimModel, relax_batch, run_md  # noqa: E402
from so2nn.models import EquiformerV2, EquiformerV2Config  # noqa: E402

TINY = dict(max_radius=4.5, max_neighbors=12)  # changes to EquiformerV2Config.tiny()


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


def test_validate_model_outputs():
    """torch-sim's own check of the interface: shapes, batch vs single systems, no mutation."""
    model = TorchSimModel(tiny_model(), dtype=torch.float64)
    validate_model_outputs(model, model.device, model.dtype)
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
    model = tiny_model()
    atoms = systems()
    fixed = [a.get_tags() == 0 for a in atoms]
    relaxed = relax_batch(TorchSimModel(model, dtype=torch.float64), atoms, fmax=0.02, max_steps=15)
    run = run_md(TorchSimModel(model, dtype=torch.float64), atoms, steps=10, timestep_fs=2.0,
                 temperature_K=600.0, ensemble="nvt_langevin", friction_per_fs=0.05)
    for start, mask, result, final in zip(atoms, fixed, relaxed, run.atoms):
        assert mask.sum() >= 8
        np.testing.assert_array_equal(result.atoms.positions[mask], start.positions[mask])
        np.testing.assert_array_equal(final.positions[mask], start.positions[mask])
        assert np.all(final.get_velocities()[mask] == 0.0)
        assert np.abs(result.atoms.positions[~mask] - start.positions[~mask]).max() > 1e-3  # the rest moved
        assert np.abs(final.positions[~mask] - start.positions[~mask]).max() > 1e-3


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
    sim.fixed = torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="fixed has 3 entries but the state has 13 atoms"):
        sim(state)
    sim.fixed = None
    with pytest.raises(ValueError, match="the state is torch.float32 but the model runs in torch.float64"):
        sim(ts.io.atoms_to_state(systems()[:1], sim.device, torch.float32))
    with pytest.raises(ValueError, match="relax_cell needs a model with a stress output"):
        relax_batch(sim, systems()[:1], relax_cell=True)
    with pytest.raises(ValueError, match="torch-sim needs one pbc for every system"):
        relax_batch(sim, [systems()[0], molecule("H2O")])
    with pytest.raises(ValueError, match="ensemble must be 'nve' or 'nvt_langevin'"):
        run_md(sim, systems()[:1], steps=1, timestep_fs=1.0, temperature_K=300.0, ensemble="npt")


def test_stress_of_a_conservative_model_and_cell_relaxation():
    """A conservative model has a stress: per system what the calculator gives, and the cell
    relaxes with it, batched as alone, to zero stress."""
    from ase.build import bulk

    model = smooth_model()
    sim = TorchSimModel(model, dtype=torch.float64)
    assert sim.compute_stress
    validate_model_outputs(sim, sim.device, sim.dtype)
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
