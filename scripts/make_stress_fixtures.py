"""Regenerate the parity fixture of the rank-2 stress head from the reference implementation.

Needs fairchem-core 1.10.0 beside so2nn, in the reference environment that
``benchmarks/setup_reference.sh`` creates (once) in the clone:

    bash benchmarks/setup_reference.sh
    .venv-reference/bin/python scripts/make_stress_fixtures.py

It builds small OMat24-style backbone + heads models of the reference (``hydra``:
``equiformer_v2_backbone``, ``equiformerV2_scalar_head``, ``equiformerV2_vector_head`` and
``rank2_symmetric_head``) in every variant of the stress head (decomposed with source and
target embeddings, as OMat24's; decomposed with edge-level MLPs, extensive; the plain rank-2
block, node- and edge-level), with random weights moved off their initialisation, and runs
them on a batch of two periodic bulk crystals (a rattled rock-salt cell and a triclinic
one) with the reference's edge frames replaced by so2nn's, in float64. The stress is taken
the way fairchem's trainer predicts it: the head's parts de-normalised with fairchem's own
``Normalizer`` modules (mean and rmsd) and recombined by the trainer's change of basis.
tests/models/test_stress_parity.py checks so2nn against it without fairchem.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: E402, F401  (registers the backbone)
import fairchem.core.models.equiformer_v2.heads  # noqa: E402, F401  (registers the heads)
from fairchem.core.models.base import HydraModel  # noqa: E402
from fairchem.core.modules.normalization.normalizer import Normalizer  # noqa: E402
from fairchem.core.trainers.base_trainer import BaseTrainer  # noqa: E402
from fairchem.core.trainers.ocp_trainer import OCPTrainer  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402

from so2nn.graph import radius_graph  # noqa: E402
from so2nn.so3 import edge_frames  # noqa: E402

OUT = ROOT / "tests" / "models" / "fixtures" / "stress_heads.pt"
BACKBONE = dict(
    model="equiformer_v2_backbone", use_pbc=True, regress_forces=True, otf_graph=False, max_neighbors=20,
    max_radius=6.0, max_num_elements=90, num_layers=1, lmax_list=[3], mmax_list=[2], sphere_channels=8,
    attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8,
    norm_type="layer_norm_sh", grid_resolution=18, edge_channels=8, use_grid_mlp=True, alpha_drop=0.0,
    drop_path_rate=0.0, weight_init="uniform",
)
DECOMPOSED_OUTPUT = {"level": "system", "decomposition": {"stress_isotropic": {"irrep_dim": 0},
                                                          "stress_anisotropic": {"irrep_dim": 2}}}
# name -> (stress head options, outputs['stress'], stress normalisers {name: (mean, rmsd)})
VARIANTS = {
    "decomposed_source_target": (
        dict(decompose=True, use_source_target_embedding=True),
        DECOMPOSED_OUTPUT,
        {"stress_isotropic": (0.003, 0.02), "stress_anisotropic": (0.0, 0.01)},
    ),
    "decomposed_edge_extensive": (
        dict(decompose=True, edge_level_mlp=True, extensive=True, avg_num_nodes=3.5, num_mlp_layers=3),
        DECOMPOSED_OUTPUT,
        # a non-zero anisotropic mean: applied to every component, as the trainer applies it
        {"stress_isotropic": (-0.01, 0.05), "stress_anisotropic": (0.002, 0.03)},
    ),
    "rank2_edge": (
        dict(decompose=False, edge_level_mlp=True, use_source_target_embedding=True),
        {"level": "system"},
        {"stress": (0.0, 0.04)},
    ),
    "rank2_node_extensive": (
        dict(decompose=False, extensive=True, num_mlp_layers=1),
        {"level": "system"},
        {},
    ),
}
ENERGY_FORCES = {"energy": (-3.0, 2.0), "forces": (0.0, 0.5)}  # (mean, rmsd)
# so2nn config field of each normaliser's (mean, std)
FIELDS = {"energy": ("energy_mean", "energy_std"), "forces": (None, "forces_std"),
          "stress_isotropic": ("stress_isotropic_mean", "stress_isotropic_std"),
          "stress_anisotropic": ("stress_anisotropic_mean", "stress_anisotropic_std"),
          "stress": ("stress_mean", "stress_std")}


def crystals():
    # Cell entries are multiples of 1/64 A: the reference computes the periodic offsets in
    # float32 (cell_offsets.float() @ cell.float()), which is then exact, so float64 runs of
    # both implementations see the same edge vectors.
    salt = bulk("NaCl", "rocksalt", a=5.625)
    salt.rattle(0.05, seed=3)
    cell = np.array([[3.125, 0.0, 0.0], [0.703125, 2.90625, 0.0], [-0.5, 0.40625, 3.296875]])  # triclinic
    triclinic = Atoms("MgO2", scaled_positions=[[0.0, 0.0, 0.0], [0.48, 0.52, 0.45], [0.27, 0.71, 0.12]],
                      cell=cell, pbc=True)
    triclinic.rattle(0.03, seed=4)
    return [salt, triclinic]


def inputs_of(systems):
    """so2nn's graph of each crystal (strict 20-neighbour cut), as one batch."""
    pos, numbers, cells, natoms, edges, offsets, start = [], [], [], [], [], [], 0
    for atoms in systems:
        p = torch.tensor(atoms.positions, dtype=torch.float64)
        c = torch.tensor(np.array(atoms.cell), dtype=torch.float64)[None]
        e, o = radius_graph(p, BACKBONE["max_radius"], c, None, None, BACKBONE["max_neighbors"], mode="reference")
        pos.append(p), numbers.append(torch.tensor(atoms.numbers)), cells.append(c), natoms.append(len(atoms))
        edges.append(e + start), offsets.append(o)
        start += len(atoms)
    return dict(pos=torch.cat(pos), atomic_numbers=torch.cat(numbers), cell=torch.cat(cells),
                natoms=torch.tensor(natoms), edge_index=torch.cat(edges, 1), cell_offsets=torch.cat(offsets))


