"""The output heads as modules: their equations, the l = 1 readout's basis, how the model
composes them, the accepted input fields, and graphs without edges through the model."""

import pytest
import torch
from hypothesis import given, settings
from torch_geometric.data import Batch, Data

from so2nn.models import EnergyHead, EquiformerV2, EquiformerV2Config, ForceHead, TargetStatistics
from so2nn.so3 import CoefficientLayout, EdgeRotation, spherical_harmonics
from so2nn.testing import strategies as so2st

TINY = dict(
    lmax=2, mmax=1, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
    attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8, num_distance_basis=16, max_radius=4.0,
    max_num_elements=20, alpha_drop=0.0, drop_path_rate=0.0,
)
GATE = dict(activation="gate", use_grid_mlp=False)


def tiny(seed=0, **changes):
    torch.manual_seed(seed)
    return EquiformerV2(EquiformerV2Config(**{**TINY, **changes})).double().eval()


def test_energy_head_is_its_equation():
    torch.manual_seed(0)
    layout = CoefficientLayout(2, 1)
    head = EnergyHead(layout, sphere_channels=8, hidden_channels=8, avg_num_nodes=3.5, energy_mean=-2.0,
                      energy_std=4.0, grid_resolution=None).double()
    x, batch = torch.randn(6, 9, 8, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1, 2])
    numbers, refs = torch.tensor([1, 8, 6, 1, 1, 3]), torch.randn(10, dtype=torch.float64)
    per_atom = head.energy_block(x)[:, 0, 0]
    expected = torch.stack([per_atom[batch == b].sum() for b in range(3)]) / 3.5 * 4.0 - 2.0
    expected = expected + torch.stack([refs[numbers[batch == b]].sum() for b in range(3)])
    torch.testing.assert_close(head(x, batch, 3, numbers, refs), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="need the atomic_numbers"):
        head(x, batch, 3, None, refs)
    with pytest.raises(ValueError, match="energy_std must be > 0"):
        head.set_statistics(0.0, 0.0)


def test_energy_head_mean_reduce_is_the_per_atom_energy():
    """``reduce="mean"`` (fairchem's scalar head with ``reduce: mean``): each system's sum is
    divided by its own atom count, not by avg_num_nodes, before de-normalisation."""
    torch.manual_seed(0)
    head = EnergyHead(CoefficientLayout(2, 1), sphere_channels=8, hidden_channels=8, avg_num_nodes=3.5,
                      energy_mean=0.5, energy_std=2.0, grid_resolution=None, reduce="mean").double()
    x, batch = torch.randn(6, 9, 8, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1, 2])
    per_atom = head.energy_block(x)[:, 0, 0]
    expected = torch.stack([per_atom[batch == b].mean() for b in range(3)]) * 2.0 + 0.5
    torch.testing.assert_close(head(x, batch, 3), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="reduce must be 'sum' or 'mean'"):
        EnergyHead(CoefficientLayout(2, 1), sphere_channels=8, hidden_channels=8, reduce="max")
    model = tiny(energy_reduce="mean")
    assert model.heads["energy"].reduce == "mean"
    with pytest.raises(ValueError, match="energy_reduce must be 'sum' or 'mean'"):
        EquiformerV2Config(**TINY, energy_reduce="max")


def test_the_l1_block_is_cartesian_in_so2nns_basis():
    """The force head reads the l = 1 coefficients (m = -1, 0, 1) as (x, y, z): so2nn's real
    spherical harmonics of degree 1 are proportional to the Cartesian components."""
    layout = CoefficientLayout(2, 1)
    v = torch.randn(7, 3, dtype=torch.float64)
    Y1 = spherical_harmonics(1, v, normalize=True)[:, layout.degree_slice(1)]
    direction = v / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(Y1 / Y1.norm(dim=1, keepdim=True), direction, rtol=1e-12, atol=1e-12)


