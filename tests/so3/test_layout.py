import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.so3 import CoefficientLayout


@st.composite
def layouts(draw):
    lmax = draw(st.integers(0, 8))
    return CoefficientLayout(lmax, draw(st.integers(0, lmax)))


@given(layout=layouts())
def test_m_major_order(layout):
    lmax, mmax = layout.lmax, layout.mmax
    assert layout.dim == (lmax + 1) ** 2
    assert layout.edge_dim == (lmax + 1) + sum(2 * (lmax - m + 1) for m in range(1, mmax + 1))
    idx = layout.m_major_index
    assert torch.equal(layout.degrees[idx], layout.m_major_degrees)
    assert torch.equal(layout.orders[idx], layout.m_major_orders)
    for m in range(mmax + 1):
        orders = layout.m_major_orders[layout.order_slice(m)]
        degrees = layout.m_major_degrees[layout.order_slice(m)]
        if m == 0:
            assert orders.eq(0).all() and degrees.tolist() == list(range(lmax + 1))
        else:
            n = lmax - m + 1
            assert orders[:n].eq(m).all() and orders[n:].eq(-m).all()
            assert degrees.tolist() == 2 * list(range(m, lmax + 1))
    # the slices tile the m-major order
    covered = torch.cat([torch.arange(layout.edge_dim)[layout.order_slice(m)] for m in range(mmax + 1)])
    assert covered.tolist() == list(range(layout.edge_dim))


@given(layout=layouts())
def test_truncated_permutations(layout):
    t = layout.truncated_index
    assert layout.orders[t].abs().max() <= layout.mmax
    assert torch.equal(t[layout.truncated_to_m_major], layout.m_major_index)
    assert torch.equal(layout.truncated_to_m_major[layout.m_major_to_truncated], torch.arange(layout.edge_dim))
    for l in range(layout.lmax + 1):
        assert layout.degrees[t[layout.truncated_degree_slice(l)]].eq(l).all()


def test_rescale_and_irreps():
    layout = CoefficientLayout(4, 2)
    assert torch.allclose(layout.truncation_rescale[:3], torch.ones(3, dtype=torch.float64))
    assert abs(float(layout.truncation_rescale[4]) - (9 / 5) ** 0.5) < 1e-15
    assert str(layout.irreps(3)) == "3x0e+3x1o+3x2e+3x3o+3x4e"


def test_hashable_and_default_mmax():
    assert CoefficientLayout(3) == CoefficientLayout(3, 3)
    assert len({CoefficientLayout(3, 1), CoefficientLayout(3, 1), CoefficientLayout(3, 2)}) == 2
    assert repr(CoefficientLayout(3, 1)) == "CoefficientLayout(lmax=3, mmax=1)"


@pytest.mark.parametrize("lmax, mmax, message",
                         [(2, 3, "mmax must be <= lmax"), (-1, 0, "lmax must be >= 0"), (2, -2, "mmax must be >= 0")])
def test_bad_layout(lmax, mmax, message):
    with pytest.raises(ValueError, match=message):
        CoefficientLayout(lmax, mmax)


def test_bad_order_slice():
    with pytest.raises(ValueError, match="m must be <= mmax"):
        CoefficientLayout(3, 1).order_slice(2)
