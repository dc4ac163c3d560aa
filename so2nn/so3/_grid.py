r"""Sampling spherical-harmonic coefficients on an S2 grid, and projecting back.

The grid is e3nn's equiangular grid: ``res_beta`` polar angles
:math:`\beta_b = \pi (b + \tfrac12) / n_\beta` and ``res_alpha`` azimuths
:math:`\alpha_a = 2\pi a / n_\alpha`, flattened ``b``-major into
``G = res_beta * res_alpha`` points. A signal with coefficients :math:`x` is

.. math::

    f(\beta_b, \alpha_a) = \sum_{lm} c_l\, Y_{lm}(\beta_b, \alpha_a)\, x_{lm}
    \quad (\text{to grid}), \qquad
    x_{lm} = \sum_{b,a} \frac{4\pi}{c_l}\, q_b\, Y_{lm}(\beta_b, \alpha_a)\, f(\beta_b, \alpha_a)
    \quad (\text{from grid}),

with :math:`Y` the unit-integral harmonics and :math:`q_b` the Driscoll-Healy
quadrature weights of the equiangular grid (summing to one over the grid). With the
``"component"`` normalisation of e3nn's ``ToS2Grid``/``FromS2Grid`` (the one EquiformerV2
uses), :math:`c_l = \sqrt{4\pi / ((2l+1)(L+1))}`. The quadrature is exact for products of
band-limited signals when ``res_beta >= 2 (lmax + 1)`` and ``res_alpha >= 2 mmax + 1``, so the
round trip from grid(to grid(x)) = x is exact there; a pointwise nonlinearity in between
is where aliasing (and the only equivariance error) comes from.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from .._checks import check_degree
from ._harmonics import spherical_harmonics
from ._layout import CoefficientLayout, _on_cpu

__all__ = ["S2Grid", "default_grid_resolution"]

_NORMALIZATIONS = ("component", "norm", "integral")


def default_grid_resolution(lmax: int, mmax: int) -> tuple[int, int]:
    """EquiformerV2's default ``(res_beta, res_alpha)`` when no resolution is given.

    The smallest grid that resolves the layout: ``res_beta = 2 (lmax + 1)`` polar angles and
    ``2 mmax + 1`` azimuths (one more pair when ``mmax == lmax``, as the reference does).

    Example:
        >>> default_grid_resolution(lmax=4, mmax=2), default_grid_resolution(lmax=2, mmax=2)
        ((10, 5), (6, 7))
    """
    res_alpha = 2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1
    return 2 * (lmax + 1), res_alpha


def _quadrature_weights(res_beta: int) -> torch.Tensor:
    """Driscoll-Healy weights of ``res_beta = 2b`` equiangular polar points, summing to 1."""
    b = res_beta // 2
    j = torch.arange(2 * b, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(b, dtype=torch.float64).unsqueeze(0)
    inner = (torch.sin((2 * j + 1) * (2 * k + 1) * math.pi / (4 * b)) / (2 * k + 1)).sum(1)
    w = (2.0 / b) * torch.sin(math.pi * (2 * j[:, 0] + 1) / (4 * b)) * inner  # sums to 2
    return w / 2


class S2Grid:
    r"""To-grid and from-grid matrices for a (lmax, mmax) layout at a given resolution.

    Args:
        layout: the coefficient layout; the grid must resolve degrees up to ``lmax``
            and orders up to ``mmax``.
        resolution: ``int`` (``res_beta = res_alpha``) or ``(res_beta, res_alpha)``;
            ``None`` gives :func:`default_grid_resolution`.
        normalization: ``"component"`` (EquiformerV2's), ``"norm"`` or ``"integral"``,
            as in e3nn's ``ToS2Grid``.

    The matrices are float64 CPU tensors; layers copy them to their dtype and device as
    non-persistent buffers.

    Attributes:
        to_grid: ``[G, (lmax+1)**2]``, l-major columns.
        from_grid: ``[(lmax+1)**2, G]``.
        points: ``[G, 3]`` unit vectors of the grid.

    Example:
        >>> grid = S2Grid(CoefficientLayout(lmax=2), resolution=8)
        >>> x = torch.randn(9, dtype=torch.float64)
        >>> torch.allclose(grid.from_grid @ (grid.to_grid @ x), x)
        True
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        resolution: int | tuple[int, int] | None = None,
        normalization: str = "component",
    ) -> None:
        if not isinstance(layout, CoefficientLayout):
            raise ValueError(f"layout must be a CoefficientLayout, got {type(layout).__name__}")
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        if resolution is None:
            resolution = default_grid_resolution(layout.lmax, layout.mmax)
        elif isinstance(resolution, int):
            resolution = (resolution, resolution)
        res_beta, res_alpha = (check_degree("resolution", int(r), minimum=1) for r in resolution)
        lmax, mmax = layout.lmax, layout.mmax
        if res_beta % 2 or res_beta < 2 * (lmax + 1):
            raise ValueError(
                f"grid resolution too small: res_beta={res_beta} must be even and >= 2 * (lmax + 1) = "
                f"{2 * (lmax + 1)} to resolve lmax={lmax}"
            )
        if res_alpha < 2 * mmax + 1:
            raise ValueError(
                f"grid resolution too small: res_alpha={res_alpha} must be >= 2 * mmax + 1 = "
                f"{2 * mmax + 1} to resolve mmax={mmax}"
            )
        self.layout = layout
        self.resolution = (res_beta, res_alpha)
        self.normalization = normalization

        beta = (torch.arange(res_beta, dtype=torch.float64) + 0.5) * math.pi / res_beta
        alpha = torch.arange(res_alpha, dtype=torch.float64) * 2 * math.pi / res_alpha
        beta, alpha = (t.reshape(-1) for t in torch.meshgrid(beta, alpha, indexing="ij"))
        self.points = torch.stack(
            [beta.sin() * alpha.sin(), beta.cos(), beta.sin() * alpha.cos()], dim=-1
        )
        Y = spherical_harmonics(lmax, self.points)  # unit-integral harmonics, [G, dim]

        degree = layout.degrees.to(torch.float64)
        if normalization == "component":
            c = torch.sqrt(4 * math.pi / ((2 * degree + 1) * (lmax + 1)))
        elif normalization == "norm":
            c = torch.full_like(degree, math.sqrt(4 * math.pi / (lmax + 1)))
        else:
            c = torch.ones_like(degree)
        q = _quadrature_weights(res_beta).repeat_interleave(res_alpha) / res_alpha  # [G], sums to 1
        self.to_grid = Y * c
        self.from_grid = (4 * math.pi) * (Y * q.unsqueeze(1) / c).T

    @property
    def num_points(self) -> int:
        return self.resolution[0] * self.resolution[1]

    def __repr__(self) -> str:
        return (
            f"S2Grid(lmax={self.layout.lmax}, mmax={self.layout.mmax}, "
            f"resolution={self.resolution}, normalization={self.normalization!r})"
        )

    def edge_matrices(self, rescale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(to_grid [G, edge_dim], from_grid [edge_dim, G])`` for m-major edge-frame features.

        Columns follow :attr:`CoefficientLayout.m_major_index`. With ``rescale=True``, the
        columns of degree ``l`` are scaled by ``sqrt((2l+1) / (2 min(l, mmax)+1))`` in both
        matrices, as EquiformerV2 does for grids with ``mmax < lmax`` (so the round trip
        scales those degrees by the square of that factor).
        """
        layout = self.layout
        index = layout.m_major_index
        to_grid, from_grid = self.to_grid[:, index], self.from_grid[index, :]
        if rescale:
            s = layout.truncation_rescale[layout.m_major_degrees]
            to_grid, from_grid = to_grid * s, from_grid * s.unsqueeze(1)
        return to_grid, from_grid


@cache
@_on_cpu
def s2_grid(layout: CoefficientLayout, resolution, normalization: str = "component") -> S2Grid:
    """Cached :class:`S2Grid` (built once per layout, resolution and normalisation).

    ``resolution`` must be hashable (an int, a tuple or ``None``).

    Example:
        >>> layout = CoefficientLayout(lmax=2)
        >>> s2_grid(layout, 8) is s2_grid(layout, 8)
        True
    """
    return S2Grid(layout, resolution, normalization)
