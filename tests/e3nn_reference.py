"""Independent reference numbers from e3nn, computed in float64.

e3nn builds its Wigner matrices and grids partly in torch's *default* dtype, so without
this they would carry float32 rounding (~1e-7) even for float64 inputs.
"""

from contextlib import contextmanager

import torch
from e3nn import o3


@contextmanager
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def wigner_D(l, R):
    with float64_default():
        return o3.Irrep(l, (-1) ** l).D_from_matrix(R.double())


def irreps_D(irreps, R):
    with float64_default():
        return irreps.D_from_matrix(R.double())


def spherical_harmonics(lmax, vectors, normalize=True, normalization="integral"):
    with float64_default():
        return o3.spherical_harmonics(list(range(lmax + 1)), vectors.double(), normalize, normalization=normalization)


def grid_matrices(lmax, resolution, normalization):
    """e3nn's to-grid ``[G, dim]`` and from-grid ``[G, dim]`` matrices, b-major points."""
    with float64_default():
        to_grid = o3.ToS2Grid(lmax, resolution, normalization=normalization)
        from_grid = o3.FromS2Grid(resolution, lmax, normalization=normalization)
        dim = (lmax + 1) ** 2
        to_matrix = torch.einsum("mbi,am->bai", to_grid.shb, to_grid.sha).reshape(-1, dim)
        from_matrix = torch.einsum("am,mbi->bai", from_grid.sha, from_grid.shb).reshape(-1, dim)
    return to_matrix, from_matrix


def euler_path_error(R):
    """e3nn's own error for ``R``: its D at l = 1 against the exact answer, R itself.

    e3nn goes through Euler angles, which lose precision near beta = 0 or pi; comparisons
    with it allow for that (times a margin for higher degrees) on top of 1e-10.
    """
    return float((wigner_D(1, R) - R.double()).abs().max())
