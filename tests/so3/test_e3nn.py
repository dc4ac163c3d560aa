import e3nn_reference
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from so2nn.so3 import CoefficientLayout, from_e3nn, to_e3nn
from so2nn.testing import apply_rotation
from so2nn.testing import strategies as so2st


# e3nn computes its D through Euler angles, which loses ~1e-7 at rotations by pi: compare
# with it on uniform rotations (special ones are covered by the homomorphism tests).
@given(lmax=st.integers(0, 6), channels=st.integers(1, 5), R=so2st.uniform_rotations())
def test_round_trip_and_rotation(lmax, channels, R):
    layout = CoefficientLayout(lmax)
    x = torch.randn(3, layout.dim, channels, dtype=torch.float64)
    flat = to_e3nn(x, lmax)
    assert flat.shape == (3, layout.dim * channels)
    assert torch.equal(from_e3nn(flat, lmax), x)
    # rotating in so2nn's layout, then converting == converting, then rotating with e3nn
    D = e3nn_reference.irreps_D(layout.irreps(channels), R)
    tolerance = 1e-10 + 100 * e3nn_reference.euler_path_error(R)
    assert (to_e3nn(apply_rotation(x, layout, R), lmax) - flat @ D.T).abs().max() <= tolerance


def test_matches_e3nn_slices():
    x = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)  # lmax 1, 3 channels
    flat = to_e3nn(x, 1)
    assert torch.equal(flat[:, :3], x[:, 0, :])  # 3x0e: one scalar per channel
    assert torch.equal(flat[:, 3:6], x[:, 1:4, 0])  # first channel of 1o
    assert torch.equal(flat[:, 6:9], x[:, 1:4, 1])


def test_bad_shapes():
    with pytest.raises(ValueError, match=r"\[..., 9, C\]"):
        to_e3nn(torch.randn(2, 4, 3), 2)
    with pytest.raises(ValueError, match="multiple of"):
        from_e3nn(torch.randn(2, 10), 2)
