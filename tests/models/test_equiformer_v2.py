import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule
from hypothesis import given, settings
from hypothesis import strategies as st

from so2nn.layers import fine_grid_resolution
from so2nn.models import PRESETS, EquiformerV2, EquiformerV2Config, preset
from so2nn.testing import assert_equivariant, equivariance_error, random_rotation
from so2nn.testing import strategies as so2st

SMALL = dict(
    num_layers=2, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
    attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8, num_distance_basis=16, max_radius=4.5,
    max_neighbors=12, alpha_drop=0.0, drop_path_rate=0.0, max_num_elements=30,
)
GATE = dict(activation="gate", use_grid_mlp=False)


def small_model(dtype=torch.float64, seed=0, **changes):
    torch.manual_seed(seed)
    return EquiformerV2(EquiformerV2Config(**{**SMALL, **changes})).to(dtype).eval()


def slab(size=(2, 2, 3), adsorbate=True):
    atoms = fcc111("Cu", size, vacuum=5.0)
    if adsorbate:
        add_adsorbate(atoms, "O", 1.4, "fcc")
    atoms.pbc = (True, True, True)
    return torch.tensor(atoms.positions), torch.tensor(np.array(atoms.cell))[None], torch.tensor(atoms.numbers)


def call(model, pos, cell, numbers):
    return model(pos=pos, cell=cell, atomic_numbers=numbers, natoms=torch.tensor([len(numbers)]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_the_reference_parameter_counts(name):
    expected = {"oc20-31M": 31_058_690, "oc20-83M": 83_164_802, "oc20-153M": 153_602_690, "oc22-121M": 121_526_492}
    assert EquiformerV2(name).num_params == expected[name]


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
@given(R=so2st.rotations(), periodic=st.booleans())
@settings(max_examples=6)
def test_gate_model_is_exactly_equivariant(dtype, tolerance, R, periodic, kernels):
    model = small_model(dtype, lmax=3, mmax=2, kernels=kernels, **GATE)
    if periodic:  # an ideal slab: degenerate neighbour shells everywhere
        pos, cell, numbers = slab()
        kinds = ["vector", "vector"]
    else:
        atoms = molecule("CH3CH2OH")
        pos, cell, numbers = torch.tensor(atoms.positions), None, torch.tensor(atoms.numbers)
        kinds = ["vector", None]
    f = lambda pos, cell: call(model, pos, cell, numbers)  # noqa: E731
    assert_equivariant(f, [pos.to(dtype), None if cell is None else cell.to(dtype)], kinds,
                       {"energy": None, "forces": "vector"}, R.to(dtype), tolerance)


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_grid_error_falls_with_inference_resolution(kernels):
    pos, cell, numbers = slab()
    R = random_rotation(torch.Generator().manual_seed(1))
    coarse = small_model(lmax=4, mmax=2, kernels=kernels)
    fine = small_model(lmax=4, mmax=2, grid_resolution=fine_grid_resolution(4), kernels=kernels)
    fine.load_state_dict(coarse.state_dict())  # same weights: the resolution is not learned
    kinds, outs = ["vector", "vector"], {"energy": None, "forces": "vector"}
    err_coarse = equivariance_error(lambda p, c: call(coarse, p, c, numbers), [pos, cell], kinds, outs, R)
    err_fine = equivariance_error(lambda p, c: call(fine, p, c, numbers), [pos, cell], kinds, outs, R)
    assert err_fine[1].relative < err_coarse[1].relative
    assert max(e.relative for e in err_fine) <= 1e-5


def test_reference_graph_mode_breaks_equivariance_on_degenerate_shells():
    # The strict max-neighbour cut splits shells of equal distances; which atoms survive then
    # depends on the orientation. The default tie-stable graph keeps whole shells, and so does
    # the reference's non-strict rule (within 0.01 A^2 of the 9th neighbour's squared distance).
    pos, cell, numbers = slab((3, 3, 3), adsorbate=False)
    R = random_rotation(torch.Generator().manual_seed(2))
    kinds, outs = ["vector", "vector"], {"energy": None, "forces": "vector"}
    errors = {}
    for mode in ("tie_stable", "reference", "reference_nonstrict"):
        model = small_model(lmax=2, mmax=1, graph_mode=mode, max_neighbors=8, **GATE)
        errors[mode] = equivariance_error(lambda p, c, model=model: call(model, p, c, numbers), [pos, cell], kinds,
                                          outs, R)[1]
    assert errors["tie_stable"].relative <= 1e-9
    assert errors["reference_nonstrict"].relative <= 1e-9
    assert errors["reference"].relative > 1e-6


def test_translation_and_permutation_invariance():
    model = small_model(lmax=2, mmax=2)
    pos, cell, numbers = slab()
    out = call(model, pos, cell, numbers)
    shifted = call(model, pos + torch.tensor([0.3, -1.2, 0.7], dtype=pos.dtype), cell, numbers)
    assert torch.allclose(shifted["energy"], out["energy"], atol=1e-10)
    assert torch.allclose(shifted["forces"], out["forces"], atol=1e-10)
    perm = torch.randperm(len(numbers), generator=torch.Generator().manual_seed(0))
    permuted = call(model, pos[perm], cell, numbers[perm])
    assert torch.allclose(permuted["energy"], out["energy"], atol=1e-10)
    assert torch.allclose(permuted["forces"], out["forces"][perm], atol=1e-10)


def test_batch_equals_separate_systems():
    model = small_model(lmax=2, mmax=1)
    pos, cell, numbers = slab()
    atoms = molecule("H2O")
    water = torch.tensor(atoms.positions) + 3.0
    big_cell = torch.diag(torch.tensor([20.0, 20.0, 20.0], dtype=torch.float64))[None]
    both = model(pos=torch.cat([pos, water]), atomic_numbers=torch.cat([numbers, torch.tensor(atoms.numbers)]),
                 cell=torch.cat([cell, big_cell]), natoms=torch.tensor([len(numbers), 3]))
    alone = call(model, pos, cell, numbers)
    assert torch.allclose(both["energy"][0], alone["energy"][0], atol=1e-12)
    assert torch.allclose(both["forces"][: len(numbers)], alone["forces"], atol=1e-12)


def test_conservative_forces_match_finite_differences_and_polar_edges():
    model = small_model(lmax=3, mmax=1, direct_forces=False)
    # Atoms on a line along y: every edge lies on the polar axis of the edge frames.
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.1, 0.0], [0.0, -1.3, 0.0], [0.9, 0.4, -0.3]], dtype=torch.float64)
    numbers = torch.tensor([6, 8, 1, 1])
    out = model(pos=pos, atomic_numbers=numbers)
    assert torch.isfinite(out["forces"]).all()
    h = 1e-5
    for atom in range(4):
        for axis in range(3):
            plus, minus = pos.clone(), pos.clone()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            with torch.no_grad():
                fd = -(model(pos=plus, atomic_numbers=numbers)["energy"]
                       - model(pos=minus, atomic_numbers=numbers)["energy"]) / (2 * h)
            assert abs(float(fd) - float(out["forces"][atom, axis])) <= 1e-7 + 1e-6 * abs(float(fd))


