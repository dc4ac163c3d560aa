import math

import e3nn_reference
import pytest
import torch
from e3nn import o3
from graph_context import NUM_BASIS, edge_context
from hypothesis import given
from hypothesis import strategies as st

from so2nn.layers import SO2Convolution, SO2Linear
from so2nn.so3 import CoefficientLayout, EdgeRotation
from so2nn.testing import assert_equivariant
from so2nn.testing import strategies as so2st

LAYOUTS = [CoefficientLayout(0, 0), CoefficientLayout(2, 0), CoefficientLayout(2, 2), CoefficientLayout(3, 1),
           CoefficientLayout(4, 2)]


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@given(layout=st.sampled_from(LAYOUTS), graph=so2st.atomic_graphs(), R=so2st.rotations())
def test_convolution_in_edge_frames_is_equivariant(dtype, tolerance, layout, graph, R):
    torch.manual_seed(0)
    conv = SO2Convolution(layout, 3, 4, edge_channels_list=[NUM_BASIS, 8], extra_m0_output_channels=2).to(dtype)
    x = torch.randn(graph.num_atoms, layout.dim, 3, dtype=dtype)
    graph.pos, graph.cell = graph.pos.to(dtype), None if graph.cell is None else graph.cell.to(dtype)

    def message(pos, cell, x):
        edge_features, rotation = edge_context(layout, graph, pos, cell)
        y, extra = conv(rotation.to_edge(x[graph.edge_index[0]]), edge_features)
        return rotation.from_edge(y), extra

    kinds = ["vector", "vector" if graph.cell is not None else None, layout]
    assert_equivariant(message, [graph.pos, graph.cell, x], kinds, (layout, None), R, tolerance=tolerance)


@given(layout=st.sampled_from(LAYOUTS), roll=st.floats(0, 6.3))
def test_commutes_with_roll_about_the_edge(layout, roll):
    # In the edge frame, equivariance is exactly: commuting with rotations about +y, which
    # act on the kept coefficients block by block (they never mix different |m|).
    torch.manual_seed(1)
    lin = SO2Linear(layout, 2, 3).double()
    c, s = math.cos(roll), math.sin(roll)
    Ry = torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)
    D = layout.D_from_matrix(Ry)[layout.m_major_index][:, layout.m_major_index]
    x = torch.randn(4, layout.edge_dim, 2, dtype=torch.float64)
    assert (lin(D @ x).y - D @ lin(x).y).abs().max() <= 1e-10


def test_escn_identity_against_e3nn_tensor_product():
    """The eSCN identity: in the edge frame, a tensor product with the edge's harmonics is an
    SO(2) linear map (only equal |m| mix, as a complex number), and SO2Linear reproduces it."""
    lmax = 2
    layout = CoefficientLayout(lmax)
    irreps = layout.irreps(1)
    with e3nn_reference.float64_default():
        tp = o3.FullyConnectedTensorProduct(irreps, o3.Irreps.spherical_harmonics(2 * lmax), irreps)
        y_axis = torch.tensor([0.0, 1.0, 0.0])
        sh = o3.spherical_harmonics(list(range(2 * lmax + 1)), y_axis, True)
        M = torch.stack([tp(e, sh) for e in torch.eye(layout.dim)], dim=1).detach()  # y = M x, l-major
    P = M[layout.m_major_index][:, layout.m_major_index]  # m-major
    lin = SO2Linear(layout, 1, 1).double()
    n0 = lmax + 1
    with torch.no_grad():
        lin.fc_m0.weight.copy_(P[:n0, :n0])
        lin.fc_m0.bias.zero_()
        for m, fc in enumerate(lin.fc_m, start=1):
            sl = layout.order_slice(m)
            k = layout.order_size(m)
            block = P[sl, sl]
            A, B = block[:k, :k], block[k:, :k]
            # structure of a complex multiplication, and nothing between different |m|
            assert torch.allclose(block[k:, k:], A, atol=1e-12) and torch.allclose(block[:k, k:], -B, atol=1e-12)
            fc.weight.copy_(torch.cat([A, B]))
    off_block = P.clone()
    for m in range(lmax + 1):
        off_block[layout.order_slice(m), layout.order_slice(m)] = 0
    assert off_block.abs().max() <= 1e-12
    x = torch.randn(5, layout.dim, 1, dtype=torch.float64)
    v = torch.randn(5, 3, dtype=torch.float64)
    rot = EdgeRotation(layout, v)
    with e3nn_reference.float64_default():
        expected = tp(x[..., 0], o3.spherical_harmonics(list(range(2 * lmax + 1)), v, True)).detach()
    ours = rot.from_edge(lin(rot.to_edge(x)).y)[..., 0]
    assert (ours - expected).abs().max() <= 1e-10
    assert lin.fc_m0.weight.abs().max() > 0.01  # the map is not trivially zero


