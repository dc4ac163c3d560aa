"""Regenerate the target-normalisation parity fixture from the reference implementation.

Needs fairchem-core 1.10.0 beside so2nn, in the reference environment that
``benchmarks/setup_reference.sh`` creates (once) in the clone:

    bash benchmarks/setup_reference.sh
    .venv-reference/bin/python scripts/make_normalization_fixture.py

The parity fixtures of ``scripts/make_parity_fixtures.py`` pin the network; this one pins what
fairchem's trainer does around it at prediction: its ``Normalizer`` modules (``mean``/``rmsd``
state, and the legacy ``mean``/``std`` form under the old names ``target``/``grad_target``), its
``LinearReferences`` (``elementrefs``), the scalar head's ``reduce: sum | mean``, and OC22's
``energy_lin_ref`` weight of the monolithic model (added to the normalised energy; present but
never added in the backbone + heads layout). Each case is a small reference model with random
weights, saved the way fairchem's trainer saves a checkpoint, and the reference's de-normalised
outputs on a batch of two molecules of different sizes, in float64 with its edge frames replaced
by so2nn's. ``tests/models/test_normalization_parity.py`` checks so2nn against it without fairchem.

The element references and ``energy_lin_ref`` values are multiples of 1/64 and the OC22 energy
std a power of two, so that so2nn's imported references (``std * energy_lin_ref +
element_references``, held in the model's dtype) are exact in float32 and the float64
comparison stays at rounding level; the import arithmetic itself is exact for any values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from ase.build import molecule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: E402, F401  (registers the backbone and heads)
from fairchem.core.models.base import HydraModel  # noqa: E402
from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2 as Monolithic  # noqa: E402
from fairchem.core.modules.normalization.element_references import LinearReferences  # noqa: E402
from fairchem.core.modules.normalization.normalizer import Normalizer  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402

from so2nn.graph import radius_graph  # noqa: E402
from so2nn.so3 import edge_frames  # noqa: E402

OUT = ROOT / "tests" / "models" / "fixtures" / "fairchem_normalization.pt"
BACKBONE = dict(
    use_pbc=False, regress_forces=True, otf_graph=False, max_neighbors=20, max_radius=5.0, max_num_elements=90,
    num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
    attn_value_channels=4, ffn_hidden_channels=8, norm_type="layer_norm_sh", lmax_list=[2], mmax_list=[1],
    grid_resolution=18, edge_channels=4, use_grid_mlp=True, alpha_drop=0.0, drop_path_rate=0.0,
    weight_init="uniform", avg_num_nodes=5.5,
)
# what fairchem 1.10's trainer stores beside the model config (values only concern training)
TRAINER_CONFIG = dict(
    trainer="ocp", optim={"batch_size": 4, "lr_initial": 2e-4, "optimizer": "AdamW", "max_epochs": 1},
    loss_functions=[{"energy": {"fn": "mae", "coefficient": 1}}, {"forces": {"fn": "l2mae", "coefficient": 10}}],
    evaluation_metrics={"metrics": {"energy": ["mae"], "forces": ["mae"]}, "primary_metric": "energy_mae"},
    logger="wandb", amp=False, gpus=0, task={}, slurm={}, gp_gpus=None,
    cmd={"identifier": "", "seed": 0, "checkpoint_dir": "checkpoints/run"},
    val_dataset={"src": "val"}, test_dataset={}, relax_dataset={},
    outputs={"energy": {"level": "system", "property": "energy"},
             "forces": {"level": "atom", "property": "forces", "train_on_free_atoms": True,
                        "eval_on_free_atoms": True}},
)


def batch_inputs():
    """Two molecules (9 and 3 atoms) in one batch, with so2nn's strict graph of each."""
    systems = [molecule("CH3CH2OH"), molecule("H2O")]
    systems[0].rattle(0.05, seed=2)
    data, offset = [], 0
    fields = {"pos": [], "atomic_numbers": [], "edge_index": [], "natoms": []}
    for atoms in systems:
        pos = torch.tensor(atoms.positions, dtype=torch.float64)
        numbers = torch.tensor(atoms.numbers)
        edge_index, _ = radius_graph(pos, BACKBONE["max_radius"], None, None, None, BACKBONE["max_neighbors"],
                                     mode="reference")
        data.append(Data(pos=pos, atomic_numbers=numbers.double(), cell=torch.zeros(1, 3, 3, dtype=torch.float64),
                         natoms=torch.tensor([len(numbers)]), edge_index=edge_index,
                         cell_offsets=torch.zeros(edge_index.shape[1], 3, dtype=torch.float64),
                         neighbors=torch.tensor([edge_index.shape[1]]), tags=torch.ones(len(numbers), dtype=torch.long),
                         fixed=torch.zeros(len(numbers))))
        fields["pos"].append(pos)
        fields["atomic_numbers"].append(numbers)
        fields["edge_index"].append(edge_index + offset)
        fields["natoms"].append(len(numbers))
        offset += len(numbers)
    inputs = {"pos": torch.cat(fields["pos"]), "atomic_numbers": torch.cat(fields["atomic_numbers"]),
              "edge_index": torch.cat(fields["edge_index"], dim=1), "natoms": torch.tensor(fields["natoms"])}
    return Batch.from_data_list(data), inputs