def test_no_grad_inference_builds_no_graph():
    model = small_model(lmax=2, mmax=1)
    pos, cell, numbers = slab()
    with torch.no_grad():
        out = call(model, pos, cell, numbers)
    assert out["energy"].grad_fn is None and out["forces"].grad_fn is None
    conservative = small_model(lmax=2, mmax=1, direct_forces=False)
    with torch.no_grad():
        out = call(conservative, pos, cell, numbers)
    assert out["energy"].grad_fn is None and out["forces"].grad_fn is None


def test_isolated_atom_is_finite():
    model = small_model(lmax=2, mmax=1)
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [30.0, 0.0, 0.0]], dtype=torch.float64)
    out = model(pos=pos, atomic_numbers=torch.tensor([1, 1, 8]))
    assert torch.isfinite(out["energy"]).all() and torch.isfinite(out["forces"]).all()
    assert torch.equal(out["forces"][2], torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.update(pos=f["pos"].clone().index_fill_(0, torch.tensor([1]), float("nan"))), "NaN"),
        (lambda f: f.update(pos=torch.cat([f["pos"], f["pos"][:1] + 0.01]),
                            atomic_numbers=torch.cat([f["atomic_numbers"], f["atomic_numbers"][:1]]), natoms=None),
         "overlapping"),
        (lambda f: f.update(atomic_numbers=f["atomic_numbers"].clone().fill_(95)), "outside the embedding table"),
        (lambda f: f.update(cell=None), "no cell"),
        (lambda f: f.update(pos=torch.zeros(0, 3, dtype=torch.float64), atomic_numbers=torch.zeros(0, dtype=torch.long),
                            natoms=None), "empty"),
        (lambda f: f.update(natoms=torch.tensor([5])), "natoms sums to 5"),
        (lambda f: f.update(atomic_numbers=["Cu"] * len(f["atomic_numbers"])),
         r"atomic_numbers must be whole numbers.*'Cu'"),
        (lambda f: f.update(atomic_numbers="CuO"), r"atomic_numbers must be whole numbers.*a str"),
        (lambda f: f.update(atomic_numbers=f["atomic_numbers"] + 0.5), r"atomic_numbers must be whole numbers.*\.5"),
    ],
)
def test_bad_input(change, message):
    model = small_model(lmax=2, mmax=1)
    pos, cell, numbers = slab()
    fields = dict(pos=pos, cell=cell, atomic_numbers=numbers, natoms=torch.tensor([len(numbers)]),
                  pbc=torch.tensor([[True] * 3]))
    change(fields)
    fields = {k: v for k, v in fields.items() if v is not None or k == "cell"}
    with pytest.raises(ValueError, match=message):
        model(**fields)


