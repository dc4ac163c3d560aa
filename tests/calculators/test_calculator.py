"""EquiformerV2Calculator: same numbers as the model, every model source, periodic and
molecular Atoms, rotations, the graph cache, and errors that name the problem."""

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.fd import calculate_numerical_forces
from ase.constraints import FixAtoms
from hypothesis import given, settings

from so2nn.calculators import EquiformerV2Calculator, fixed_atoms_mask
from so2nn.models import INPUT_FIELDS, EquiformerV2, EquiformerV2Config
from so2nn.testing import strategies as so2st

TINY = dict(max_neighbors=20, max_num_elements=30)  # changes to EquiformerV2Config.tiny()
GATE = dict(activation="gate", use_grid_mlp=False)  # exactly equivariant: no S2 grid
FIXTURES = Path(__file__).parents[1] / "models" / "fixtures"


def tiny_model(seed=0, **changes):
    torch.manual_seed(seed)
    return EquiformerV2(EquiformerV2Config.tiny(**{**TINY, **changes})).double().eval()


def oc20_slab():
    """O on Cu(111), OC20-style: periodic in 3D, tags 0/1/2, subsurface atoms fixed."""
    atoms = fcc111("Cu", (2, 2, 3), vacuum=5.0)
    add_adsorbate(atoms, "O", 1.4, "fcc")
    ase_tags = atoms.get_tags()  # layer number from the top (1 = surface), 0 = adsorbate
    atoms.set_tags(np.where(ase_tags == 0, 2, np.where(ase_tags == 1, 1, 0)))
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == 0))
    atoms.pbc = True
    return atoms


def system(kind):
    return oc20_slab() if kind == "slab" else molecule("CH3CH2OH")


def direct_call(model, atoms):
    """The model's own forward on the Atoms' arrays (it builds its own graph)."""
    fields = dict(pos=torch.tensor(atoms.positions), atomic_numbers=torch.tensor(atoms.numbers))
    if atoms.pbc.any():
        fields.update(cell=torch.tensor(np.array(atoms.cell))[None], pbc=torch.tensor(atoms.pbc)[None])
    with torch.no_grad():
        return model(**fields)


def relative(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(np.asarray(b)).max(), 1e-30))


@pytest.mark.parametrize("kind", ["slab", "molecule"])
@pytest.mark.parametrize("direct_forces", [True, False])
def test_energy_and_forces_are_the_models(kind, direct_forces):
    model = tiny_model(direct_forces=direct_forces)
    atoms = system(kind)
    atoms.calc = EquiformerV2Calculator(model)
    expected = direct_call(model, atoms)
    assert relative(atoms.get_potential_energy(), float(expected["energy"][0])) <= 1e-12
    assert relative(atoms.calc.results["forces"], expected["forces"].numpy()) <= 1e-12
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)
    if kind == "slab":  # ASE zeroes the forces of FixAtoms atoms; the calculator returns all of them
        fixed = fixed_atoms_mask(atoms)
        assert fixed.sum() == 8 and np.all(atoms.get_forces()[fixed] == 0)
        assert np.all(atoms.get_forces(apply_constraint=False)[fixed] == atoms.calc.results["forces"][fixed])


def test_so2nn_checkpoint_path_and_dict(tmp_path):
    model = tiny_model(seed=3)
    model.save(tmp_path / "model.pt")
    atoms = oc20_slab()
    atoms.calc = EquiformerV2Calculator(model)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
    path = tmp_path / "model.pt"
    for source in (path, str(path), torch.load(path, weights_only=False)):
        calc = EquiformerV2Calculator(source, device="cpu", dtype="float64")
        assert calc.dtype == torch.float64 and calc.device == torch.device("cpu")
        assert calc.get_potential_energy(atoms) == pytest.approx(energy, rel=1e-12, abs=1e-12)
        assert relative(calc.get_forces(atoms), forces) <= 1e-12
    # a checkpoint defaults to float32 (on the CPU here: no GPU in CI)
    calc = EquiformerV2Calculator(tmp_path / "model.pt", device="cpu")
    assert calc.dtype == torch.float32 and next(calc.model.parameters()).dtype == torch.float32
    assert relative(calc.get_forces(atoms), forces) <= 1e-4


@pytest.mark.parametrize("name", ["eqv2_31M_molecule", "eqv2_31M_slab"])
def test_official_fairchem_checkpoint_reproduces_the_reference(name):
    # The parity fixtures hold a fairchem checkpoint (31M architecture, reduced width) and the
    # reference implementation's float64 outputs on so2nn's edge frames.
    fixture = torch.load(FIXTURES / f"{name}.pt", weights_only=False)
    x = fixture["inputs"]
    atoms = Atoms(numbers=x["atomic_numbers"].numpy(), positions=x["pos"].double().numpy())
    if x["periodic"]:
        atoms.cell, atoms.pbc = x["cell"][0].double().numpy(), True
    atoms.calc = EquiformerV2Calculator(
        fixture["checkpoint"], device="cpu", dtype=torch.float64, graph_mode="reference"
    )
    reference = fixture["reference_same_frames"]["torch.float64"]
    assert relative(atoms.get_potential_energy(), reference["energy"].numpy()) <= 1e-12
    assert relative(atoms.get_forces(), reference["forces"].numpy()) <= 1e-12


