import math

import e3nn_reference
import pytest
import torch
from e3nn import o3
from hypothesis import given
from hypothesis import strategies as st

from so2nn.so3 import spherical_harmonics, wigner_D, wigner_D_blocks
from so2nn.testing import strategies as so2st


# e3nn computes its D through Euler angles, which loses ~1e-7 at rotations by pi: compare
# with it on uniform rotations (special ones are covered by the homomorphism tests).
@given(R=so2st.uniform_rotations(), l=st.integers(0, 10))
def test_matches_e3nn_float64(R, l):
    expected = e3nn_reference.wigner_D(l, R)
    assert (wigner_D(l, R) - expected).abs().max() <= 1e-10 + 100 * e3nn_reference.euler_path_error(R)


@given(R=so2st.uniform_rotations(torch.float32), l=st.integers(0, 6))
def test_matches_e3nn_float32(R, l):
    expected = e3nn_reference.wigner_D(l, R)
    D = wigner_D(l, R)
    assert D.dtype == torch.float32
    assert (D.double() - expected).abs().max() <= 1e-5


@given(R1=so2st.rotations(), R2=so2st.rotations(), l=st.integers(0, 12))
def test_homomorphism_and_orthogonality(R1, R2, l):
    D1, D2, D12 = wigner_D(l, R1), wigner_D(l, R2), wigner_D(l, R1 @ R2)
    assert (D12 - D1 @ D2).abs().max() <= 1e-10
    eye = torch.eye(2 * l + 1, dtype=torch.float64)
    assert (D1 @ D1.T - eye).abs().max() <= 1e-10


@given(R=so2st.rotations(), r=so2st.point_clouds(1, 6))
def test_rotates_spherical_harmonics(R, r):
    lmax = 12
    Y, Y_rot = spherical_harmonics(lmax, r), spherical_harmonics(lmax, r @ R.T)
    for l, D in enumerate(wigner_D_blocks(lmax, R)):
        block = slice(l * l, (l + 1) ** 2)
        assert (Y_rot[:, block] - Y[:, block] @ D.T).abs().max() <= 1e-10


def test_batched_shapes():
    R = o3.rand_matrix(4, 5, dtype=torch.float64)
    assert wigner_D(3, R).shape == (4, 5, 7, 7)
    assert [b.shape[-1] for b in wigner_D_blocks(2, R)] == [1, 3, 5]


def test_gradcheck():
    q = torch.randn(4, dtype=torch.float64)

    def d_of_quaternion(q):
        q = q / q.norm()
        w, x, y, z = q
        R = torch.stack([
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)]),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)]),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]),
        ])
        return wigner_D(3, R)

    assert torch.autograd.gradcheck(d_of_quaternion, (q.requires_grad_(),))


@pytest.mark.parametrize(
    "R, message",
    [
        (torch.eye(3, dtype=torch.float64) * 2, "not orthogonal"),
        (-torch.eye(3, dtype=torch.float64), "proper rotation"),
        (torch.full((3, 3), math.nan, dtype=torch.float64), "NaN"),
        (torch.eye(4, dtype=torch.float64), r"\[..., 3, 3\]"),
    ],
)
def test_bad_rotation(R, message):
    with pytest.raises(ValueError, match=message):
        wigner_D(1, R)


def test_bad_degree():
    with pytest.raises(ValueError, match="l must be >= 0"):
        wigner_D(-1, torch.eye(3))
    with pytest.raises(ValueError, match="l must be an int"):
        wigner_D(1.5, torch.eye(3))
