"""Energy-only models (``regress_forces=False``): no force head, no ``"forces"`` output, and
the import of the reference's energy-only checkpoints (its IS2RE models).

The fixture comes from scripts/make_energy_only_fixtures.py (run with fairchem-core 1.10.0);
this test needs only so2nn. Two small reference models without force weights, the monolithic
``equiformer_v2`` with ``regress_forces: False`` and the backbone + heads layout with an energy
head only, on a batch of two periodic crystals with the reference's edge frames replaced by
so2nn's: float64 agrees to 1e-12 relative.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from so2nn.calculators import So2nnCalculator
from so2nn.models import EquiformerV2, EquiformerV2Config
from so2nn.models.fairchem import config_from_fairchem

FIXTURE = Path(__file__).parent / "fixtures" / "energy_only.pt"
MODELS = ["monolithic", "hydra"]


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def checkpoint_of(fixture, name):
    return copy.deepcopy(fixture["models"][name]["checkpoint"])


def run(model, inputs, dtype=torch.float64):
    with torch.no_grad():
        return model(pos=inputs["pos"].to(dtype), atomic_numbers=inputs["atomic_numbers"],
                     natoms=inputs["natoms"], cell=inputs["cell"].to(dtype), edge_index=inputs["edge_index"],
                     cell_offsets=inputs["cell_offsets"])


@pytest.mark.parametrize("kernels", ["auto", "reference"])
@pytest.mark.parametrize("name", MODELS)
def test_energy_only_checkpoint_matches_the_reference(fixture, name, kernels):
    model = EquiformerV2.from_fairchem(checkpoint_of(fixture, name), graph_mode="reference", kernels=kernels)
    assert model.config.regress_forces is False
    assert list(model.heads) == ["energy"] and model.output_names == ("energy",)
    out = run(model.double().eval(), fixture["inputs"])
    assert set(out) == {"energy"}
    ref = fixture["models"][name]["reference_same_frames"]["energy"]
    relative = float((out["energy"] - ref).abs().max() / ref.abs().max())
    assert relative <= 1e-12, relative


def test_heads_decide_in_the_backbone_and_heads_layout(fixture):
    """The backbone's regress_forces does not reach the heads: a forces head means forces."""
    config = checkpoint_of(fixture, "hydra")["config"]["model"]
    assert config_from_fairchem(config).regress_forces is False
    config["heads"]["forces"] = {"module": "equiformerV2_vector_head"}
    assert config_from_fairchem(config).regress_forces is True
    monolithic = checkpoint_of(fixture, "monolithic")["config"]["model"]
    assert config_from_fairchem({**monolithic, "regress_forces": True}).regress_forces is True
    assert config_from_fairchem({k: v for k, v in monolithic.items() if k != "regress_forces"}).regress_forces
    with pytest.raises(ValueError, match="regress_forces must be true or false, got 'no'"):
        config_from_fairchem({**monolithic, "regress_forces": "no"})


def test_force_weights_that_do_not_match_the_config_raise(fixture):
    checkpoint = checkpoint_of(fixture, "monolithic")
    checkpoint["config"]["model"]["regress_forces"] = True  # a force model's config, without its weights
    with pytest.raises(ValueError, match="missing"):
        EquiformerV2.from_fairchem(checkpoint)
    checkpoint = checkpoint_of(fixture, "monolithic")
    checkpoint["state_dict"]["module.force_block.proj.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="force_block.proj.weight"):
        EquiformerV2.from_fairchem(checkpoint)


def test_the_calculator_offers_the_energy_only(fixture):
    inputs = fixture["inputs"]
    n = int(inputs["natoms"][0])
    atoms = Atoms(numbers=inputs["atomic_numbers"][:n].numpy(), positions=inputs["pos"][:n].numpy(),
                  cell=inputs["cell"][0].numpy(), pbc=True)
    calc = So2nnCalculator(checkpoint_of(fixture, "monolithic"), device="cpu", dtype=torch.float64)
    assert calc.implemented_properties == ["energy", "free_energy"]
    atoms.calc = calc
    energy = atoms.get_potential_energy()
    model = EquiformerV2.from_fairchem(checkpoint_of(fixture, "monolithic")).double().eval()
    with torch.no_grad():
        expected = model(pos=torch.as_tensor(atoms.positions), atomic_numbers=torch.as_tensor(atoms.numbers),
                         cell=torch.as_tensor(np.array(atoms.cell))[None])["energy"]
    assert energy == pytest.approx(float(expected), rel=1e-12, abs=1e-15)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_forces()


@pytest.mark.parametrize("direct_forces", [True, False])
def test_an_energy_only_model_trains_and_saves(tmp_path, direct_forces):
    config = EquiformerV2Config.tiny(max_radius=4.0, avg_num_nodes=3.0, regress_forces=False,
                                     direct_forces=direct_forces)
    torch.manual_seed(0)
    model = EquiformerV2(config).double()
    assert model.output_names == ("energy",) and "forces" not in model.heads
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]], dtype=torch.float64)
    numbers = torch.tensor([8, 1, 1])
    assert set(model(pos=pos, atomic_numbers=numbers)) == {"energy"}
    optimiser, losses = torch.optim.Adam(model.parameters(), lr=1e-2), []
    for _ in range(8):  # the energy alone is a training target
        optimiser.zero_grad()
        loss = (model(pos=pos, atomic_numbers=numbers)["energy"] - 1.0).pow(2).sum()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses
    model.save(tmp_path / "model.pt")
    again = EquiformerV2.from_checkpoint(tmp_path / "model.pt")
    assert again.config == model.config and again.output_names == ("energy",)


def test_config_checks_of_regress_forces():
    with pytest.raises(ValueError, match="dens_denoising_head=True needs a force head"):
        EquiformerV2Config(regress_forces=False, dens_denoising_head=True)
    with pytest.raises(ValueError, match="regress_forces must be a bool"):
        EquiformerV2Config(regress_forces=0)
