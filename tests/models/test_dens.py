"""DeNS models (fairchem's ``equiformer_v2_dens_backbone`` with the ``eqV2_DeNS_*`` heads).

The fixture comes from scripts/make_dens_fixtures.py (fairchem-core 1.10.0, run with fairchem
installed); this test needs only so2nn. It holds a small DeNS model with random, perturbed
weights (force and noise-scale encodings included), saved as fairchem's DeNS trainer saves it,
and the reference's prediction-time outputs on a triclinic crystal and a molecule.
"""

from itertools import combinations
from pathlib import Path

import pytest
import torch
from ase.build import bulk
from hypothesis import given, settings

from so2nn.models import DenoisingForceHead, EquiformerV2, EquiformerV2Config
from so2nn.testing import assert_equivariant
from so2nn.testing import strategies as so2st

FIXTURE = Path(__file__).parent / "fixtures" / "dens_31M.pt"
KEYS = ("energy", "forces")


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=False)


def _relative(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _fields(inputs, dtype):
    fields = dict(pos=inputs["pos"].to(dtype), atomic_numbers=inputs["atomic_numbers"],
                  natoms=inputs["natoms"], edge_index=inputs["edge_index"])
    if inputs["periodic"]:
        fields.update(cell=inputs["cell"].to(dtype), cell_offsets=inputs["cell_offsets"])
    return fields


def _run(model, inputs, dtype):
    """The model's outputs and its force head's denoising output (from the head's own inputs)."""
    captured = {}
    hook = model.heads["forces"].register_forward_hook(lambda head, args, out: captured.update(args=args))
    with torch.no_grad():
        out = model(**_fields(inputs, dtype))
        out["denoising_positions"] = model.heads["forces"].denoising_positions(*captured["args"])
    hook.remove()
    return out


def _ours(checkpoint, dtype, **changes):
    return EquiformerV2.from_fairchem(checkpoint, graph_mode="reference", **changes).to(dtype).eval()


def test_dens_checkpoint_config(fixture):
    model = _ours(fixture["checkpoint"], torch.float64)
    c = model.config
    assert (c.dens_force_embedding, c.dens_sigma_embedding, c.dens_denoising_head) == (True, True, True)
    assert isinstance(model.heads["forces"], DenoisingForceHead)
    weights = fixture["checkpoint"]["state_dict"]
    assert torch.equal(model.denoising_embedding.force_embedding.bias,
                       weights["module.backbone.force_embedding.bias"].double())
    assert torch.equal(model.denoising_embedding.sigma_embedding.bias,
                       weights["module.backbone.noise_schedule_sigma_embedding.bias"].double())
    assert torch.equal(model.heads["energy"].energy_block.so3_linear_1.weight,
                       weights["module.output_heads.energy.scalar_block.so3_linear_1.weight"].double())


@pytest.mark.parametrize("case", ["bulk", "molecule"])
@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_same_frames_float64(fixture, case, kernels):
    data = fixture["cases"][case]
    ours = _run(_ours(fixture["checkpoint"], torch.float64, kernels=kernels), data["inputs"], torch.float64)
    ref = data["reference_same_frames"]["torch.float64"]
    for key in (*KEYS, "denoising_positions"):  # the denoising attention's weights load where they belong
        assert _relative(ours[key], ref[key]) <= 1e-12, key


@pytest.mark.parametrize("case", ["bulk", "molecule"])
def test_same_frames_float32(fixture, case):
    data = fixture["cases"][case]
    ours = _run(_ours(fixture["checkpoint"], torch.float32), data["inputs"], torch.float32)
    ref, truth = (data["reference_same_frames"][str(dtype)] for dtype in (torch.float32, torch.float64))
    for key in KEYS:
        floor = 2 * _relative(ref[key].double(), truth[key])  # the reference's own float32 rounding
        assert _relative(ours[key], ref[key]) <= max(1e-5, floor), key
        assert _relative(ours[key].double(), truth[key]) <= max(1e-5, floor), key


@pytest.mark.parametrize("case", ["bulk", "molecule"])
def test_random_roll_parity(fixture, case):
    data = fixture["cases"][case]
    ours, rolls = _run(_ours(fixture["checkpoint"], torch.float64), data["inputs"], torch.float64), \
        data["reference_random_rolls_float64"]
    for key in KEYS:
        spread = max(float((a[key] - b[key]).abs().max()) for a, b in combinations(rolls, 2))
        distance = max(float((ours[key] - r[key]).abs().max()) for r in rolls)
        assert distance <= 1.25 * spread, (key, distance, spread)


@pytest.mark.parametrize("weight", ["force_embedding", "noise_schedule_sigma_embedding"])
def test_encoding_biases_act_at_prediction(fixture, weight):
    """The force input and the noise scale are zero at prediction, but the biases of their encodings
    still add to the features: a loader that dropped either would miss the reference's numbers."""
    checkpoint = fixture["checkpoint"]
    key = f"module.backbone.{weight}.bias"
    weights = checkpoint["state_dict"]
    changed = {**checkpoint, "state_dict": {**weights, key: torch.zeros_like(weights[key])}}
    data = fixture["cases"]["bulk"]
    ours = _run(_ours(changed, torch.float64), data["inputs"], torch.float64)
    ref = data["reference_same_frames"]["torch.float64"]
    for name in KEYS:
        assert _relative(ours[name], ref[name]) > 1e-3, name


def test_dens_checkpoint_from_file(fixture, tmp_path):
    path = tmp_path / "dens.pt"
    torch.save(fixture["checkpoint"], path)
    a, b = EquiformerV2.from_checkpoint(path), EquiformerV2.from_fairchem(fixture["checkpoint"])
    b.save(tmp_path / "so2nn.pt")  # and so2nn's own format keeps the DeNS parts
    c = EquiformerV2.from_checkpoint(tmp_path / "so2nn.pt")
    assert a.config == b.config == c.config
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y) and torch.equal(x, z), name


