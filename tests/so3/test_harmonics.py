import e3nn_reference
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.so3 import spherical_harmonics
from so2nn.testing import strategies as so2st


@given(v=so2st.edge_vectors_with_axes(12), normalization=st.sampled_from(["integral", "component", "norm"]))
def test_matches_e3nn(v, normalization):
    lmax = 10
    ours = spherical_harmonics(lmax, v, normalization=normalization)
    theirs = e3nn_reference.spherical_harmonics(lmax, v, True, normalization)
    assert (ours - theirs).abs().max() <= 1e-10


def test_unnormalized_polynomials_match_e3nn():
    v = torch.randn(20, 3, dtype=torch.float64)
    ours = spherical_harmonics(6, v, normalize=False)
    theirs = e3nn_reference.spherical_harmonics(6, v, False)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-10)


def test_component_normalization():
    v = torch.randn(50, 3, dtype=torch.float64)
    Y = spherical_harmonics(5, v, normalization="component")
    for l in range(6):
        assert torch.allclose(Y[:, l * l : (l + 1) ** 2].pow(2).sum(1),
                              torch.full((50,), 2.0 * l + 1, dtype=torch.float64))


def test_polar_axis_is_y():
    Y = spherical_harmonics(4, torch.tensor([[0.0, 2.0, 0.0]], dtype=torch.float64))
    m = torch.tensor([m for l in range(5) for m in range(-l, l + 1)])
    assert Y[0, m != 0].abs().max() <= 1e-14
    assert Y[0, m == 0].abs().min() > 0.1


def test_bad_input():
    with pytest.raises(ValueError, match="zero-length"):
        spherical_harmonics(2, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        spherical_harmonics(2, torch.tensor([[float("nan"), 0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[..., 3\]"):
        spherical_harmonics(2, torch.ones(4, 2))
    with pytest.raises(ValueError, match="normalization"):
        spherical_harmonics(2, torch.ones(1, 3), normalization="bogus")