@settings(max_examples=5, deadline=None)
@given(R=so2st.rotations())
def test_force_head_rotates_as_a_vector(R):
    torch.manual_seed(1)
    layout = CoefficientLayout(2, 1)
    head = ForceHead(layout, sphere_channels=8, hidden_channels=8, num_heads=2, attn_alpha_channels=4,
                     attn_value_channels=4, edge_channels_list=[6, 8, 8], max_num_elements=10, activation="gate",
                     grid_resolution=None, forces_std=0.5).double().eval()
    pos, x = torch.randn(4, 3, dtype=torch.float64) * 2, torch.randn(4, 9, 8, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 0, 2], [1, 0, 0, 0, 3, 1]])
    edge_features, numbers = torch.randn(6, 6, dtype=torch.float64), torch.tensor([1, 6, 8, 1])

    def forces(pos, x):
        return head(x, edge_features, numbers, edge_index,
                    EdgeRotation(layout, pos[edge_index[0]] - pos[edge_index[1]]))

    out = forces(pos, x)
    raw = head.force_block(x, edge_features, numbers, edge_index,
                           EdgeRotation(layout, pos[edge_index[0]] - pos[edge_index[1]]))
    torch.testing.assert_close(out, 0.5 * raw[:, 1:4, 0], rtol=0, atol=0)
    rotated = forces(pos @ R.T, torch.einsum("ij,njc->nic", layout.D_from_matrix(R), x))
    torch.testing.assert_close(rotated, out @ R.T, rtol=1e-9, atol=1e-9)


def test_force_head_mean_is_added_to_every_component():
    """``forces_mean`` (a fairchem force normaliser's mean): F = raw * std + mean, for parity."""
    torch.manual_seed(1)
    layout = CoefficientLayout(2, 1)
    head = ForceHead(layout, sphere_channels=8, hidden_channels=8, num_heads=2, attn_alpha_channels=4,
                     attn_value_channels=4, edge_channels_list=[6, 8, 8], activation="gate", grid_resolution=None,
                     forces_std=0.5, forces_mean=0.25).double().eval()
    pos, x = torch.randn(3, 3, dtype=torch.float64), torch.randn(3, 9, 8, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 2]])
    rotation = EdgeRotation(layout, pos[edge_index[0]] - pos[edge_index[1]])
    edge_features, numbers = torch.randn(4, 6, dtype=torch.float64), torch.tensor([1, 6, 8])
    raw = head.force_block(x, edge_features, numbers, edge_index, rotation)[:, 1:4, 0]
    torch.testing.assert_close(head(x, edge_features, numbers, edge_index, rotation), 0.5 * raw + 0.25, rtol=0, atol=0)
    with pytest.raises(ValueError, match="forces_mean=0.25 needs direct forces"):
        EquiformerV2Config(**TINY, direct_forces=False, forces_mean=0.25)


def test_the_model_composes_its_heads():
    direct, conservative = tiny(), tiny(direct_forces=False)
    assert list(direct.heads) == ["energy", "forces"] and list(conservative.heads) == ["energy"]
    assert direct.output_names == ("energy", "forces")
    keys = list(direct.state_dict())
    assert any(k.startswith("heads.energy.energy_block.") for k in keys)
    assert any(k.startswith("heads.forces.force_block.") for k in keys)
    stats = TargetStatistics(energy_mean=-1.0, energy_std=3.0, forces_std=0.25,
                             element_references=tuple(float(z) for z in range(20)))
    pos, numbers = torch.tensor([[0.0, 0, 0], [1.1, 0, 0], [0, 1.2, 0.3]], dtype=torch.float64), torch.tensor([8, 1, 1])
    before = direct(pos=pos, atomic_numbers=numbers)
    assert direct.with_target_statistics(stats) is direct and direct.target_statistics == stats
    assert direct.config.energy_std == 3.0 and direct.config.use_energy_lin_ref
    after = direct(pos=pos, atomic_numbers=numbers)
    torch.testing.assert_close(after["energy"], before["energy"] * 3.0 - 1.0 + 10.0)
    torch.testing.assert_close(after["forces"], before["forces"] * 0.25)
    with pytest.raises(ValueError, match="element_references must have 20 entries"):
        direct.with_target_statistics(TargetStatistics(element_references=(0.0,)))


