import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.layers import EquivariantLayerNorm, EquivariantRMSNorm, SeparableLayerNorm, SO3Linear, normalization_layer
from so2nn.so3 import CoefficientLayout
from so2nn.testing import assert_equivariant
from so2nn.testing import strategies as so2st

NORMS = ["layer_norm", "layer_norm_sh", "rms_norm_sh"]


def _perturbed(module):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@given(lmax=st.integers(0, 5), name=st.sampled_from(NORMS + ["linear"]), R=so2st.rotations())
def test_equivariant(dtype, tolerance, lmax, name, R):
    layout = CoefficientLayout(lmax)
    layer = SO3Linear(layout, 4, 5) if name == "linear" else normalization_layer(name, layout, 4)
    layer = _perturbed(layer.to(dtype))
    x = torch.randn(6, layout.dim, 4, dtype=dtype)
    assert_equivariant(layer, [x], [layout], layout, R.to(dtype), tolerance=tolerance)


def _degree(x, l):
    return x[:, l * l : (l + 1) ** 2]


def test_separable_layer_norm_formula():
    # An independent, loop-by-loop reading of the equations in the docstring.
    lmax, C, eps = 3, 5, 1e-5
    norm = _perturbed(SeparableLayerNorm(lmax, C, eps).double())
    x = torch.randn(4, 16, C, dtype=torch.float64)
    y = norm(x)
    s = x[:, 0]
    expected0 = (s - s.mean(1, keepdim=True)) / torch.sqrt(s.var(1, unbiased=False, keepdim=True) + eps)
    assert torch.allclose(y[:, 0], expected0 * norm.norm_l0.weight + norm.norm_l0.bias)
    ms = sum(_degree(x, l).pow(2).mean(1) for l in range(1, lmax + 1)) / lmax  # [N, C]
    inv = (ms.mean(1) + eps).rsqrt()
    for l in range(1, lmax + 1):
        assert torch.allclose(_degree(y, l), _degree(x, l) * inv[:, None, None] * norm.affine_weight[l - 1])


def test_rms_and_layer_norm_formulas():
    lmax, C, eps = 2, 3, 1e-5
    x = torch.randn(4, 9, C, dtype=torch.float64)
    xc = x.clone()
    xc[:, 0] -= x[:, 0].mean(1, keepdim=True)
    rms = _perturbed(EquivariantRMSNorm(lmax, C, eps).double())
    ms = sum(_degree(xc, l).pow(2).mean(1) for l in range(lmax + 1)) / (lmax + 1)
    inv = (ms.mean(1) + eps).rsqrt()
    y = rms(x)
    for l in range(lmax + 1):
        expected = _degree(xc, l) * inv[:, None, None] * rms.affine_weight[l] + (rms.affine_bias if l == 0 else 0)
        assert torch.allclose(_degree(y, l), expected)
    ln = _perturbed(EquivariantLayerNorm(lmax, C, eps).double())
    y = ln(x)
    for l in range(lmax + 1):
        inv_l = (_degree(xc, l).pow(2).mean(1).mean(1) + eps).rsqrt()
        expected = _degree(xc, l) * inv_l[:, None, None] * ln.affine_weight[l] + (ln.affine_bias if l == 0 else 0)
        assert torch.allclose(_degree(y, l), expected)


def test_so3_linear_formula_and_state():
    lin = SO3Linear(2, 3, 4).double()
    x = torch.randn(5, 9, 3, dtype=torch.float64)
    y = lin(x)
    for l in range(3):
        expected = _degree(x, l) @ lin.weight[l].T + (lin.bias if l == 0 else 0)
        assert torch.allclose(_degree(y, l), expected)
    assert set(lin.state_dict()) == {"weight", "bias"}
    assert "lmax=2, in_channels=3, out_channels=4" in repr(lin)


def test_gradcheck():
    norm = SeparableLayerNorm(2, 3).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(norm, (x,))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown normalization 'batch_norm'"):
        normalization_layer("batch_norm", 2, 4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 9, 4\]"):
        SeparableLayerNorm(2, 4)(torch.randn(3, 9, 5))
    with pytest.raises(ValueError, match="layout must be"):
        SO3Linear("two", 4, 4)


@pytest.mark.parametrize("name", ["layer_norm", "layer_norm_sh", "rms_norm_sh"])
def test_norm_statistics_survive_float16_autocast(name):
    """Small l > 0 features (as after the edge-degree embedding): in half precision the gradient of
    the inverse square root of their mean square overflows; the statistics are kept in float32."""
    torch.manual_seed(0)
    norm = normalization_layer(name, 2, channels=8)
    x = torch.randn(5, 9, 8)
    x[:, 1:] *= 1e-3
    x = x.half().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        y = norm(x)
    y.float().pow(2).sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    expected = copy.deepcopy(norm).double()(x.detach().double())
    assert (y.double() - expected).abs().max() < 1e-2 * expected.abs().max()
