r"""Stress of a conservative model: the derivative of its energy with respect to a strain.

A homogeneous deformation :math:`I + \varepsilon` (:math:`\varepsilon` symmetric) acts on
positions and lattice vectors, both rows, as

.. math:: x_i \mapsto x_i (I + \varepsilon), \qquad A \mapsto A (I + \varepsilon),

so every edge vector :math:`r_{ij} = x_j + n_{ij} A - x_i` becomes :math:`r_{ij}(I + \varepsilon)`.
The stress is the energy's response per unit volume, taken at :math:`\varepsilon = 0`:

.. math:: \sigma = \frac{1}{V} \frac{\partial E}{\partial \varepsilon}\Big|_{\varepsilon = 0}
          = -\frac{W}{V}, \qquad V = |\det A|,

with :math:`W = -\partial E/\partial\varepsilon` the virial. This is ASE's sign convention
(positive = tensile: a compressed crystal has :math:`\sigma < 0` and pressure
:math:`P = -\operatorname{tr}\sigma / 3 > 0`). The strain is zero, so positions, cell, energy and
forces are exactly those of the undeformed system; only the gradient sees it.
"""

from __future__ import annotations

import torch

__all__ = ["apply_strain", "stress_from_strain_gradient"]


def apply_strain(
    pos: torch.Tensor, cell: torch.Tensor, strain: torch.Tensor, batch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Positions and cells deformed by the symmetric part of ``strain``.

    .. math:: \varepsilon = \tfrac12 (s + s^\top), \qquad
              x_i \mapsto x_i + x_i\,\varepsilon_{b(i)}, \qquad A_b \mapsto A_b + A_b\,\varepsilon_b

    Args:
        pos: ``[N, 3]`` positions.
        cell: ``[B, 3, 3]`` lattice vectors as rows.
        strain: ``[B, 3, 3]`` (a zero leaf that requires grad, to differentiate with respect to it).
        batch: ``[N]`` system of each atom.

    Example:
        >>> pos, cell = torch.tensor([[1.0, 2.0, 0.0]]), 2.0 * torch.eye(3)[None]
        >>> strain = torch.tensor([[[0.1, 0.2, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        >>> p, c = apply_strain(pos, cell, strain, torch.tensor([0]))
        >>> p
        tensor([[1.3000, 2.1000, 0.0000]])
    """
    # The symmetric part only: an antisymmetric strain is an infinitesimal rotation, which an
    # invariant energy does not feel; symmetrising makes the stress symmetric for every model.
    eps = 0.5 * (strain + strain.transpose(-1, -2))
    pos = pos + torch.einsum("ni,nij->nj", pos, eps.index_select(0, batch))
    return pos, cell + cell @ eps


def stress_from_strain_gradient(grad: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    r"""The stress :math:`\sigma = \frac{1}{V}\,\partial E/\partial\varepsilon`, ``[B, 3, 3]``.

    ``grad [B, 3, 3]`` is :math:`\partial E/\partial s` for the strain of :func:`apply_strain`,
    ``cell [B, 3, 3]`` the undeformed cells (:math:`V = |\det A|`), ``pbc [B, 3]`` the periodic
    flags: a system without any periodic direction has no volume, and its row is NaN (never a
    zero that would look like a relaxed crystal).

    Example:
        >>> grad = torch.diag(torch.tensor([-1.0, -1.0, -1.0]))[None]   # expanding lowers the energy: compressed
        >>> stress_from_strain_gradient(grad, 2.0 * torch.eye(3)[None], torch.ones(1, 3, dtype=torch.bool))[0, 0]
        tensor([-0.1250,  0.0000,  0.0000])
    """
    volume = torch.linalg.det(cell).abs()
    periodic = pbc.any(dim=1)
    stress = grad / torch.where(periodic, volume, torch.ones_like(volume))[:, None, None]
    return torch.where(periodic[:, None, None], stress, torch.full_like(stress, float("nan")))
