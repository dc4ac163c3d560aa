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

It also writes one fixture per released checkpoint family (``eqv2_family_*.pt``, checked by
tests/models/test_parity_families.py): an OMat24-style backbone + heads model with the
decomposed stress head on bulk crystals, a DeNS model, and an OC22-style monolithic model with
its per-element ``energy_lin_ref``. Each holds a checkpoint written the way fairchem's trainer
writes one (``module.`` prefixed ``state_dict``, ``config``, ``normalizers`` as ``Normalizer``
states, ``elementrefs`` as ``LinearReferences`` states), and for each system the reference's
predictions as its trainer's ``predict`` returns them (see :class:`so2nn.verify.FairchemReference`)
and the graph the reference builds itself. ``--families`` or ``--oc20`` writes only those.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from ase.build import add_adsorbate, bulk, fcc111, molecule, surface

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairchem.core.models.equiformer_v2.equiformer_v2_deprecated import EquiformerV2 as Reference  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402

from so2nn.graph import radius_graph  # noqa: E402
from so2nn.so3 import edge_frames  # noqa: E402
from so2nn.testing import random_rotation  # noqa: E402
from so2nn.verify import _as_float32_numbers  # noqa: E402

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
    data = Data(pos=inputs["pos"].to(dtype), atomic_numbers=inputs["atomic_numbers"].float(),
                cell=inputs["cell"].to(dtype), natoms=inputs["natoms"], edge_index=inputs["edge_index"],
                cell_offsets=inputs["cell_offsets"].float(),
                neighbors=torch.tensor([inputs["edge_index"].shape[1]]),
                tags=torch.ones(len(inputs["pos"]), dtype=torch.long), fixed=torch.zeros(len(inputs["pos"])))
    with torch.no_grad():
        out = model(Batch.from_data_list([data]))
    torch.set_default_dtype(torch.float32)
    return {"energy": out["energy"].detach().clone(), "forces": out["forces"].detach().clone()}


# ---------------------------------------------------------------------------------------------
# the released checkpoint families: trainer-written checkpoints, the trainer's predictions
# ---------------------------------------------------------------------------------------------
FAMILY_BACKBONE = dict(
    use_pbc=True, regress_forces=True, otf_graph=True, max_neighbors=20, max_radius=6.0, max_num_elements=96,
    num_layers=2, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
    attn_value_channels=4, ffn_hidden_channels=8, norm_type="layer_norm_sh", lmax_list=[3], mmax_list=[1],
    grid_resolution=8, edge_channels=8, num_distance_basis=32, use_grid_mlp=True, alpha_drop=0.0, drop_path_rate=0.0,
    weight_init="uniform", avg_num_nodes=31.17, avg_degree=61.95,
    enforce_max_neighbors_strictly=False,  # OC22's and OMat24's rule: the cap keeps near-ties
)
STRESS_OUTPUT = {"level": "system", "property": "stress",
                 "decomposition": {"stress_isotropic": {"irrep_dim": 0}, "stress_anisotropic": {"irrep_dim": 2}}}