def reference_batch(inputs, dtype):
    data, start = [], 0
    for b, n in enumerate(inputs["natoms"].tolist()):
        mask = (inputs["edge_index"][1] >= start) & (inputs["edge_index"][1] < start + n)
        data.append(Data(pos=inputs["pos"][start:start + n].to(dtype),
                         atomic_numbers=inputs["atomic_numbers"][start:start + n].float(),
                         cell=inputs["cell"][b:b + 1].to(dtype), natoms=torch.tensor([n]),
                         edge_index=inputs["edge_index"][:, mask] - start,
                         cell_offsets=inputs["cell_offsets"][mask].float(), neighbors=torch.tensor([int(mask.sum())]),
                         tags=torch.ones(n, dtype=torch.long), fixed=torch.zeros(n)))
        start += n
    return Batch.from_data_list(data)


def trainer_predict(model, batch, outputs, normalizers):
    """What fairchem's OCPTrainer.predict returns for ``batch``, run by the trainer's own code
    (its task set-up, ``_forward`` with the stress recombination, ``_denorm_preds``)."""
    trainer = SimpleNamespace(config={"outputs": outputs}, name="s2ef", model=model, device="cpu",
                              normalizers=normalizers, elementrefs={})
    trainer._denorm_preds = lambda key, pred, b: OCPTrainer._denorm_preds(trainer, key, pred, b)
    BaseTrainer.load_task(trainer)
    out = OCPTrainer._forward(trainer, batch)
    return {key: trainer._denorm_preds(key, out[key], batch).detach().clone() for key in outputs}


def main() -> None:
    dtype = torch.float64
    torch.set_default_dtype(dtype)  # the reference makes some constants in the default dtype
    inputs = inputs_of(crystals())
    fixture = {"inputs": inputs, "variants": {}}
    for name, (options, stress_output, stress_norms) in VARIANTS.items():
        heads = {"energy": {"module": "equiformerV2_scalar_head"}, "forces": {"module": "equiformerV2_vector_head"},
                 "stress": {"module": "rank2_symmetric_head", "output_name": "stress", **options}}
        torch.manual_seed(0)
        model = HydraModel(backbone=dict(BACKBONE), heads={k: dict(v) for k, v in heads.items()}, otf_graph=False,
                           pass_through_head_outputs=True).eval()
        with torch.no_grad():  # move norms, attention and the stress head off their trivial init
            torch.manual_seed(1)  # (the stress head's construction drew from the generator)
            for key, p in model.named_parameters():
                if ("norm" in key or "alpha" in key) and not key.startswith("output_heads.stress."):
                    p.add_(0.2 * torch.randn_like(p))
            for key, p in model.named_parameters():
                if key.startswith("output_heads.stress."):
                    p.add_(0.2 * torch.randn_like(p))
                p.copy_(p.float())  # float32 values, stored losslessly as float32
        model.backbone._init_edge_rot_mat = lambda data, edge_index, vec: edge_frames(vec)
        norms = {**ENERGY_FORCES, **stress_norms}
        normalizers = {k: Normalizer(mean=torch.tensor(m), rmsd=torch.tensor(s)) for k, (m, s) in norms.items()}
        outputs = {"energy": {"level": "system"}, "forces": {"level": "atom"}, "stress": stress_output}
        with torch.no_grad():
            reference = trainer_predict(model, reference_batch(inputs, dtype), outputs, normalizers)
        params = dict(model.named_parameters())
        weights = {k: v.detach().float().clone() for k, v in model.state_dict().items() if k in params}
        # The same seed builds the same backbone, energy and force heads in every variant (the
        # stress head comes last): they are stored once.
        shared = {k: v for k, v in weights.items() if not k.startswith("output_heads.stress.")}
        if "shared_state_dict" not in fixture:
            fixture["shared_state_dict"] = {"module." + k: v for k, v in shared.items()}
        stored = fixture["shared_state_dict"]
        assert not (bad := [k for k, v in shared.items() if not torch.equal(stored["module." + k], v)]), bad[:5]
        statistics = {}
        for key, (mean, std) in norms.items():
            mean_field, std_field = FIELDS[key]
            if mean_field is not None:
                statistics[mean_field] = mean
            statistics[std_field] = std
        fixture["variants"][name] = {
            "checkpoint": {
                "state_dict": {"module." + k: v for k, v in weights.items() if k not in shared},  # + shared
                "config": {"model": {"name": "hydra", "backbone": dict(BACKBONE), "heads": heads,
                                     "otf_graph": False, "pass_through_head_outputs": True},
                           "outputs": outputs},
            },
            # the normalisers as fairchem's trainer saves them, and the so2nn config they mean
            "normalizers": {k: {"mean": torch.tensor(m), "rmsd": torch.tensor(s)} for k, (m, s) in norms.items()},
            "statistics": statistics,
            "reference_same_frames": {"energy": reference["energy"].view(-1), "forces": reference["forces"],
                                      "stress": reference["stress"].view(-1, 3, 3)},
        }
        print(name, {k: tuple(v.shape) for k, v in reference.items()})
    torch.set_default_dtype(torch.float32)
    torch.save(fixture, OUT)
    print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1e3:.0f} kB, {inputs['edge_index'].shape[1]} edges, "
          f"{len(inputs['pos'])} atoms")


if __name__ == "__main__":
    main()
