"""EquiformerV2 on every available device: the reference composition's numbers, equivariance,
mixed precision and a training step.

Each test runs once per device that is present: the CPU always (so CI runs every test), a
CUDA GPU when there is one. The default kernel policy differs by device (it chooses the CPU's
kernels on the CPU and the reference composition on a GPU: :mod:`so2nn.kernels`), so the
tests compare it with the reference composition computed on the CPU in float64. The few
checks that exist only on a GPU (capturing a CUDA graph) are marked ``cuda_only``.
"""

import pytest
import torch
from ase.build import add_adsorbate, fcc111
from hypothesis import given, settings

from so2nn.models import EquiformerV2, EquiformerV2Config
from so2nn.testing import assert_equivariant
from so2nn.testing.strategies import rotations

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _slab(dtype=torch.float32):
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("direct_forces", [True, False])
def test_the_device_policy_gives_the_reference_numbers_in_float64(device, direct_forces):
    torch.manual_seed(0)
    reference = EquiformerV2(_config(direct_forces=direct_forces, kernels="reference")).double().eval()
    model = EquiformerV2(_config(direct_forces=direct_forces)).double()
    model.load_state_dict(reference.state_dict())
    model = model.to(device).eval()
    fields = _slab(torch.float64)
    with torch.no_grad():
        want = reference(**fields)
        got = model(**_to(fields, device))
    for key in want:
        torch.testing.assert_close(got[key].cpu(), want[key], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_equivariance_on_the_device(device):
    torch.manual_seed(0)
    model = EquiformerV2(_config(activation="gate", use_grid_mlp=False)).to(device).eval()
    fields = _slab(torch.float32)

    def forces(pos, cell):
        with torch.no_grad():
            out = model(**_to({**fields, "pos": pos, "cell": cell}, device))
        return out["forces"].cpu()

    @settings(max_examples=3, deadline=None)
    @given(rotation=rotations(torch.float32))
    def check(rotation):
        assert_equivariant(forces, [fields["pos"], fields["cell"]], ["vector", "vector"], "vector", rotation=rotation,
                           tolerance=1e-5)

    check()


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_stays_close_to_float32(device):
    torch.manual_seed(0)
    model = EquiformerV2(_config(activation="gate", use_grid_mlp=False)).to(device).eval()
    fields = _to(_slab(torch.float32), device)
    with torch.no_grad():
        full = model(**fields)
        with torch.autocast(device, dtype=torch.bfloat16):
            low = model(**fields)
    assert torch.isfinite(low["forces"]).all()
    rel = float((low["forces"].float() - full["forces"]).norm() / full["forces"].norm())
    assert rel < 0.1, rel


@pytest.mark.parametrize("device", DEVICES)
def test_a_bf16_training_step_on_the_device(device, tmp_path):
    from torch_geometric.data import Data

    from so2nn.training import Trainer, TrainingConfig

    torch.manual_seed(0)
    items = []
    for seed in range(8):
        fields = _slab(torch.float32)
        fields["pos"] = fields["pos"] + 0.05 * torch.randn(fields["pos"].shape,
                                                           generator=torch.Generator().manual_seed(seed))
        items.append(Data(**fields, energy=torch.randn(1), forces=torch.randn_like(fields["pos"])))
    config = _config().replace(num_layers=1, lmax=2, mmax=1)
    trainer = Trainer(config, items, items[:2], TrainingConfig(max_steps=4, batch_size=2, amp="bf16", eval_every=2,
                                                               checkpoint_every=2), tmp_path, device=device,
                      progress=False)
    metrics = trainer.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


@cuda_only
def test_the_eval_forward_is_captured_in_a_cuda_graph_and_replayed():
    """No host sync in the body: the forward (validate=False, precomputed graph) records into a
    CUDA graph, and a replay on new positions gives the eager numbers."""
    torch.manual_seed(0)
    model = EquiformerV2(_config()).cuda().eval()
    fields = _to(_slab(torch.float32), "cuda")
    edge_index, offsets = model.build_graph(model_inputs(model, fields))
    static = {**fields, "edge_index": edge_index, "cell_offsets": offsets}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside the capture (lazy constants, cuBLAS handles)
            model(**static, validate=False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        captured = model(**static, validate=False)
    new_pos = fields["pos"] + 0.01 * torch.randn_like(fields["pos"])
    static["pos"].copy_(new_pos)
    graph.replay()
    with torch.no_grad():
        eager = model(**{**static, "pos": new_pos.clone()})
    for key in eager:
        torch.testing.assert_close(captured[key], eager[key], rtol=1e-4, atol=1e-5)


def model_inputs(model, fields):
    from so2nn.models import read_inputs

    return read_inputs(None, fields, model.config)