def test_bad_configuration():
    with pytest.raises(ValueError, match="mmax must be <= lmax"):
        EquiformerV2Config(lmax=2, mmax=3)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("oc20-1B")
    with pytest.raises(ValueError, match="use_grid_mlp=True needs an S2 activation"):
        EquiformerV2Config(activation="gate")
    with pytest.raises(ValueError, match="unknown configuration keys"):
        preset("oc20-31M", num_layer=3)
    with pytest.raises(ValueError, match="graph_mode must be one of 'tie_stable', 'reference', 'reference_nonstrict'"):
        EquiformerV2Config(graph_mode="strict")


def test_accepts_torch_geometric_batches_with_oc20_fields():
    from torch_geometric.data import Batch, Data

    model = small_model(lmax=2, mmax=1)
    pos, cell, numbers = slab()
    atoms = molecule("H2O")
    water = Data(pos=torch.tensor(atoms.positions), atomic_numbers=torch.tensor(atoms.numbers, dtype=torch.float64),
                 cell=torch.diag(torch.tensor([15.0, 15.0, 15.0], dtype=torch.float64))[None], natoms=torch.tensor([3]),
                 tags=torch.full((3,), 2), fixed=torch.zeros(3))
    surface = Data(pos=pos, atomic_numbers=numbers.double(), cell=cell, natoms=torch.tensor([len(numbers)]),
                   tags=torch.ones(len(numbers), dtype=torch.long), fixed=torch.zeros(len(numbers)))
    out = model(Batch.from_data_list([surface, water]))
    alone = call(model, pos, cell, numbers)
    assert out["energy"].shape == (2,) and out["forces"].shape == (len(numbers) + 3, 3)
    assert torch.allclose(out["energy"][0], alone["energy"][0], atol=1e-12)


def _tiny_config(**changes):
    return EquiformerV2Config.tiny(max_num_elements=20, **changes)


def test_save_and_from_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = EquiformerV2(_tiny_config(energy_mean=-3.0, energy_std=2.0, forces_std=0.5)).eval()
    pos = torch.randn(5, 3) * 1.5
    numbers = torch.tensor([1, 6, 8, 7, 1])
    out = model(pos=pos, atomic_numbers=numbers)
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = EquiformerV2.from_checkpoint(path).eval()
    assert loaded.config == model.config
    again = loaded(pos=pos, atomic_numbers=numbers)
    torch.testing.assert_close(again["energy"], out["energy"], rtol=0, atol=0)
    torch.testing.assert_close(again["forces"], out["forces"], rtol=0, atol=0)
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left its temporary file behind"


def test_output_normalisation_scales_energy_and_forces():
    torch.manual_seed(0)
    raw = EquiformerV2(_tiny_config()).eval()
    scaled = EquiformerV2(_tiny_config(energy_mean=-3.0, energy_std=2.0, forces_std=0.5)).eval()
    scaled.load_state_dict(raw.state_dict())
    pos, numbers = torch.randn(4, 3) * 1.5, torch.tensor([1, 6, 8, 1])
    a, b = raw(pos=pos, atomic_numbers=numbers), scaled(pos=pos, atomic_numbers=numbers)
    torch.testing.assert_close(b["energy"], a["energy"] * 2.0 - 3.0)
    torch.testing.assert_close(b["forces"], a["forces"] * 0.5)


def test_from_checkpoint_rejects_corrupt_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read checkpoint"):
        EquiformerV2.from_checkpoint(bad)
    with pytest.raises(ValueError, match="not found"):
        EquiformerV2.from_checkpoint(tmp_path / "missing.pt")


def test_building_on_the_meta_device_does_not_poison_cached_constants():
    """Layouts, grids and Wigner couplings are cached process-wide: a first model built inside
    ``with torch.device("meta")`` (for deferred initialisation) must leave CPU constants behind,
    and materialising it with ``to_empty`` must give working constants."""
    config = EquiformerV2Config(
        lmax=3, mmax=2, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
        attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8, num_distance_basis=16, max_num_elements=20,
        max_radius=5.0, grid_resolution=10, alpha_drop=0.0, drop_path_rate=0.0,
    )
    with torch.device("meta"):
        meta = EquiformerV2(config)
    assert all(p.is_meta for p in meta.parameters())
    pos, numbers = torch.randn(4, 3) * 1.5, torch.tensor([1, 6, 8, 1])
    torch.manual_seed(0)
    model = EquiformerV2(config).eval()
    out = model(pos=pos, atomic_numbers=numbers)
    materialised = meta.to_empty(device="cpu").eval()
    materialised.load_state_dict(model.state_dict())
    again = materialised(pos=pos, atomic_numbers=numbers)
    torch.testing.assert_close(again["forces"], out["forces"])