def perturb(model):
    """Move norms and attention parameters off their trivial initialisation, then round every
    weight to float32 (the checkpoint stores float32, as fairchem's do)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "alpha" in name:
                p.add_(0.2 * torch.randn_like(p))
            p.copy_(p.float())


def dyadic(values, scale=64.0):
    return torch.round(values * scale) / scale


def patch_frames(backbone):
    backbone._init_edge_rot_mat = lambda data, edge_index, vec: edge_frames(vec)
    backbone.direct_forces = True  # true no-grad inference (its forward re-enables autograd otherwise)


def predict(model, batch, normalizers, elementrefs, property_of=lambda out, key: out[key]):
    """As fairchem's ocp_trainer predicts: each target de-normalised, then its references added."""
    with torch.no_grad():
        out = model(batch)
    result = {}
    for key in ("energy", "forces"):
        # shaped per system or per atom, as the trainer's _forward shapes it
        pred = property_of(out, key).reshape(len(batch.natoms) if key == "energy" else int(batch.natoms.sum()), -1)
        if key in normalizers:
            pred = normalizers[key](pred)
        if key in elementrefs:
            pred = elementrefs[key](pred, batch)
        result[key] = pred.detach().clone().reshape(-1, 3) if key == "forces" else pred.detach().clone().reshape(-1)
    return result


def hydra_case(reduce, normalizers, legacy_names, batch):
    torch.manual_seed(1)  # the same weights for both hydra cases (the fixture stores them once)
    # the backbone holds an OC22-style energy_lin_ref that no hydra head adds
    backbone = {"model": "equiformer_v2_backbone", **BACKBONE, "load_energy_lin_ref": True, "use_energy_lin_ref": True}
    heads = {"energy": {"module": "equiformerV2_scalar_head", "reduce": reduce},
             "forces": {"module": "equiformerV2_vector_head"}}
    model = HydraModel(backbone=backbone, heads=heads, otf_graph=False).eval()
    perturb(model)
    with torch.no_grad():
        model.backbone.energy_lin_ref.copy_(torch.linspace(-3.0, 1.0, BACKBONE["max_num_elements"]))
    patch_frames(model.backbone)
    elementrefs = {"energy": LinearReferences(dyadic(torch.randn(119, dtype=torch.float64) * 4))}
    reference = predict(model, batch, normalizers, elementrefs, property_of=lambda out, key: out[key][key])
    names = {"energy": "target", "forces": "grad_target"} if legacy_names else {}

    def state(key, norm):
        if legacy_names:  # the pre-rewrite form: mean and std
            return {"mean": norm.mean.clone(), "std": norm.rmsd.clone()}
        return norm.state_dict()

    params = dict(model.named_parameters())
    checkpoint = {
        "state_dict": {"module." + k: v.float() for k, v in model.state_dict().items() if k in params},
        "normalizers": {names.get(k, k): state(k, v) for k, v in normalizers.items()},
        "elementrefs": {k: v.state_dict() for k, v in elementrefs.items()},
        "config": {**TRAINER_CONFIG,
                   "model": {"name": "hydra", "backbone": backbone, "heads": heads, "otf_graph": False,
                             "pass_through_head_outputs": False},
                   "dataset": {"format": "ase_db", "src": "train", "a2g_args": {"r_energy": True, "r_forces": True},
                               "transforms": {"normalizer": {"fit": {"targets": {"forces": {"mean": 0.0}, "energy": {}},
                                                                     "batch_size": 64, "num_batches": 10}},
                                              "element_references": {"fit": {"targets": ["energy"],
                                                                             "batch_size": 64}}}}},
        "val_metrics": {}, "amp": None,
    }
    return {"checkpoint": checkpoint, "reference": reference}


