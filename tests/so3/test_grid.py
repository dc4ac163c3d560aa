import e3nn_reference
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.so3 import CoefficientLayout, S2Grid, default_grid_resolution


@pytest.mark.parametrize("lmax, resolution", [(2, (6, 7)), (4, (18, 18)), (6, (18, 18)), (6, (36, 36))])
@pytest.mark.parametrize("normalization", ["component", "integral", "norm"])
def test_matches_e3nn(lmax, resolution, normalization):
    grid = S2Grid(CoefficientLayout(lmax), resolution, normalization)
    to_matrix, from_matrix = e3nn_reference.grid_matrices(lmax, resolution, normalization)
    assert (grid.to_grid - to_matrix).abs().max() <= 1e-12
    assert (grid.from_grid - from_matrix.T).abs().max() <= 1e-12


@given(lmax=st.integers(0, 8), extra=st.integers(0, 3), seed=st.integers(0, 1000))
def test_round_trip_exact_on_band_limited_signals(lmax, extra, seed):
    layout = CoefficientLayout(lmax)
    grid = S2Grid(layout, (2 * (lmax + 1 + extra), 2 * lmax + 1 + extra))
    x = torch.randn(layout.dim, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert (grid.from_grid @ (grid.to_grid @ x) - x).abs().max() <= 1e-10


def test_edge_matrices_follow_m_major_and_rescale():
    layout = CoefficientLayout(4, 2)
    grid = S2Grid(layout, 18)
    to_plain, from_plain = grid.edge_matrices(rescale=False)
    assert torch.equal(to_plain, grid.to_grid[:, layout.m_major_index])
    to_grid, from_grid = grid.edge_matrices()
    s2 = layout.truncation_rescale[layout.m_major_degrees] ** 2
    assert (from_grid @ to_grid - torch.diag(s2)).abs().max() <= 1e-10
    assert (from_plain @ to_plain - torch.eye(layout.edge_dim, dtype=torch.float64)).abs().max() <= 1e-10


def test_default_resolution():
    assert default_grid_resolution(4, 4) == (10, 11)
    assert default_grid_resolution(6, 2) == (14, 5)
    assert S2Grid(CoefficientLayout(6, 2)).resolution == (14, 5)


@pytest.mark.parametrize("resolution, message", [(8, "res_beta=8 must be even and >= 2 \\* \\(lmax \\+ 1\\) = 10"),
                                                 ((11, 11), "even"), ((10, 5), "res_alpha=5")])
def test_too_small(resolution, message):
    with pytest.raises(ValueError, match=message):
        S2Grid(CoefficientLayout(4), resolution)


def test_bad_normalization():
    with pytest.raises(ValueError, match="normalization"):
        S2Grid(CoefficientLayout(2), 8, "bogus")
