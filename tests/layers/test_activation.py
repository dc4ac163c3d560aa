import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.layers import (
    GateActivation,
    S2Activation,
    SeparableS2Activation,
    SmoothLeakyReLU,
    activation_layer,
    activation_scalars,
    fine_grid_resolution,
)
from so2nn.so3 import CoefficientLayout
from so2nn.testing import assert_equivariant, equivariance_error, random_rotation
from so2nn.testing import strategies as so2st

LAYOUTS = [CoefficientLayout(1), CoefficientLayout(2, 0), CoefficientLayout(3, 1), CoefficientLayout(4, 2),
           CoefficientLayout(4)]


def _roll_action(layout, R):
    """How a rotation acts on m-major edge-frame features (exact for rolls about +y)."""
    return layout.D_from_matrix(R)[layout.m_major_index][:, layout.m_major_index]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@given(layout=st.sampled_from(LAYOUTS), R=so2st.rotations())
def test_gate_is_exactly_equivariant(dtype, tolerance, layout, R):
    gate = GateActivation(layout, 3).to(dtype)
    x = torch.randn(5, layout.dim, 3, dtype=dtype)
    g = torch.randn(5, layout.lmax * 3, dtype=dtype)
    assert_equivariant(gate, [x, g], [layout, None], layout, R.to(dtype), tolerance=tolerance)


@given(layout=st.sampled_from(LAYOUTS), angle=st.floats(0, 6.3))
def test_edge_gate_commutes_with_rolls(layout, angle):
    import math

    Ry = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0], [-math.sin(angle), 0, math.cos(angle)]],
                      dtype=torch.float64)
    D = _roll_action(layout, Ry)
    gate = GateActivation(layout, 2, edge=True).double()
    x, g = torch.randn(3, layout.edge_dim, 2, dtype=torch.float64), torch.randn(3, layout.lmax * 2, dtype=torch.float64)
    assert (gate(D @ x, g) - D @ gate(x, g)).abs().max() <= 1e-10


@given(layout=st.sampled_from(LAYOUTS))
def test_grid_round_trip_is_exact(layout):
    # With the identity instead of SiLU, a grid layer is exact: node grids are the identity,
    # edge grids scale each degree by EquiformerV2's rescale squared (a per-degree constant).
    node = S2Activation(layout, 2 * (layout.lmax + 1)).double()
    assert (node.from_grid @ node.to_grid - torch.eye(layout.dim, dtype=torch.float64)).abs().max() <= 1e-10
    edge = S2Activation(layout, (2 * (layout.lmax + 1), 2 * layout.mmax + 1), edge=True).double()
    s2 = layout.truncation_rescale[layout.m_major_degrees] ** 2
    assert (edge.from_grid @ edge.to_grid - torch.diag(s2)).abs().max() <= 1e-10


@pytest.mark.parametrize("lmax", [2, 4, 6])
def test_aliasing_error_falls_with_resolution(lmax):
    layout = CoefficientLayout(lmax)
    g = torch.Generator().manual_seed(lmax)
    resolutions = [18, fine_grid_resolution(lmax) - 8, fine_grid_resolution(lmax)]
    worst = []
    for resolution in resolutions:
        act = S2Activation(layout, resolution).double()
        errors = []
        for _ in range(3):
            x = torch.randn(8, layout.dim, 8, dtype=torch.float64, generator=g)
            errors.append(equivariance_error(act, [x], [layout], layout, random_rotation(g))[0].relative)
        worst.append(max(errors))
    assert worst[0] > worst[1] > worst[2] or worst[1] < 1e-12
    assert worst[2] <= 1e-5, f"lmax {lmax}: errors {worst} at resolutions {resolutions}"
    if lmax >= 4:
        assert worst[0] > 1e-4  # the released resolution is only approximately equivariant


def test_separable_activation_and_smooth_leaky_relu():
    layout = CoefficientLayout(2)
    act = SeparableS2Activation(layout, 8).double()
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    s = torch.randn(4, 3, dtype=torch.float64)
    y = act(x, s)
    assert torch.allclose(y[:, 0], torch.nn.functional.silu(s))
    assert torch.allclose(y[:, 1:], act.s2_act(x)[:, 1:])
    t = torch.linspace(-5, 5, 11, dtype=torch.float64)
    slrelu = SmoothLeakyReLU(0.2)(t)
    assert torch.allclose(slrelu, 0.6 * t + 0.4 * t * torch.tanh(t / 2))  # 2 sigmoid(t) - 1 = tanh(t/2)


def test_constants_are_not_state():
    act = S2Activation(CoefficientLayout(3), 18)
    assert act.state_dict() == {} or len(act.state_dict()) == 0
    assert act.double().to_grid.dtype == torch.float64


def test_bad_configuration():
    with pytest.raises(ValueError, match="grid resolution too small"):
        S2Activation(CoefficientLayout(6), 12)
    with pytest.raises(ValueError, match="res_alpha"):
        S2Activation(CoefficientLayout(6, 2), (14, 4), edge=True)
    with pytest.raises(ValueError, match=r"scalars \(the gate logits\) must have shape"):
        GateActivation(2, 3)(torch.randn(4, 9, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="scalars must have shape"):
        SeparableS2Activation(2, 8)(torch.randn(4, 9, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="scalars must have shape"):
        SeparableS2Activation(2, 8)(torch.randn(4, 9, 3))
    with pytest.raises(ValueError, match="takes no scalars"):
        S2Activation(2, 8)(torch.randn(4, 9, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"expects node features \[N, \(lmax\+1\)\*\*2=9"):
        S2Activation(2, 8)(torch.randn(4, 3))
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        activation_layer("relu", 2, 3)


@pytest.mark.parametrize("name", ["separable_s2", "s2", "gate"])
def test_activation_factory_one_signature(name):
    """Every activation from the factory is called as act(x, scalars), with activation_scalars(...) scalars."""
    layout = CoefficientLayout(3, 1)
    for edge, rows in ((False, layout.dim), (True, layout.edge_dim)):
        act = activation_layer(name, layout, 4, resolution=10, edge=edge).double()
        width = activation_scalars(name, layout, 4)
        x = torch.randn(5, rows, 4, dtype=torch.float64)
        y = act(x, torch.randn(5, width, dtype=torch.float64) if width else None)
        assert y.shape == x.shape and torch.isfinite(y).all()
        empty = act(x[:0], torch.zeros(0, width, dtype=torch.float64) if width else None)  # no rows
        assert empty.shape == (0, rows, 4)