def test_target_statistics_have_one_home_the_heads():
    """The heads hold the statistics they de-normalise with; the config reads them there, so a
    head's statistics set by any route are the config's (and the checkpoint's). A model without
    a force head keeps its force scale (the loss scale of gradient forces) in its config."""
    direct, conservative = tiny(energy_mean=-2.0, forces_std=0.5, forces_mean=0.1), tiny(direct_forces=False)
    energy, forces = direct.heads["energy"], direct.heads["forces"]
    assert (energy.energy_mean, forces.forces_std, forces.forces_mean) == (-2.0, 0.5, 0.1)
    energy.set_statistics(4.0, 2.0)
    forces.set_statistics(0.3)
    c = direct.config
    assert (c.energy_mean, c.energy_std, c.forces_std, c.forces_mean) == (4.0, 2.0, 0.3, 0.0)
    assert direct.target_statistics == TargetStatistics(4.0, 2.0, 0.3)
    again = EquiformerV2(direct.config)
    assert (again.heads["energy"].energy_mean, again.heads["forces"].forces_std) == (4.0, 0.3)
    conservative.with_target_statistics(TargetStatistics(energy_mean=1.0, energy_std=2.0, forces_std=0.7))
    assert conservative.heads["energy"].energy_std == 2.0 and conservative.config.forces_std == 0.7


def test_unknown_inputs_raise_and_oc20_metadata_is_tolerated():
    model = tiny()
    pos, numbers = torch.tensor([[0.0, 0, 0], [1.1, 0, 0]], dtype=torch.float64), torch.tensor([8, 1])
    with pytest.raises(ValueError, match=r"unknown input field\(s\) \['tags'\]"):
        model(pos=pos, atomic_numbers=numbers, tags=torch.zeros(2))
    with pytest.raises(ValueError, match=r"unknown input field\(s\) \['positions'\]"):
        model(positions=pos, atomic_numbers=numbers)
    data = Data(pos=pos, atomic_numbers=numbers, natoms=2, energy=torch.zeros(1), forces=torch.zeros(2, 3),
                tags=torch.zeros(2), fixed=torch.zeros(2, dtype=torch.bool), sid=3, fid=0)
    out = model(Batch.from_data_list([data, data]))
    assert out["energy"].shape == (2,)
    data.charge = torch.zeros(2)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['charge'\] in the input Data"):
        model(data)
    with pytest.raises(ValueError, match="a torch_geometric Data/Batch or keyword arguments"):
        model({"pos": pos, "atomic_numbers": numbers})


@pytest.mark.parametrize("direct_forces", [True, False])
def test_graphs_without_edges(direct_forces):
    """A single atom, atoms beyond the cutoff, and a batch in which one system has no edges:
    finite energies (the isolated atoms' energies), zero forces, no NaN."""
    model = tiny(direct_forces=direct_forces, **GATE)
    one = model(pos=torch.zeros(1, 3, dtype=torch.float64), atomic_numbers=torch.tensor([8]))
    assert torch.isfinite(one["energy"]).all() and torch.equal(one["forces"], torch.zeros(1, 3, dtype=torch.float64))
    h = model(pos=torch.zeros(1, 3, dtype=torch.float64), atomic_numbers=torch.tensor([1]))
    far = model(pos=torch.tensor([[0.0, 0, 0], [10.0, 0, 0], [0, 20.0, 0]], dtype=torch.float64),
                atomic_numbers=torch.tensor([8, 1, 1]))
    assert torch.equal(far["forces"], torch.zeros(3, 3, dtype=torch.float64))
    # no edges: the energy is the sum of the isolated atoms' energies (one system, same normalisation)
    torch.testing.assert_close(far["energy"], one["energy"] + 2 * h["energy"] - 2 * model.config.energy_mean,
                               rtol=1e-12, atol=1e-12)
    water = torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], dtype=torch.float64)
    batch = model(pos=torch.cat([water, torch.zeros(1, 3, dtype=torch.float64)]),
                  atomic_numbers=torch.tensor([8, 1, 1, 8]), natoms=torch.tensor([3, 1]))
    alone = model(pos=water, atomic_numbers=torch.tensor([8, 1, 1]))
    assert torch.isfinite(batch["energy"]).all() and torch.isfinite(batch["forces"]).all()
    torch.testing.assert_close(batch["energy"], torch.cat([alone["energy"], one["energy"]]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(batch["forces"][:3], alone["forces"], rtol=1e-12, atol=1e-12)
    assert torch.equal(batch["forces"][3], torch.zeros(3, dtype=torch.float64))
    # in training mode too (the gradient of an edge-free energy is zero, not an error)
    model.train()
    out = model(pos=torch.zeros(1, 3, dtype=torch.float64), atomic_numbers=torch.tensor([8]))
    out["energy"].sum().backward()
    assert torch.isfinite(out["energy"]).all()