def oc22_case(batch):
    torch.manual_seed(3)
    config = {**BACKBONE, "use_energy_lin_ref": True, "load_energy_lin_ref": True,
              "enforce_max_neighbors_strictly": True}
    config.pop("avg_num_nodes")
    model = Monolithic(**config).eval()
    perturb(model)
    with torch.no_grad():
        model.energy_lin_ref.copy_(dyadic(torch.randn(BACKBONE["max_num_elements"]) * 3))
    patch_frames(model)
    normalizers = {"energy": Normalizer(mean=torch.tensor(0.25, dtype=torch.float64),
                                        rmsd=torch.tensor(4.0, dtype=torch.float64)),
                   "forces": Normalizer(mean=torch.tensor(0.0, dtype=torch.float64),
                                        rmsd=torch.tensor(0.75, dtype=torch.float64))}
    elementrefs = {"energy": LinearReferences(dyadic(torch.randn(119, dtype=torch.float64)))}
    reference = predict(model, batch, normalizers, elementrefs)
    model.use_energy_lin_ref = False
    without = predict(model, batch, normalizers, elementrefs)
    params = dict(model.named_parameters())
    checkpoint = {
        "state_dict": {"module." + k: v.float() for k, v in model.state_dict().items() if k in params},
        "normalizers": {k: v.state_dict() for k, v in normalizers.items()},
        "elementrefs": {k: v.state_dict() for k, v in elementrefs.items()},
        "config": {**TRAINER_CONFIG, "trainer": "equiformerv2_forces",
                   "model": {"name": "equiformer_v2", **config},
                   "dataset": {"format": "oc22_lmdb", "src": "train", "key_mapping": {"y": "energy", "force": "forces"},
                               "lin_ref": "oc22_linfit_coeffs.npz",
                               "transforms": {"normalizer": {"energy": {"mean": 0.25, "stdev": 4.0},
                                                             "forces": {"mean": 0.0, "stdev": 0.75}}}}},
    }
    return {"checkpoint": checkpoint, "reference": reference, "reference_without_energy_lin_ref": without}


def main() -> None:
    # the reference builds some constants (grids, Gaussian centres) in the default dtype
    torch.set_default_dtype(torch.float64)
    batch, inputs = batch_inputs()
    f64 = dict(dtype=torch.float64)
    cases = {
        "hydra_sum": hydra_case("sum", {"energy": Normalizer(torch.tensor(-1.25, **f64), torch.tensor(2.7, **f64)),
                                        "forces": Normalizer(torch.tensor(0.0, **f64), torch.tensor(0.6, **f64))},
                                legacy_names=False, batch=batch),
        # a per-atom energy head, legacy names and fields, and a force normaliser with a mean
        "hydra_mean": hydra_case("mean", {"energy": Normalizer(torch.tensor(0.5, **f64), torch.tensor(1.5, **f64)),
                                          "forces": Normalizer(torch.tensor(0.05, **f64), torch.tensor(0.4, **f64))},
                                 legacy_names=True, batch=batch),
        "oc22": oc22_case(batch),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # the hydra cases share their weights: stored once, put back into each checkpoint by the test
    shared = cases["hydra_sum"]["checkpoint"].pop("state_dict")
    assert all(torch.equal(shared[k], v) for k, v in cases["hydra_mean"]["checkpoint"].pop("state_dict").items())
    torch.save({"inputs": inputs, "hydra_state_dict": shared, "cases": cases}, OUT)
    print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
