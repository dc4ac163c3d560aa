"""Small S2EF data for the training tests: rattled O on Cu(111) with EMT energies and forces."""

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.emt import EMT
from torch_geometric.data import Data

from so2nn.models import EquiformerV2Config


def emt_frame(atoms, **fields) -> Data:
    """An S2EF item of ``atoms`` with EMT's energy and forces (float32), plus ``fields``."""
    atoms.calc = EMT()
    return Data(
        pos=torch.tensor(atoms.positions, dtype=torch.float32), atomic_numbers=torch.tensor(atoms.numbers),
        cell=torch.tensor(np.array(atoms.cell), dtype=torch.float32).view(1, 3, 3), natoms=len(atoms),
        energy=torch.tensor([atoms.get_potential_energy()], dtype=torch.float32),
        forces=torch.tensor(atoms.get_forces(), dtype=torch.float32), **fields)


def emt_frames(count: int, seed: int) -> list[Data]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
        add_adsorbate(slab, "O", 1.6, "fcc")
        slab.rattle(0.15, seed=int(rng.integers(2**31)))
        tags = np.array([0] * 4 + [1] * 4 + [2])
        frames.append(emt_frame(slab, fixed=torch.tensor(tags == 0), tags=torch.tensor(tags)))
    return frames


@pytest.fixture(scope="session")
def emt_data():
    return emt_frames(32, seed=0), emt_frames(8, seed=1)


@pytest.fixture
def tiny_model_config():
    return EquiformerV2Config(
        lmax=2,
        mmax=1,
        num_layers=1,
        sphere_channels=16,
        attn_hidden_channels=16,
        num_heads=2,
        attn_alpha_channels=8,
        attn_value_channels=4,
        ffn_hidden_channels=16,
        edge_channels=16,
        num_distance_basis=32,
        max_radius=5.0,
        max_neighbors=12,
        alpha_drop=0.1,
        drop_path_rate=0.1,
        grid_resolution=None,
    )


# stress_model.py registers its model type on import: imported once, as `stress_model`.
collect_ignore = ["stress_model.py"]