@pytest.mark.parametrize("kind", ["slab", "molecule"])
@given(R=so2st.rotations())
@settings(max_examples=5)
def test_rotating_the_atoms_rotates_the_forces(kind, R):
    R = R.numpy()
    model = tiny_model(lmax=3, mmax=2, **GATE)
    atoms = system(kind)
    atoms.calc = EquiformerV2Calculator(model)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ R.T
    rotated.cell = np.array(atoms.cell) @ R.T  # rows are lattice vectors
    rotated.calc = EquiformerV2Calculator(model)
    energy = atoms.get_potential_energy()
    assert abs(rotated.get_potential_energy() - energy) <= 1e-9 * max(abs(energy), 1e-3)
    forces = atoms.get_forces(apply_constraint=False)
    assert relative(rotated.get_forces(apply_constraint=False), forces @ R.T) <= 1e-9


@pytest.mark.parametrize("kind", ["periodic", "molecule"])
def test_conservative_forces_are_minus_the_energy_gradient(kind):
    model = tiny_model(seed=1, direct_forces=False, max_neighbors=100)  # no max-neighbour cut: smooth in pos
    if kind == "periodic":  # a rattled crystal: no distance within the finite-difference step of the cutoff
        atoms = Atoms("Cu3O", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0.5, 0.5, 0.5]],
                      cell=[3.7, 3.6, 3.8], pbc=True)
    else:
        atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    atoms.calc = EquiformerV2Calculator(model)
    numerical = calculate_numerical_forces(atoms, eps=1e-4)  # central differences of the energy
    # The central-difference error ~ eps^2 |E'''|: measured 5e-6 (crystal) and 1e-8 (molecule)
    # of the largest force, falling 100x per 10x smaller eps. A wrong sign or factor is O(1).
    assert relative(atoms.get_forces(), numerical) <= 1e-4


def test_a_2d_slab_without_a_third_cell_vector_is_completed():
    model = tiny_model(seed=4)
    with_vacuum = fcc111("Cu", (2, 2, 2), vacuum=5.0)  # pbc = (True, True, False)
    flat = with_vacuum.copy()
    flat.cell[2] = 0.0
    with_vacuum.calc, flat.calc = EquiformerV2Calculator(model), EquiformerV2Calculator(model)
    assert flat.get_potential_energy() == pytest.approx(with_vacuum.get_potential_energy(), rel=1e-12)
    assert relative(flat.get_forces(), with_vacuum.get_forces()) <= 1e-12


def test_the_calculator_passes_exactly_what_the_model_reads():
    model = tiny_model()
    seen = []
    forward = model.forward
    model.forward = lambda **fields: seen.append(fields) or forward(**fields)
    atoms = oc20_slab()
    atoms.calc = EquiformerV2Calculator(model)
    atoms.get_potential_energy()
    assert set(seen[-1]) == {"pos", "atomic_numbers", "natoms", "pbc", "cell", "edge_index", "cell_offsets"}
    assert set(seen[-1]) <= set(INPUT_FIELDS)
    assert seen[-1]["pbc"].tolist() == [[True, True, True]] and seen[-1]["cell"].shape == (1, 3, 3)
    # tags and constraints are not model inputs: changing them reuses the result
    atoms.set_tags(np.zeros(len(atoms), dtype=int))
    atoms.set_constraint()
    atoms.get_potential_energy()
    assert len(seen) == 1
    # ASE applies FixAtoms to the forces it returns; the calculator's are those of every atom
    atoms.set_constraint(FixAtoms(indices=[0]))
    assert np.all(atoms.get_forces()[0] == 0) and np.any(atoms.calc.results["forces"][0] != 0)
    assert fixed_atoms_mask(atoms).tolist() == [True] + [False] * (len(atoms) - 1)


