"""Regenerate the DeNS parity fixture from the reference implementation.

Needs fairchem-core 1.10.0 beside so2nn, in the reference environment that
``benchmarks/setup_reference.sh`` creates (once) in the clone:

    bash benchmarks/setup_reference.sh
    .venv-reference/bin/python scripts/make_dens_fixtures.py

A DeNS model (fairchem's ``equiformer_v2_dens_backbone`` with the noise-scale encoding, the
``eqV2_DeNS_scalar_head`` and ``eqV2_DeNS_vector_head``; the 31M layout at reduced width and
depth) with random weights, perturbed so that no term is trivially zero (in particular the
biases of the force and noise-scale encodings, which are zero at initialisation and are all
that acts of them at prediction). It is saved the way fairchem's DeNS trainer saves it (DDP
prefixes, the trainer's DeNS settings and its normaliser of the denoising target). For a
rattled, sheared rock-salt crystal and a molecule the fixture stores the inputs and graph and
the reference's prediction-time outputs (no denoising: zero force input, zero noise scale):
(a) with its edge frames replaced by so2nn's, in float32 and float64, together with the output
of the force head's denoising attention (which the reference multiplies by zero), and (b) from
several calls with its own random frame rolls, in float64. tests/models/test_dens.py checks
so2nn against it without fairchem.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk, molecule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fairchem.core.models.equiformer_v2.equiformer_v2_dens  # noqa: E402, F401  (registers the DeNS modules)
from fairchem.core.models.base import HydraModel  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402

from so2nn.graph import radius_graph  # noqa: E402
from so2nn.so3 import edge_frames  # noqa: E402

OUT = ROOT / "tests" / "models" / "fixtures" / "dens_31M.pt"
NUM_ROLLS = 4
BACKBONE = dict(
    model="equiformer_v2_dens_backbone", use_pbc=True, use_pbc_single=True, regress_forces=True, otf_graph=False,
    max_neighbors=20, max_radius=6.0, max_num_elements=96, num_layers=2, sphere_channels=8, attn_hidden_channels=8,
    num_heads=2, attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=8, norm_type="layer_norm_sh",
    lmax_list=[4], mmax_list=[2], grid_resolution=18, edge_channels=8, use_grid_mlp=True, alpha_drop=0.0,
    drop_path_rate=0.0, weight_init="uniform", avg_num_nodes=31.2, avg_degree=61.9,
    use_force_encoding=True, use_noise_schedule_sigma_encoding=True,
)
HEADS = {"energy": {"module": "eqV2_DeNS_scalar_head", "use_denoising": True},
         "forces": {"module": "eqV2_DeNS_vector_head"}}
MODEL = {"name": "hydra", "pass_through_head_outputs": True, "otf_graph": False, "backbone": BACKBONE, "heads": HEADS}
# The DeNS trainer's settings (training only: noise added to positions, forces as input).
OPTIM = {"use_denoising_pos": True, "denoising_pos_coefficient": 10.0,
         "denoising_pos_params": {"prob": 0.5, "fixed_noise_std": True, "std": 0.1, "corrupt_ratio": 0.5}}


def systems():
    crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    crystal.set_cell(np.array(crystal.cell) @ np.array([[1.0, 0.0, 0.0], [0.12, 1.0, 0.0], [0.07, -0.05, 1.0]]),
                     scale_atoms=True)  # triclinic
    crystal.rattle(0.05, seed=3)
    # The reference adds the periodic offsets (offset @ cell) in float32 even in a float64 model;
    # a cell on a 1/1024 A grid makes that product exact, so float64 parity can be tested to 1e-12.
    crystal.set_cell(np.round(np.array(crystal.cell) * 1024) / 1024)
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=4)
    return {"bulk": crystal, "molecule": mol}


def inputs_of(atoms):
    pos = torch.tensor(atoms.positions, dtype=torch.float64)
    numbers = torch.tensor(atoms.numbers)
    periodic = bool(atoms.pbc.any())
    cell = torch.tensor(np.array(atoms.cell), dtype=torch.float64)[None] if periodic else torch.zeros(1, 3, 3)
    edge_index, offsets = radius_graph(pos, BACKBONE["max_radius"], cell if periodic else None, None, None,
                                       BACKBONE["max_neighbors"], mode="reference")
    return dict(pos=pos, atomic_numbers=numbers, cell=cell, natoms=torch.tensor([len(numbers)]),
                edge_index=edge_index, cell_offsets=offsets, periodic=periodic)


def build_reference(state_dict, dtype):
    """The reference model in ``dtype``, built under that default dtype (it makes some constants in it)."""
    torch.set_default_dtype(dtype)
    model = HydraModel(backbone=dict(BACKBONE), heads={k: dict(v) for k, v in HEADS.items()},
                       pass_through_head_outputs=True, otf_graph=False).eval()
    if state_dict is not None:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        assert not unexpected and all(_is_buffer(k) for k in missing), (missing, unexpected)
    model.backbone.direct_forces = True  # true no-grad inference (its forward re-enables autograd otherwise)
    torch.set_default_dtype(torch.float32)
    return model


def _is_buffer(key):
    return any(part in key for part in ("SO3_rotation", "mappingReduced", "SO3_grid", "expand_index", "offset",
                                        "balance_degree_weight"))


def reference_call(model, inputs, dtype):
    """The reference at prediction: a batch without ``denoising_pos_forward`` (no noise, zero force input)."""
    torch.set_default_dtype(dtype)
    n = len(inputs["pos"])
    data = Data(pos=inputs["pos"].to(dtype), atomic_numbers=inputs["atomic_numbers"].float(),
                cell=inputs["cell"].to(dtype), natoms=inputs["natoms"], edge_index=inputs["edge_index"],
                cell_offsets=inputs["cell_offsets"].float(), neighbors=torch.tensor([inputs["edge_index"].shape[1]]),
                tags=torch.ones(n, dtype=torch.long), fixed=torch.zeros(n))
    captured = {}
    hook = model.output_heads["forces"].denoising_pos_block.register_forward_hook(
        lambda module, args, out: captured.update(denoising=out.embedding.narrow(1, 1, 3).reshape(-1, 3).clone()))
    with torch.no_grad():
        out = model(Batch.from_data_list([data]))
    hook.remove()
    torch.set_default_dtype(torch.float32)
    return {"energy": out["energy"].detach().clone(), "forces": out["forces"].detach().clone(),
            "denoising_positions": captured["denoising"]}


def main() -> None:
    torch.manual_seed(0)
    model = build_reference(None, torch.float32)
    with torch.no_grad():  # move norms, attention and biases (zero at initialisation) off their trivial values
        for name, p in model.named_parameters():
            if "norm" in name or "alpha" in name or name.endswith("bias") or "embedding" in name:
                p.add_(0.2 * torch.randn_like(p))
    params = dict(model.named_parameters())
    weights = {k: v.detach().clone() for k, v in model.state_dict().items() if k in params}
    cases = {}
    for system, atoms in systems().items():
        inputs = inputs_of(atoms)
        patched, rolls = {}, []
        for dtype in (torch.float32, torch.float64):
            reference = build_reference(weights, dtype)
            if dtype == torch.float64:
                rolls = [reference_call(reference, inputs, dtype) for _ in range(NUM_ROLLS)]
            reference.backbone._init_edge_rot_mat = lambda data, edge_index, vec: edge_frames(vec)
            patched[str(dtype)] = reference_call(reference, inputs, dtype)
        cases[system] = {"inputs": inputs, "reference_same_frames": patched, "reference_random_rolls_float64": rolls}
        energy = float(patched["torch.float64"]["energy"])
        print(f"{system}: {inputs['edge_index'].shape[1]} edges, energy {energy:.6f}")
    checkpoint = {
        "state_dict": {"module." + k: v for k, v in weights.items()},
        "config": {"model": MODEL, "optim": OPTIM, "trainer": "equiformerv2_dens"},
        "normalizers": {"denoising_pos_target": {"mean": torch.tensor(0.0), "rmsd": torch.tensor(0.1)}},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"checkpoint": checkpoint, "cases": cases}, OUT)
    print(f"{OUT.relative_to(ROOT)}: {OUT.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
