"""The reference's target normalisation, number for number (fairchem-core 1.10.0).

The fixture comes from scripts/make_normalization_fixture.py (run with fairchem installed): small
reference models with random weights, saved as fairchem's trainer saves them, with its
``Normalizer`` (``mean``/``rmsd``, and the legacy ``mean``/``std`` under the old names),
``LinearReferences`` (``elementrefs``), the scalar head's ``reduce: sum | mean``, and OC22's
``energy_lin_ref`` (added by the monolithic model; held but never added by the backbone + heads
layout), and the reference's de-normalised outputs as its trainer's ``predict`` returns them.
Same weights, same graph, edge frames matched: float64 agrees to 1e-12.
"""

from pathlib import Path

import pytest
import torch

from so2nn.models import EquiformerV2

FIXTURE = Path(__file__).parent / "fixtures" / "fairchem_normalization.pt"


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _checkpoint(fixture, name):
    checkpoint = dict(fixture["cases"][name]["checkpoint"])
    checkpoint.setdefault("state_dict", fixture["hydra_state_dict"])
    return checkpoint


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _ours(model, inputs):
    model = model.double().eval()
    with torch.no_grad():
        return model(pos=inputs["pos"].double(), atomic_numbers=inputs["atomic_numbers"], natoms=inputs["natoms"],
                     edge_index=inputs["edge_index"])


def _load(fixture, name, **changes):
    checkpoint = _checkpoint(fixture, name)
    if name == "hydra_mean":  # its force normaliser has a mean: reproduced, with a warning
        with pytest.warns(UserWarning, match=r"'forces' normaliser has mean 0.05.*breaks rotation equivariance"):
            return EquiformerV2.from_fairchem(checkpoint, graph_mode="reference", **changes)
    return EquiformerV2.from_fairchem(checkpoint, graph_mode="reference", **changes)


@pytest.mark.parametrize("name", ["hydra_sum", "hydra_mean", "oc22"])
def test_denormalised_outputs_match_the_reference(fixture, name):
    ours, reference = _ours(_load(fixture, name), fixture["inputs"]), fixture["cases"][name]["reference"]
    for key in ("energy", "forces"):
        assert _relative(ours[key], reference[key]) <= 1e-12, key


def test_what_the_import_reads(fixture):
    """The numbers land where the contract says: normalisers in the config, element references
    (eV, after de-normalisation) in ``energy_lin_ref``, the head's reduce in ``energy_reduce``."""
    hydra = _load(fixture, "hydra_sum")
    c = hydra.config
    assert (c.energy_mean, c.energy_std, c.forces_mean, c.forces_std) == (-1.25, 2.7, 0.0, 0.6)
    assert c.use_energy_lin_ref and c.energy_reduce == "sum"
    refs = _checkpoint(fixture, "hydra_sum")["elementrefs"]["energy"]["element_references"]
    # the backbone's OC22-style energy_lin_ref is never added by a hydra head: only elementrefs count
    assert torch.equal(hydra.energy_lin_ref.double(), refs[: c.max_num_elements])
    mean = _load(fixture, "hydra_mean").config
    assert (mean.energy_reduce, mean.energy_mean, mean.energy_std, mean.forces_mean, mean.forces_std) == (
        "mean", 0.5, 1.5, 0.05, 0.4)
    oc22 = _checkpoint(fixture, "oc22")
    model = _load(fixture, "oc22")
    lin = oc22["state_dict"]["module.energy_lin_ref"].double()
    expected = 4.0 * lin + oc22["elementrefs"]["energy"]["element_references"][: lin.numel()]
    assert torch.equal(model.energy_lin_ref.double(), expected)


def test_oc22_energy_lin_ref_override(fixture):
    """``use_energy_lin_ref=False`` leaves OC22's linear references out, as the reference with
    ``use_energy_lin_ref: False``; fairchem's elementrefs are still added."""
    case = fixture["cases"]["oc22"]
    ours = _ours(_load(fixture, "oc22", use_energy_lin_ref=False), fixture["inputs"])
    reference = case["reference_without_energy_lin_ref"]
    for key in ("energy", "forces"):
        assert _relative(ours[key], reference[key]) <= 1e-12, key
    assert (ours["energy"] - case["reference"]["energy"]).abs().min() > 1.0  # the references matter


def test_hydra_energy_lin_ref_only_on_request(fixture):
    """The backbone's ``energy_lin_ref`` loads without being applied; ``use_energy_lin_ref=True``
    adds it (std * weight, eV) for a user who asks."""
    checkpoint = _checkpoint(fixture, "hydra_sum")
    default = EquiformerV2.from_fairchem(checkpoint)
    forced = EquiformerV2.from_fairchem(checkpoint, use_energy_lin_ref=True)
    lin = checkpoint["state_dict"]["module.backbone.energy_lin_ref"].double()
    assert torch.allclose(forced.energy_lin_ref.double() - default.energy_lin_ref.double(), 2.7 * lin, atol=1e-6)


def test_the_override_reaches_every_loading_entry_point(fixture, tmp_path):
    """``use_energy_lin_ref`` is a keyword of from_fairchem, from_checkpoint, load_model and the calculator."""
    from so2nn.calculators import So2nnCalculator
    from so2nn.models import load_model

    path = tmp_path / "oc22.pt"
    checkpoint = _checkpoint(fixture, "oc22")
    torch.save(checkpoint, path)
    # without OC22's energy_lin_ref, fairchem's elementrefs alone remain (so2nn's flag stays on)
    elementrefs = checkpoint["elementrefs"]["energy"]["element_references"][:90]
    for load in (EquiformerV2.from_fairchem, EquiformerV2.from_checkpoint, load_model):
        assert not torch.equal(load(path).energy_lin_ref.double(), elementrefs)
        assert torch.equal(load(path, use_energy_lin_ref=False).energy_lin_ref.double(), elementrefs)
    calculator = So2nnCalculator(path, device="cpu", use_energy_lin_ref=False)
    assert torch.equal(calculator.model.energy_lin_ref.double(), elementrefs)
