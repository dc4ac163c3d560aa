"""Regenerate the neighbour-list fixtures from the reference implementation's graph builder.

Needs fairchem-core 1.10.0 beside so2nn, in the reference environment that
``benchmarks/setup_reference.sh`` creates (once) in the clone:

    bash benchmarks/setup_reference.sh
    .venv-reference/bin/python scripts/make_graph_fixtures.py

For each structure (bulk fcc and bcc crystals with their exact distance ties, a rattled
triclinic alloy cell, a rattled rock-salt crystal, a slab with an adsorbate periodic in x and
y only, a one-atom cell smaller than the cutoff, and two sparse systems where the cutoff
binds before the cap) and each cutoff (6 and 12 A), it builds the
graph as EquiformerV2's backbone does in its forward (``generate_graph``, which calls
``radius_graph_pbc``), 20 neighbours at most, with ``enforce_max_neighbors_strictly`` False
(the non-strict rule) and True (the strict cut), in float32 as the reference runs. It stores
the inputs and the (source, target, cell offset) edges compactly in
``tests/graph/fixtures/reference_graphs.npz``; tests/graph/test_reference_graphs.py checks
so2nn's radius_graph against them without fairchem.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairchem.core.models.equiformer_v2.equiformer_v2 import EquiformerV2Backbone  # noqa: E402
from torch_geometric.data import Batch, Data  # noqa: E402

OUT = ROOT / "tests" / "graph" / "fixtures" / "reference_graphs.npz"
CUTOFFS = (6.0, 12.0)
MAX_NEIGHBORS = 20


def structures() -> dict[str, Atoms]:
    """The fixture structures, every atom inside its cell (the reference's image range assumes it)."""
    fcc = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    bcc = bulk("Fe", "bcc", a=2.87, cubic=True) * (2, 2, 2)
    alloy = bulk("Cu", "fcc", a=3.7) * (2, 2, 2)  # the primitive cell: already oblique
    alloy.set_cell(np.array(alloy.cell) @ np.array([[1.0, 0.08, -0.05], [0.03, 0.95, 0.1], [0.0, -0.07, 1.06]]),
                   scale_atoms=True)
    alloy.numbers[::3] = 46  # Pd
    alloy.rattle(0.12, seed=3)
    rocksalt = bulk("MgO", "rocksalt", a=4.21, cubic=True) * (2, 1, 1)
    rocksalt.rattle(0.06, seed=4)
    slab = fcc111("Pt", (3, 3, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.3, "fcc")
    slab.pbc = (True, True, False)
    small = bulk("Al", "fcc", a=4.05)  # one atom: hundreds of images within the cutoff
    # sparse systems, where the cutoff binds before the cap: a water molecule in a box (its
    # images enter at 12 A), one atom in a 6 A cube (shells at exactly 6 and 12 A: the
    # reference keeps d^2 <= r^2)
    water = molecule("H2O", cell=np.diag([9.0, 9.5, 10.0]), pbc=True)
    water.rattle(0.02, seed=5)
    water.positions += 1.0
    cube = Atoms("Ar", positions=[[0.5, 1.0, 1.5]], cell=np.eye(3) * 6.0, pbc=True)
    systems = {"fcc_cu": fcc, "bcc_fe": bcc, "triclinic_alloy": alloy, "rattled_rocksalt": rocksalt,
               "slab_adsorbate": slab, "small_cell": small, "water_in_box": water, "cutoff_shell": cube}
    for atoms in systems.values():
        atoms.wrap()
    return systems


def reference_graph(atoms: Atoms, cutoff: float, strict: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(edge_index [2, E], cell_offsets [E, 3])`` of the reference backbone's graph."""
    backbone = EquiformerV2Backbone(
        max_neighbors=MAX_NEIGHBORS, max_radius=cutoff, enforce_max_neighbors_strictly=strict, otf_graph=True,
        use_pbc=True, num_layers=1, lmax_list=[1], mmax_list=[1], sphere_channels=4, attn_hidden_channels=4,
        num_heads=1, attn_alpha_channels=4, attn_value_channels=4, ffn_hidden_channels=4, edge_channels=4,
        num_distance_basis=8,
    )
    data = Data(pos=torch.tensor(atoms.positions, dtype=torch.float32),
                cell=torch.tensor(np.array(atoms.cell), dtype=torch.float32)[None],
                atomic_numbers=torch.tensor(atoms.numbers), natoms=torch.tensor([len(atoms)]),
                pbc=torch.tensor(atoms.pbc)[None])
    batch = Batch.from_data_list([data])
    # as its forward calls it
    graph = backbone.generate_graph(batch, enforce_max_neighbors_strictly=backbone.enforce_max_neighbors_strictly)
    offsets = graph.cell_offsets.round().long()
    assert torch.equal(offsets.to(graph.cell_offsets.dtype), graph.cell_offsets)
    return graph.edge_index.numpy(), offsets.numpy()


def main() -> None:
    arrays = {}
    for name, atoms in structures().items():
        arrays[f"{name}/positions"] = atoms.positions.astype(np.float32)
        arrays[f"{name}/cell"] = np.array(atoms.cell).astype(np.float32)
        arrays[f"{name}/pbc"] = atoms.pbc.copy()
        for cutoff in CUTOFFS:
            for strict in (False, True):
                edge_index, offsets = reference_graph(atoms, cutoff, strict)
                key = f"{name}/{'strict' if strict else 'nonstrict'}_{cutoff:g}"
                arrays[f"{key}/edge_index"] = edge_index.astype(np.int16)  # atom indices < 2**15
                arrays[f"{key}/cell_offsets"] = offsets.astype(np.int8)  # images within +-127 cells
                per_atom = np.bincount(edge_index[1], minlength=len(atoms))
                print(f"{key:32s} {edge_index.shape[1]:6d} edges, {per_atom.min()}-{per_atom.max()} per atom")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT.relative_to(ROOT)} ({OUT.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
