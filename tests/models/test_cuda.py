"""CUDA: the same numbers as on the CPU, mixed precision, and a training step. Skipped without a GPU."""

import pytest
import torch
from ase.build import add_adsorbate, fcc111

from so2nn.models import EquiformerV2, EquiformerV2Config
from so2nn.testing import equivariance_error, random_rotation

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _slab(dtype):
    atoms = fcc111("Pt", (3, 3, 3), vacuum=6.0)
    add_adsorbate(atoms, "O", 1.5, "fcc")
    atoms.rattle(0.05, seed=0)
    return dict(pos=torch.tensor(atoms.positions, dtype=dtype), atomic_numbers=torch.tensor(atoms.numbers),
                cell=torch.tensor(atoms.cell.array, dtype=dtype)[None], natoms=torch.tensor([len(atoms)]))


def _config(**changes):
    return EquiformerV2Config(
        lmax=4, mmax=2, num_layers=2, sphere_channels=32, attn_hidden_channels=32, num_heads=4, attn_alpha_channels=16,
        attn_value_channels=8, ffn_hidden_channels=32, edge_channels=32, num_distance_basis=64, alpha_drop=0.0,
        drop_path_rate=0.0, **changes,
    )


def _to(fields, device):
    return {k: v.to(device) for k, v in fields.items()}


@pytest.mark.parametrize("direct_forces", [True, False])
def test_cuda_matches_cpu_in_float64(direct_forces):
    torch.manual_seed(0)
    model = EquiformerV2(_config(direct_forces=direct_forces)).double().eval()
    fields = _slab(torch.float64)
    cpu = model(**fields)
    gpu = model.cuda()(**_to(fields, "cuda"))
    for key in ("energy", "forces"):
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=1e-10, atol=1e-10)


def test_cuda_float32_equivariance_and_bf16_autocast():
    torch.manual_seed(0)
    model = EquiformerV2(_config(activation="gate", use_grid_mlp=False)).cuda().eval()
    fields = _to(_slab(torch.float32), "cuda")
    R = random_rotation(torch.Generator().manual_seed(1), dtype=torch.float32).cuda()
    with torch.no_grad():
        out = model(**fields)
        rotated = model(**{**fields, "pos": fields["pos"] @ R.T, "cell": fields["cell"] @ R.T})
    assert equivariance_error(rotated["forces"], out["forces"] @ R.T) < 1e-5
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        low = model(**fields)
    assert torch.isfinite(low["forces"]).all()
    rel = float((low["forces"].float() - out["forces"]).norm() / out["forces"].norm())
    assert rel < 0.1, rel


def test_cuda_training_step_bf16(tmp_path):
    from torch_geometric.data import Data

    from so2nn.training import Trainer, TrainingConfig

    torch.manual_seed(0)
    items = []
    for seed in range(8):
        fields = _slab(torch.float32)
        fields["pos"] = fields["pos"] + 0.05 * torch.randn(fields["pos"].shape, generator=torch.Generator().manual_seed(seed))
        items.append(Data(**fields, energy=torch.randn(1), forces=torch.randn_like(fields["pos"])))
    trainer = Trainer(_config(), items, items[:2], TrainingConfig(max_steps=4, batch_size=2, amp="bf16", eval_every=2,
                                                                  checkpoint_every=2), tmp_path, device="cuda",
                      progress=False)
    metrics = trainer.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