def test_gradcheck():
    layout = CoefficientLayout(2, 1)
    conv = SO2Convolution(layout, 2, 2, edge_channels_list=[3, 4]).double()
    x = torch.randn(3, layout.edge_dim, 2, dtype=torch.float64, requires_grad=True)
    h = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x, h))


def test_parameter_shapes_follow_the_reference_parameterisation():
    layout = CoefficientLayout(4, 2)
    conv = SO2Convolution(layout, 8, 6, edge_channels_list=[10, 16], extra_m0_output_channels=5)
    assert conv.fc_m0.weight.shape == (5 * 6 + 5, 5 * 8)
    assert [fc.weight.shape for fc in conv.fc_m] == [(2 * 4 * 6, 4 * 8), (2 * 3 * 6, 3 * 8)]
    assert conv.radial.net[-1].out_features == (5 + 4 + 3) * 8
    assert "lmax=4, mmax=2" in repr(conv)


def test_bad_input():
    with pytest.raises(ValueError, match="mmax must be <= lmax"):
        SO2Linear(CoefficientLayout(2, 3), 2, 2)
    with pytest.raises(ValueError, match="in_channels must be >= 1"):
        SO2Linear(2, 0, 2)
    lin = SO2Linear(CoefficientLayout(2, 1), 2, 2)
    with pytest.raises(ValueError,
                       match=r"x must have shape \[N, 7, 2\], got \(3, 9, 2\) \(node features.*EdgeRotation.to_edge"):
        lin(torch.randn(3, 9, 2))
    with pytest.raises(ValueError, match=r"x is torch.float64 but the weights of SO2Linear are torch.float32"):
        lin(torch.randn(3, 7, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="extra_m0_output_channels must be an int >= 0"):
        SO2Linear(2, 2, 2, extra_m0_output_channels=-1)
    conv = SO2Convolution(CoefficientLayout(2, 1), 2, 2, edge_channels_list=[3, 4])
    with pytest.raises(ValueError, match=r"edge_features must have shape \[E=3, 3\]"):
        conv(torch.randn(3, 7, 2), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"edge_features must have shape \[E=3, 3\] \(the radial MLP's input width\), "
                                         r"got \(3, 5\)"):
        conv(torch.randn(3, 7, 2), torch.randn(3, 5))


def test_one_return_type():
    """SO2Linear and SO2Convolution always return SO2Output(y, extra), extra [E, 0] without extra outputs."""
    from so2nn.layers import SO2Output

    layout = CoefficientLayout(2, 1)
    out = SO2Linear(layout, 2, 3)(torch.randn(4, layout.edge_dim, 2))
    assert isinstance(out, SO2Output) and out.y.shape == (4, 7, 3) and out.extra.shape == (4, 0)
    out = SO2Convolution(layout, 2, 3, [3, 4], extra_m0_output_channels=5)(torch.randn(4, 7, 2), torch.randn(4, 3))
    assert isinstance(out, SO2Output) and out.extra.shape == (4, 5)


@pytest.mark.parametrize("layout", [CoefficientLayout(2, 1), CoefficientLayout(2, 2), CoefficientLayout(3, 0)])
def test_no_edges(layout):
    conv = SO2Convolution(layout, 2, 3, [3, 4], extra_m0_output_channels=2).double()
    x = torch.zeros(0, layout.edge_dim, 2, dtype=torch.float64, requires_grad=True)
    y, extra = conv(x, torch.zeros(0, 3, dtype=torch.float64))
    assert y.shape == (0, layout.edge_dim, 3) and extra.shape == (0, 2)
    (y.sum() + extra.sum()).backward()
    assert x.grad.shape == x.shape and all(torch.isfinite(p.grad).all() for p in conv.parameters())
