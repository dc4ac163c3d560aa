r"""Real spherical harmonics in e3nn's basis (polar axis :math:`y`).

With :math:`\hat r = (x, y, z)` a unit vector, :math:`\cos\beta = y` and the azimuth
:math:`\alpha` measured from :math:`z` towards :math:`x`
(:math:`x = \sin\beta\sin\alpha`, :math:`z = \sin\beta\cos\alpha`),

.. math::

    Y_{l,m}(\hat r) = N_{l|m|}\, \bar P_{l}^{|m|}(y) \times
    \begin{cases}
      \sqrt{2}\,\mathrm{Re}\,(z + i x)^{m} & m > 0 \\
      1 & m = 0 \\
      \sqrt{2}\,\mathrm{Im}\,(z + i x)^{|m|} & m < 0
    \end{cases}

where :math:`\bar P_l^m(y) = P_l^m(y) / \sin^m\beta` is the associated Legendre function
without the Condon-Shortley phase, divided by :math:`\sin^m\beta` (a polynomial in
:math:`y`), and :math:`N_{lm} = \sqrt{\tfrac{2l+1}{4\pi}\tfrac{(l-m)!}{(l+m)!}}`.
Writing the azimuthal part through :math:`(z + i x)^m` keeps everything a polynomial in
the Cartesian components: no angles, finite gradients everywhere.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_degree, check_finite, check_last_dims

__all__ = ["spherical_harmonics"]

_NORMALIZATIONS = ("integral", "component", "norm")


def _degree_scale(l: int, normalization: str) -> float:
    """Factor turning 'integral' harmonics (unit L2 norm on the sphere) into ``normalization``."""
    if normalization == "integral":
        return 1.0
    if normalization == "component":  # |Y^l(r)|^2 = 2l + 1
        return math.sqrt(4 * math.pi)
    return math.sqrt(4 * math.pi / (2 * l + 1))  # "norm": |Y^l(r)| = 1


def spherical_harmonics(
    lmax: int,
    vectors: torch.Tensor,
    normalize: bool = True,
    normalization: str = "integral",
    validate: bool = True,
) -> torch.Tensor:
    r"""Real spherical harmonics of degrees ``0..lmax``, l-major, e3nn's basis and signs.

    Args:
        lmax: largest degree.
        vectors: ``[..., 3]`` Cartesian vectors.
        normalize: evaluate at :math:`r / |r|` (else the homogeneous polynomials
            :math:`|r|^l Y^l(\hat r)`, as e3nn does).
        normalization: ``"integral"`` (:math:`\int Y^2 = 1`, e3nn's default),
            ``"component"`` (:math:`\|Y^l\|^2 = 2l+1`) or ``"norm"`` (:math:`\|Y^l\| = 1`).
        validate: check that the vectors are finite (and non-zero, with ``normalize``);
            ``False`` for a caller that has (each check waits for the device on a GPU).

    Returns:
        ``[..., (lmax+1)**2]``; matches ``e3nn.o3.spherical_harmonics(range(lmax+1), ...)``.

    Example:
        >>> spherical_harmonics(1, torch.tensor([0.0, 1.0, 0.0]), normalization="component")
        tensor([1.0000, 0.0000, 1.7321, 0.0000])
    """
    check_degree("lmax", lmax)
    check_last_dims("vectors", vectors, (3,), "[..., 3]")
    if validate:
        check_finite("vectors", vectors)
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
    r = vectors.norm(dim=-1, keepdim=True)
    if normalize:
        if validate and vectors.numel() and bool((r == 0).any()):
            raise ValueError("vectors contains a zero-length vector: its direction is undefined")
        u = vectors / r
    else:
        u = vectors
    x, y, z = u.unbind(-1)

    # (z + i x)^m = cos_m + i sin_m, with the homogeneous recursion in m.
    cos_m, sin_m = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(lmax):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(z * c - x * s)
        sin_m.append(z * s + x * c)

    # Pbar[l][m] = P_l^m(y) / sin^m(beta), no Condon-Shortley phase. For non-normalised
    # input the r^2 in the three-term recursion keeps every term homogeneous of degree l - m.
    r2 = (u * u).sum(-1)
    pbar: list[list[torch.Tensor]] = [[torch.ones_like(y)]]
    for l in range(1, lmax + 1):
        row = []
        for m in range(l + 1):
            if m == l:
                row.append((2 * l - 1) * pbar[l - 1][l - 1])
            elif m == l - 1:
                row.append((2 * l - 1) * y * pbar[l - 1][m])
            else:
                row.append(((2 * l - 1) * y * pbar[l - 1][m] - (l + m - 1) * r2 * pbar[l - 2][m]) / (l - m))
        pbar.append(row)

    out = []
    for l in range(lmax + 1):
        scale = _degree_scale(l, normalization)
        for m in range(-l, l + 1):
            k = abs(m)
            n = scale * math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - k) / math.factorial(l + k))
            if m == 0:
                out.append(n * pbar[l][0])
            else:
                out.append((n * math.sqrt(2)) * pbar[l][k] * (cos_m[k] if m > 0 else sin_m[k]))
    return torch.stack(out, dim=-1)
