"""The kernel policies give the same model: outputs and gradients of a training step (direct and
gradient forces), equivariance and bf16 autocast, under kernels="auto" and "reference"; and
torch.compile traces a transformer block without a graph break."""

import contextlib

import pytest
import torch

from so2nn.kernels import EDGE_CONVOLUTION, choose_as, policy_device, row_block_size, use_fused, use_target_blocks
from so2nn.models import EquiformerV2, EquiformerV2Config, TransformerBlock
from so2nn.so3 import CoefficientLayout, EdgeRotation
from so2nn.testing import assert_equivariant, random_rotation

SMALL = EquiformerV2Config(
    lmax=3, mmax=1, num_layers=2, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
    attn_value_channels=4, ffn_hidden_channels=8, edge_channels=8, num_distance_basis=16, max_radius=4.0,
    max_num_elements=20, alpha_drop=0.0, drop_path_rate=0.0, grid_resolution=12,
)
POS = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.1, 0.0], [-0.24, 0.93, 0.1], [1.5, 1.4, 0.8], [3.0, 0.2, -0.5]])
NUMBERS = torch.tensor([8, 1, 1, 6, 7])


def _train_step(config, dtype=torch.float64):
    torch.manual_seed(0)
    model = EquiformerV2(config).to(dtype).train()
    out = model(pos=POS.to(dtype), atomic_numbers=NUMBERS)
    loss = out["energy"].sum() + out["forces"].pow(2).sum()
    loss.backward()
    return out, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chosen_as", [None, "cuda"], ids=["cpu-policy", "gpu-policy"])
@pytest.mark.parametrize("direct_forces", [True, False])
@pytest.mark.parametrize("activation, grid_mlp", [("separable_s2", True), ("s2", False), ("gate", False)])
def test_same_training_step(direct_forces, activation, grid_mlp, chosen_as):
    """Also with the choices made for a GPU (choose_as("cuda")): the path a GPU runs, here."""
    config = SMALL.replace(direct_forces=direct_forces, activation=activation, use_grid_mlp=grid_mlp)
    with choose_as(chosen_as) if chosen_as else contextlib.nullcontext():
        out_a, grads_a = _train_step(config)
    out_b, grads_b = _train_step(config.replace(kernels="reference"))
    for key in ("energy", "forces"):
        assert (out_a[key] - out_b[key]).abs().max() <= 1e-12
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 20
    for name, grad in grads_a.items():
        assert (grad - grads_b[name]).abs().max() <= 1e-12 * max(1.0, float(grad.abs().max())), name


@pytest.mark.parametrize("kernels", ["auto", "reference"])
def test_equivariant_under_both_policies(kernels):
    model = EquiformerV2(SMALL.replace(kernels=kernels, grid_resolution=40)).double().eval()

    def forces(pos):
        with torch.no_grad():
            return model(pos=pos, atomic_numbers=NUMBERS)["forces"]

    R = random_rotation(torch.Generator().manual_seed(1)).double()
    assert_equivariant(forces, [POS.double()], ["vector"], "vector", R, tolerance=1e-5)


def test_bf16_autocast_training_step():
    """Under autocast the edge convolution takes the reference path; the grid SiLU kernel stays."""
    outs = []
    for kernels in ("auto", "reference"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, grads = _train_step(SMALL.replace(kernels=kernels), torch.float32)
        assert all(torch.isfinite(g).all() for g in grads.values())
        outs.append(out["forces"].detach().float())
    assert torch.allclose(outs[0], outs[1], rtol=0.05, atol=0.05 * float(outs[1].abs().max()))


@pytest.mark.parametrize("grad", [False, True])
def test_compiled_block_has_no_graph_break(grad):
    layout = CoefficientLayout(SMALL.lmax, SMALL.mmax)
    block = TransformerBlock(SMALL, layout, [16, 8, 8]).train(grad)
    edge_index = torch.tensor([[1, 2, 0, 3, 4], [0, 0, 1, 2, 3]])
    vec = torch.randn(5, 3)
    args = (torch.randn(5, layout.dim, 8), torch.randn(5, 16), NUMBERS, edge_index, EdgeRotation(layout, vec),
            torch.zeros(5, dtype=torch.long))
    torch._dynamo.reset()
    with torch.set_grad_enabled(grad):
        explanation = torch._dynamo.explain(block)(*args)
    assert explanation.graph_break_count == 0, [(r.reason[:300], [str(f) for f in r.user_stack[-3:]])
                                                for r in explanation.break_reasons]


def test_choose_as_makes_every_choice_as_for_that_device_and_restores():
    x = torch.zeros(4000, 25, 8)
    with torch.no_grad():
        assert use_target_blocks("auto", x, 10_000, training=False) and row_block_size("auto", x, False, 10_000)
        with choose_as("cuda"):
            assert policy_device(x) == "cuda"
            assert not use_target_blocks("auto", x, 10_000, training=False)
            assert row_block_size("auto", x, False, 10_000) is None
            assert not use_fused("auto", EDGE_CONVOLUTION, device_type=policy_device(x), double_backward=False)
            with choose_as("cpu"):  # nested: the innermost wins, and the outer comes back
                assert policy_device(x) == "cpu"
            assert policy_device(x) == "cuda"
        assert policy_device(x) == "cpu" and use_target_blocks("auto", x, 10_000, training=False)
    with pytest.raises(ValueError, match="device type"):
        with choose_as(torch.device("cuda")):
            pass
