import math

import pytest
import torch

from so2nn.layers import EquivariantDropout, GraphDropPath, RadialBasis, RadialMLP
from so2nn.so3 import CoefficientLayout
from so2nn.testing import apply_rotation, random_rotation


def test_gaussian_basis_formula():
    d = torch.tensor([0.0, 1.3, 4.9, 12.0], dtype=torch.float64)
    basis = RadialBasis(600, cutoff=12.0).double()
    delta = 12.0 / 599
    centres = torch.arange(600, dtype=torch.float64) * delta
    expected = torch.exp(-((d[:, None] - centres) ** 2) / (2 * (2.0 * delta) ** 2))
    assert torch.allclose(basis(d), expected, atol=1e-12)
    assert basis.state_dict() == {} or len(basis.state_dict()) == 0


def test_bessel_and_envelope():
    basis = RadialBasis(4, cutoff=5.0, basis="bessel", envelope="polynomial").double()
    d = torch.tensor([0.5, 2.0, 4.999999, 6.0], dtype=torch.float64)
    out = basis(d)
    plain = math.sqrt(2 / 5.0) * torch.sin(torch.arange(1, 5, dtype=torch.float64) * math.pi * 0.5 / 5.0) / 0.5
    x = 0.1
    envelope = 1 - 21 * x**5 + 35 * x**6 - 15 * x**7
    assert torch.allclose(out[0], plain * envelope)
    assert out[2].abs().max() < 1e-6 and torch.equal(out[3], torch.zeros(4, dtype=torch.float64))


def test_radial_mlp_structure():
    mlp = RadialMLP([6, 8, 8, 3])
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Linear", "LayerNorm", "SiLU", "Linear", "LayerNorm", "SiLU", "Linear"]
    assert mlp(torch.randn(2, 6)).shape == (2, 3)


def test_dropout_keeps_equivariance_and_eval_identity():
    layout = CoefficientLayout(2)
    drop = EquivariantDropout(0.5)
    x = torch.randn(10, layout.dim, 6, dtype=torch.float64)
    R = random_rotation(torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    a = drop(apply_rotation(x, layout, R))
    torch.manual_seed(0)
    b = apply_rotation(drop(x), layout, R)
    assert torch.allclose(a, b)
    dropped = (drop(x) == 0).all(dim=1)  # whole channels
    assert dropped.any() and not dropped.all()
    assert torch.equal(drop.eval()(x), x)


def test_graph_drop_path_per_system():
    path = GraphDropPath(0.5)
    x = torch.ones(40, 4, 2)
    batch = torch.arange(40) // 4
    torch.manual_seed(1)
    y = path(x, batch)
    per_system = y.view(10, -1)
    assert ((per_system == 0).all(1) | (per_system == 2).all(1)).all()
    assert torch.equal(path.eval()(x, batch), x)


def test_bad_configuration():
    with pytest.raises(ValueError, match="basis must be"):
        RadialBasis(8, 5.0, basis="chebyshev")
    with pytest.raises(ValueError, match="cutoff must be > 0"):
        RadialBasis(8, 0.0)
    with pytest.raises(ValueError, match="drop probability"):
        EquivariantDropout(1.0)
    with pytest.raises(ValueError, match="channels must be"):
        RadialMLP([4])