STRESS_HEAD = dict(output_name="stress", decompose=True, use_source_target_embedding=True)
FAMILIES = {
    "omat": dict(
        model={"name": "hydra", "otf_graph": True, "pass_through_head_outputs": True,
               "backbone": {"model": "equiformer_v2_backbone", **FAMILY_BACKBONE},
               "heads": {"energy": {"module": "equiformer_v2_energy_head"},
                         "forces": {"module": "equiformer_v2_force_head"},
                         "stress": {"module": "rank2_symmetric_head", **STRESS_HEAD}}},
        outputs={"energy": {"level": "system", "property": "energy"},
                 "forces": {"level": "atom", "property": "forces", "train_on_free_atoms": True,
                            "eval_on_free_atoms": True},
                 "stress": STRESS_OUTPUT},
        normalizers={"energy": (0.0, 1.7), "forces": (0.0, 1.3), "stress_isotropic": (-0.004, 0.021),
                     "stress_anisotropic": (0.0, 0.017)},
        systems=("cu_strained", "nacl_triclinic"),
    ),
    "dens": dict(
        model={"name": "hydra", "otf_graph": True, "pass_through_head_outputs": True,
               "backbone": {"model": "equiformer_v2_dens_backbone", **FAMILY_BACKBONE, "use_force_encoding": True,
                            "use_noise_schedule_sigma_encoding": True},
               "heads": {"energy": {"module": "eqV2_DeNS_scalar_head"},
                         "forces": {"module": "eqV2_DeNS_vector_head"},
                         "stress": {"module": "dens_rank2_symmetric_head", **STRESS_HEAD}}},
        outputs={"energy": {"level": "system", "property": "energy"},
                 "forces": {"level": "atom", "property": "forces", "train_on_free_atoms": True,
                            "eval_on_free_atoms": True},
                 "stress": STRESS_OUTPUT},
        normalizers={"energy": (0.0, 1.9), "forces": (0.0, 1.1), "stress_isotropic": (0.003, 0.024),
                     "stress_anisotropic": (0.0, 0.015)},
        systems=("nacl_triclinic",),
    ),
    "oc22": dict(
        model={"name": "equiformer_v2", **FAMILY_BACKBONE, "use_energy_lin_ref": True, "load_energy_lin_ref": True},
        outputs={"energy": {"level": "system"},
                 "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True}},
        normalizers={"energy": (-0.35, 2.2), "forces": (0.0, 1.4)},
        systems=("mgo_slab_oh",),
    ),
}
FAMILY_ROLLS = 6


def family_systems():
    """Periodic systems where the 20-neighbour cap is reached at a 6 A cutoff (more than 20
    neighbours within it), rattled so that the non-strict rule's 0.01 A^2 tolerance matters."""
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    cu.set_cell(np.array(cu.cell) @ np.diag([1.01, 0.98, 1.02]), scale_atoms=True)
    cu.rattle(0.05, seed=3)
    nacl = bulk("NaCl", "rocksalt", a=5.64).repeat((2, 1, 1))  # primitive: rhombohedral
    strain = np.array([[1.03, 0.04, -0.02], [0.01, 0.97, 0.05], [-0.03, 0.02, 1.01]])
    nacl.set_cell(np.array(nacl.cell) @ strain, scale_atoms=True)  # triclinic
    nacl.rattle(0.05, seed=4)
    mgo = surface(bulk("MgO", "rocksalt", a=4.21, cubic=True), (1, 0, 0), 2, vacuum=5.0)
    add_adsorbate(mgo, "O", 2.0, (1.05, 1.05))
    add_adsorbate(mgo, "H", 2.97, (1.05, 1.05))
    mgo.pbc = True
    mgo.rattle(0.04, seed=5)
    out = {"cu_strained": cu, "nacl_triclinic": nacl, "mgo_slab_oh": mgo}
    for atoms in out.values():
        atoms.wrap()
        # float32 numbers: the reference makes the periodic images' offsets in float32 even in
        # float64 (exact only for such a cell and such positions)
        _as_float32_numbers(atoms)
    return out


def trainer_checkpoint(spec, seed):
    """A checkpoint as fairchem's trainer saves one (``save(training_state=False)``, the form of
    the released files), with random perturbed weights and non-trivial target statistics."""
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import setup_imports
    from fairchem.core.modules.normalization.element_references import LinearReferences
    from fairchem.core.modules.normalization.normalizer import Normalizer

    setup_imports()
    torch.manual_seed(seed)
    model_config = copy.deepcopy(spec["model"])
    name = model_config.pop("name")
    model = registry.get_model_class(name)(**model_config).eval()
    with torch.no_grad():  # move norms, attention, biases and embeddings off their trivial init
        for key, p in model.named_parameters():
            if "norm" in key or "alpha" in key or "bias" in key or "embedding" in key:
                p.add_(0.2 * torch.randn_like(p))
            if key.endswith("energy_lin_ref"):  # OC22: per-element energies in normalised units
                p.copy_(torch.randn_like(p))
    generator = torch.Generator().manual_seed(seed + 1)
    normalizers = {k: Normalizer(mean=float(m), rmsd=float(s)).state_dict()
                   for k, (m, s) in spec["normalizers"].items()}
    references = -3.0 + torch.randn(97, generator=generator)  # eV per atom of each element
    references[0] = 0.0
    config = {
        "trainer": "ocp", "model": spec["model"], "outputs": spec["outputs"],
        "task": {}, "dataset": {"format": "ase_db", "src": "data/train"},
        "loss_functions": [{"energy": {"fn": "per_atom_mae", "coefficient": 20}},
                           {"forces": {"fn": "l2mae", "coefficient": 10}}],
        "evaluation_metrics": {"primary_metric": "energy_mae", "metrics": {"energy": ["mae"], "forces": ["mae"]}},
        "optim": {"batch_size": 8, "eval_batch_size": 8, "max_epochs": 1, "lr_initial": 2e-4,
                  "optimizer": "AdamW", "ema_decay": 0.999},
        "logger": "wandb", "amp": False, "gpus": 0, "slurm": {}, "gp_gpus": None,
        "cmd": {"identifier": "", "print_every": 100, "seed": seed, "timestamp_id": "fixture",
                "commit": None, "version": "1.10.0"},
        "val_dataset": {}, "test_dataset": {}, "relax_dataset": {},
    }
    return {
        "state_dict": {"module." + k: v.detach() for k, v in model.state_dict().items()},  # shared buffers stay shared
        "normalizers": normalizers,
        "elementrefs": {"energy": LinearReferences(references).state_dict()},
        "config": config, "val_metrics": None, "amp": None,
    }


def make_family_fixture(family: str) -> None:
    from so2nn.verify import FairchemReference

    spec = FAMILIES[family]
    checkpoint = trainer_checkpoint(spec, seed=11)
    atoms_of = family_systems()
    systems = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{family}.pt"
        torch.save(checkpoint, path)
        references = {str(dtype): FairchemReference(path, dtype) for dtype in DTYPES}
        for name in spec["systems"]:
            atoms = atoms_of[name]
            entry = {"numbers": torch.tensor(atoms.numbers), "positions": torch.tensor(atoms.positions),
                     "cell": torch.tensor(np.array(atoms.cell)), "pbc": torch.tensor(atoms.pbc),
                     "graph": {}, "reference_same_frames": {}, "reference_random_rolls": {}}
            for key, reference in references.items():
                entry["graph"][key] = reference.graph(atoms)
                entry["reference_same_frames"][key] = reference.predict(atoms, frames="so2nn")
                entry["reference_random_rolls"][key] = [reference.predict(atoms) for _ in range(FAMILY_ROLLS)]
            edges = entry["graph"]["torch.float64"][0]
            degree = torch.bincount(edges[1], minlength=len(atoms))
            print(f"  {family}/{name}: {len(atoms)} atoms, {edges.shape[1]} edges, "
                  f"in-degree {int(degree.min())}..{int(degree.max())} (cap {FAMILY_BACKBONE['max_neighbors']})")
            systems[name] = entry
    fixture = {"checkpoint": checkpoint, "systems": systems}
    path = OUT / f"eqv2_family_{family}.pt"
    torch.save(fixture, path)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e3:.0f} kB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", action="store_true", help="only the checkpoint-family fixtures")
    parser.add_argument("--oc20", action="store_true", help="only the OC20 fixtures")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.families:
        make_oc20_fixtures()
    if not args.oc20:
        for family in FAMILIES:
            make_family_fixture(family)


def make_oc20_fixtures() -> None:
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
            rotated = {**inputs, "pos": inputs["pos"].double() @ ROTATION.T,
                       "cell": inputs["cell"].double() @ ROTATION.T}
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
            print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e3:.0f} kB, "
                  f"{inputs['edge_index'].shape[1]} edges")


if __name__ == "__main__":
    main()
