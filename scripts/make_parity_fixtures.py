"""Regenerate the golden parity fixtures from the reference implementation.

Needs fairchem-core 1.10.0 (the last release shipping EquiformerV2) beside so2nn, in the
reference environment that ``benchmarks/setup_reference.sh`` creates (once) in the clone:

    bash benchmarks/setup_reference.sh
    .venv-reference/bin/python scripts/make_parity_fixtures.py

For each case (the 31M and 153M architectures with reduced widths and depth; a periodic
Cu(111) slab with *OH and a molecule) it stores the reference's weights and config, the
inputs and graph, and the reference's outputs (a) with its edge frames replaced by
so2nn's and (b) from several calls with its own random frame rolls, each in float32 and float64. tests/models/
test_parity.py checks so2nn against them without fairchem.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from ase.build import add_adsorbate, fcc111, molecule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2 as Reference  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402

from so2nn.graph import radius_graph  # noqa: E402
from so2nn.so3 import edge_frames  # noqa: E402
from so2nn.testing import random_rotation  # noqa: E402

OUT = ROOT / "tests" / "models" / "fixtures"
NUM_ROLLS = 8
DTYPES = (torch.float32, torch.float64)
ROTATION = random_rotation(torch.Generator().manual_seed(7))  # float64, for the equivariance comparison
SMALL = dict(
    regress_forces=True, otf_graph=False, max_neighbors=20, max_radius=6.0, max_num_elements=90, num_layers=2,
    sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4, attn_value_channels=4,
    ffn_hidden_channels=8, norm_type="layer_norm_sh", grid_resolution=18, edge_channels=8, use_grid_mlp=True,
    alpha_drop=0.0, drop_path_rate=0.0, weight_init="uniform",
)
ARCHITECTURES = {"31M": dict(lmax_list=[4], mmax_list=[2]), "153M": dict(lmax_list=[6], mmax_list=[3])}


def systems():
    slab = fcc111("Cu", (3, 3, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.4, "fcc")
    add_adsorbate(slab, "H", 2.4, "fcc")
    slab.pbc = (True, True, True)
    slab.rattle(0.05, seed=1)
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=2)
    return {"slab": slab, "molecule": mol}


def inputs_of(atoms):
    pos = torch.tensor(atoms.positions, dtype=torch.float32)
    numbers = torch.tensor(atoms.numbers)
    periodic = bool(atoms.pbc.any())
    cell = torch.tensor(np.array(atoms.cell), dtype=torch.float32)[None] if periodic else torch.zeros(1, 3, 3)
    edge_index, offsets = radius_graph(pos, SMALL["max_radius"], cell if periodic else None, None, None,
                                       SMALL["max_neighbors"], mode="reference")
    return dict(pos=pos, atomic_numbers=numbers, cell=cell, natoms=torch.tensor([len(numbers)]),
                edge_index=edge_index, cell_offsets=offsets, periodic=periodic)


def build_reference(config, state_dict, dtype):
    """The reference model in ``dtype``, built under that default dtype: it makes some of its
    constants (grids, Gaussian centres) in the default dtype, and a float32-built model cast to
    float64 keeps their float32 rounding (~1e-5 on forces)."""
    torch.set_default_dtype(dtype)
    model = Reference(**config).eval()
    model.load_state_dict(state_dict, strict=False)
    model.direct_forces = True  # true no-grad inference (its forward re-enables autograd otherwise)
    torch.set_default_dtype(torch.float32)
    return model


def reference_call(model, inputs, dtype):
    torch.set_default_dtype(dtype)
    data = Data(pos=inputs["pos"].to(dtype), atomic_numbers=inputs["atomic_numbers"].float(), cell=inputs["cell"].to(dtype),
                natoms=inputs["natoms"], edge_index=inputs["edge_index"], cell_offsets=inputs["cell_offsets"].float(),
                neighbors=torch.tensor([inputs["edge_index"].shape[1]]),
                tags=torch.ones(len(inputs["pos"]), dtype=torch.long), fixed=torch.zeros(len(inputs["pos"])))
    with torch.no_grad():
        out = model(Batch.from_data_list([data]))
    torch.set_default_dtype(torch.float32)
    return {"energy": out["energy"].detach().clone(), "forces": out["forces"].detach().clone()}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for arch, layout in ARCHITECTURES.items():
        for system, atoms in systems().items():
            inputs = inputs_of(atoms)
            config = {**SMALL, **layout, "use_pbc": inputs["periodic"]}
            torch.manual_seed(0)
            model = Reference(**config).eval()
            with torch.no_grad():  # move norms and attention parameters off their trivial init
                for name, p in model.named_parameters():
                    if "norm" in name or "alpha" in name:
                        p.add_(0.2 * torch.randn_like(p))
            params = dict(model.named_parameters())
            weights = {k: v.detach().clone() for k, v in model.state_dict().items() if k in params}
            rolls, patched = {}, {}
            rotated = {**inputs, "pos": inputs["pos"].double() @ ROTATION.T, "cell": inputs["cell"].double() @ ROTATION.T}
            for dtype in DTYPES:
                reference = build_reference(config, weights, dtype)
                rolls[str(dtype)] = [reference_call(reference, inputs, dtype) for _ in range(NUM_ROLLS)]
                if dtype == torch.float64:  # for the equivariance comparison
                    rotated_rolls = [reference_call(reference, rotated, dtype) for _ in range(NUM_ROLLS)]
                reference._init_edge_rot_mat = lambda data, edge_index, vec: edge_frames(vec)
                patched[str(dtype)] = reference_call(reference, inputs, dtype)
            fixture = {
                "checkpoint": {
                    "state_dict": {"module." + k: v for k, v in weights.items()},
                    "config": {"model": {"name": "equiformer_v2", **config}},
                },
                "inputs": inputs,
                "reference_same_frames": patched,
                "reference_random_rolls": rolls,
                "rotation": ROTATION,
                "reference_random_rolls_rotated_float64": rotated_rolls,
            }
            path = OUT / f"eqv2_{arch}_{system}.pt"
            torch.save(fixture, path)
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e3:.0f} kB, {inputs['edge_index'].shape[1]} edges")


if __name__ == "__main__":
    main()