def test_class_path_module_names_load_as_registered_names(fixture):
    """The released DeNS configs name the backbone and heads by class path
    (``fairchem.core.models.equiformer_v2.equiformer_v2_dens.DeNSScalarHead``, ...): the same
    model as under the registered names."""
    path = "fairchem.core.models.equiformer_v2.equiformer_v2_dens."
    checkpoint = fixture["checkpoint"]
    heads = checkpoint["config"]["model"]["heads"]
    classes = {"eqV2_DeNS_scalar_head": "DeNSScalarHead", "eqV2_DeNS_vector_head": "DeNSVectorHead"}
    renamed = _with_model_config(checkpoint, backbone={"model": path + "EqV2DeNSBackbone"},
                                 heads={name: {**head, "module": path + classes[head["module"]]}
                                        for name, head in heads.items()})
    a, b = EquiformerV2.from_fairchem(checkpoint), EquiformerV2.from_fairchem(renamed)
    assert a.config == b.config and a.config.dens_denoising_head
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def _with_model_config(checkpoint, backbone=None, heads=None, drop=()):
    model = checkpoint["config"]["model"]
    model = {**model, "backbone": {**model["backbone"], **(backbone or {})},
             "heads": {**model["heads"], **(heads or {})}}
    state = {k: v for k, v in checkpoint["state_dict"].items() if not any(d in k for d in drop)}
    return {**checkpoint, "state_dict": state, "config": {**checkpoint["config"], "model": model}}


