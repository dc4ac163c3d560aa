"""Small S2EF data for the training tests: rattled O on Cu(111) with EMT energies and forces."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from torch_geometric.data import Data

from so2nn.models import EquiformerV2Config


def emt_frames(count: int, seed: int) -> list[Data]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
        add_adsorbate(slab, "O", 1.6, "fcc")
        slab.rattle(0.15, seed=int(rng.integers(2**31)))
        slab.calc = EMT()
        tags = np.array([0] * 4 + [1] * 4 + [2])
        frames.append(Data(
            pos=torch.tensor(slab.positions, dtype=torch.float32),
            atomic_numbers=torch.tensor(slab.numbers),
            cell=torch.tensor(np.array(slab.cell), dtype=torch.float32).view(1, 3, 3),
            natoms=len(slab),
            energy=torch.tensor([slab.get_potential_energy()], dtype=torch.float32),
            forces=torch.tensor(slab.get_forces(), dtype=torch.float32),
            fixed=torch.tensor(tags == 0),
            tags=torch.tensor(tags),
        ))
    return frames


@pytest.fixture(scope="session")
def emt_data():
    return emt_frames(32, seed=0), emt_frames(8, seed=1)


@pytest.fixture
def tiny_model_config():
    return EquiformerV2Config(
        lmax=2, mmax=1, num_layers=1, sphere_channels=16, attn_hidden_channels=16, num_heads=2, attn_alpha_channels=8,
        attn_value_channels=4, ffn_hidden_channels=16, edge_channels=16, num_distance_basis=32, max_radius=5.0,
        max_neighbors=12, alpha_drop=0.1, drop_path_rate=0.1, grid_resolution=None,
    )

# stress_model.py registers its model type on import: imported once, as `stress_model`.
collect_ignore = ["stress_model.py"]