def test_graph_is_built_once_per_geometry_and_passed_to_the_model():
    model = tiny_model()
    builds, calls = [], []
    build_graph, forward = model.build_graph, model.forward
    model.build_graph = lambda inputs: builds.append(1) or build_graph(inputs)  # noqa: E731
    model.forward = lambda **fields: calls.append(fields["edge_index"].shape[1]) or forward(**fields)
    atoms = oc20_slab()
    atoms.calc = calc = EquiformerV2Calculator(model)
    energy = atoms.get_potential_energy()
    atoms.get_forces()
    assert (len(builds), len(calls)) == (1, 1)  # one graph, handed to the model (which builds none)
    # same geometry, other inputs: the model runs, the graph is reused
    atoms.set_tags(atoms.get_tags() + 1)
    atoms.set_initial_magnetic_moments(np.ones(len(atoms)))
    assert atoms.get_potential_energy() == energy
    calc.reset()
    assert atoms.get_potential_energy() == energy
    assert (len(builds), len(calls)) == (1, 3)
    # a new geometry is a new graph: positions, cell, numbers, pbc
    atoms.positions[-1, 2] += 0.3
    atoms.get_potential_energy()
    assert (len(builds), len(calls)) == (2, 4)
    atoms.set_cell(np.array(atoms.cell) * 1.02, scale_atoms=True)
    atoms.get_potential_energy()
    atoms.numbers[-1] = 6
    atoms.get_potential_energy()
    atoms.pbc = (True, True, False)
    atoms.get_potential_energy()
    assert (len(builds), len(calls)) == (5, 7)
    # the reused graph gives what a fresh calculator gives
    fresh = EquiformerV2Calculator(tiny_model())
    assert fresh.get_potential_energy(atoms) == pytest.approx(atoms.get_potential_energy(), rel=1e-12)


@pytest.mark.parametrize(
    "atoms, message",
    [
        (Atoms("CuAm", [[0, 0, 0], [2, 0, 0]]), r"atom 1 \(Am, Z=95\) is not an element this model knows"),
        (Atoms("XO", [[0, 0, 0], [1.2, 0, 0]]), r"atom 0 \(X, Z=0\)"),
        (Atoms("Cu2", [[0, 0, 0], [2, 0, 0]], pbc=True), r"pbc=\[True, True, True\] but no cell vector"),
        (Atoms("Cu2", [[0, 0, 0], [2, 0, 0]], cell=[3, 3, 0], pbc=True), r"direction\(s\) \[2\]"),
        (Atoms("Cu2", [[0, 0, 0], [0, 0, 0]]), r"atoms [01] and [01] are 0 A apart .* overlapping"),
        (Atoms("Cu2", [[0, 0, 0], [0, np.nan, 0]]), r"atom 1 has a NaN or inf position"),
        (Atoms(), "the Atoms object is empty"),
    ],
    ids=["unknown-element", "dummy-atom", "pbc-without-cell", "pbc-along-zero-vector", "overlapping", "nan",
         "empty"],
)
def test_bad_atoms_raise_errors_that_name_the_problem(atoms, message):
    for direct_forces in (True, False):
        atoms.calc = EquiformerV2Calculator(tiny_model(direct_forces=direct_forces))
        with pytest.raises(ValueError, match=message):
            atoms.get_forces()


def test_bad_arguments():
    with pytest.raises(ValueError, match="config changes .* apply when loading a checkpoint"):
        EquiformerV2Calculator(tiny_model(), grid_resolution=24)
    with pytest.raises(ValueError, match="dtype must be"):
        EquiformerV2Calculator(tiny_model(), dtype=torch.float16)
    with pytest.raises(TypeError, match="Linear does not offer the so2nn model protocol"):
        EquiformerV2Calculator(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be an so2nn model or a checkpoint"):
        EquiformerV2Calculator(42)
    with pytest.raises(ValueError, match="checkpoint file not found"):
        EquiformerV2Calculator("no/such/model.pt")
    with pytest.raises(Exception, match="stress"):
        EquiformerV2Calculator(tiny_model()).get_stress(oc20_slab())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_gives_the_cpu_numbers(tmp_path):
    tiny_model(seed=5).save(tmp_path / "model.pt")
    atoms = oc20_slab()
    cpu = EquiformerV2Calculator(tmp_path / "model.pt", device="cpu", dtype=torch.float64)
    gpu = EquiformerV2Calculator(tmp_path / "model.pt", dtype=torch.float64)
    assert gpu.device.type == "cuda"  # the default for a checkpoint when a GPU is there
    assert gpu.get_potential_energy(atoms) == pytest.approx(cpu.get_potential_energy(atoms), rel=1e-10)
    assert relative(gpu.get_forces(atoms), cpu.get_forces(atoms)) <= 1e-10


@pytest.mark.parametrize("direct_forces", [True, False])
def test_atoms_without_neighbours(direct_forces):
    """A single atom and atoms beyond the cutoff: the isolated atoms' energies, zero forces."""
    calc = EquiformerV2Calculator(tiny_model(direct_forces=direct_forces))
    single = Atoms("O", [[0.0, 0.0, 0.0]])
    far = Atoms("OHH", [[0.0, 0, 0], [12.0, 0, 0], [0, 14.0, 0]])
    energy_o = calc.get_potential_energy(single)
    assert np.isfinite(energy_o) and np.array_equal(calc.get_forces(single), np.zeros((1, 3)))
    energy_h = calc.get_potential_energy(Atoms("H", [[0.0, 0.0, 0.0]]))
    assert calc.get_potential_energy(far) == pytest.approx(energy_o + 2 * energy_h, rel=1e-12)
    assert np.array_equal(calc.get_forces(far), np.zeros((3, 3)))