def test_dens_checkpoint_errors(fixture):
    checkpoint = fixture["checkpoint"]
    with pytest.raises(ValueError, match="unknown backbone model 'escn_backbone'"):
        EquiformerV2.from_fairchem(_with_model_config(checkpoint, backbone={"model": "escn_backbone"}))
    # a plain backbone knows no DeNS settings, and has no place for the encodings' weights
    plain = _with_model_config(checkpoint, backbone={"model": "equiformer_v2_backbone"})
    with pytest.raises(ValueError, match=r"unknown keys in the reference model config: \['use_force_encoding'"):
        EquiformerV2.from_fairchem(plain)
    # the noise-scale encoding switched off: its weights are not expected
    with pytest.raises(ValueError, match="unknown keys .*sigma_embedding"):
        EquiformerV2.from_fairchem(
            _with_model_config(checkpoint, backbone={"use_noise_schedule_sigma_encoding": False}))
    with pytest.raises(ValueError, match="missing keys .*denoising_pos_block"):
        EquiformerV2.from_fairchem(_with_model_config(checkpoint, drop=("denoising_pos_block",)))
    with pytest.raises(ValueError, match=r"head 'forces' with options \{'output_name': 'other'\}"):
        EquiformerV2.from_fairchem(_with_model_config(
            checkpoint, heads={"forces": {"module": "eqV2_DeNS_vector_head", "output_name": "other"}}))
    # training-only DeNS options are accepted whatever their value
    model = EquiformerV2.from_fairchem(_with_model_config(
        checkpoint, backbone={"use_force_encoding": False},
        heads={"energy": {"module": "eqV2_DeNS_scalar_head", "use_denoising": False}}))
    assert model.config.dens_force_embedding
    # a plain force head on the DeNS backbone: no denoising attention
    model = EquiformerV2.from_fairchem(_with_model_config(
        checkpoint, heads={"forces": {"module": "equiformerV2_vector_head"}}, drop=("denoising_pos_block",)))
    assert not model.config.dens_denoising_head and "denoising_pos_block" not in str(list(model.state_dict()))


def test_config_checks():
    with pytest.raises(ValueError, match="dens_sigma_embedding=True is part of the DeNS embedding"):
        EquiformerV2Config(dens_sigma_embedding=True)
    with pytest.raises(ValueError, match="dens_denoising_head=True needs a force head"):
        EquiformerV2Config(dens_denoising_head=True, direct_forces=False)


SMALL = dict(lmax=3, mmax=2, num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2,
             attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8,
             num_distance_basis=16, max_radius=4.5, max_neighbors=12, alpha_drop=0.0, drop_path_rate=0.0,
             max_num_elements=30, activation="gate", use_grid_mlp=False,
             dens_force_embedding=True, dens_sigma_embedding=True, dens_denoising_head=True)


@pytest.fixture(scope="module")
def gate_model():
    torch.manual_seed(0)
    model = EquiformerV2(EquiformerV2Config(**SMALL)).double().eval()
    with torch.no_grad():  # the DeNS term, zero at initialisation, made large
        model.denoising_embedding.force_embedding.bias.normal_()
        model.denoising_embedding.sigma_embedding.bias.normal_()
    return model


@given(R=so2st.rotations())
@settings(max_examples=5, deadline=None)
def test_dens_gate_model_is_exactly_equivariant(gate_model, R):
    crystal = bulk("NaCl", "rocksalt", a=5.64)  # primitive fcc cell: not orthogonal
    crystal.rattle(0.1, seed=5)
    pos, cell = torch.tensor(crystal.positions), torch.tensor(crystal.cell.array)[None]
    numbers = torch.tensor(crystal.numbers)
    f = lambda pos, cell: gate_model(pos=pos, cell=cell, atomic_numbers=numbers)  # noqa: E731
    outputs = {"energy": None, "forces": "vector"}
    assert_equivariant(f, [pos, cell], ["vector", "vector"], outputs, R.double(), 1e-9)


def test_training_gives_every_weight_a_gradient_and_the_unused_ones_zero():
    """In training the reference still applies the encodings to zero inputs and adds 0 x the
    denoising output: those weights get a zero gradient (not none), as DDP and weight decay expect."""
    torch.manual_seed(1)
    model = EquiformerV2(EquiformerV2Config(**{**SMALL, "lmax": 2, "mmax": 1})).double().train()
    crystal = bulk("NaCl", "rocksalt", a=5.64)
    crystal.rattle(0.1, seed=6)
    out = model(pos=torch.tensor(crystal.positions), cell=torch.tensor(crystal.cell.array)[None],
                atomic_numbers=torch.tensor(crystal.numbers))
    (out["energy"].sum() + out["forces"].square().sum()).backward()
    unused = ("denoising_embedding.force_embedding.weight", "denoising_embedding.sigma_embedding.weight",
              "heads.forces.denoising_pos_block.")
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if name.startswith(unused):
            assert not p.grad.any(), name
    assert model.denoising_embedding.force_embedding.bias.grad.any()
    assert model.heads["forces"].force_block.proj.weight.grad.any()
