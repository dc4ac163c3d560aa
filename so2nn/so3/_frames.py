r"""Edge frames: the rotation that takes each edge onto the polar axis :math:`+y`.

In e3nn's basis the polar axis is :math:`y`: a vector along :math:`+y` has spherical
harmonics with only :math:`m = 0` components. For an edge direction :math:`u` we use the
smallest rotation taking :math:`u` to :math:`+y` (Rodrigues),

.. math::

    R(u) = I + [v]_\times + \frac{[v]_\times^2}{1 + c}, \qquad v = u \times \hat y,
    \quad c = u \cdot \hat y,

which is smooth wherever :math:`c > -1`. On the lower hemisphere (:math:`u_y < 0`) we
first turn by :math:`\pi` about :math:`x` (:math:`F = \mathrm{diag}(1, -1, -1)`, which
sends :math:`-y` to :math:`+y`), and use :math:`R(u) = R(Fu)\,F`. Each chart is used only
where :math:`1 + c \ge 1`, so values and gradients are finite for every direction,
including edges along :math:`\pm x, \pm y, \pm z`.

The roll about the edge axis is therefore a fixed function of the edge vector: no random
roll, the same frame on every call. A roll changes nothing for exactly equivariant
layers (the SO(2) maps commute with it); for S2-grid layers it removes the call-to-call
noise of a random roll.
"""

from __future__ import annotations

import torch

from .._checks import check_finite, check_last_dims

__all__ = ["edge_frames"]


def edge_frames(edge_vec: torch.Tensor, validate: bool = True) -> torch.Tensor:
    r"""Rotation matrices taking each edge direction onto :math:`+y`.

    Args:
        edge_vec: ``[E, 3]`` edge vectors (any length > 0).
        validate: check that they are finite and non-zero (``False``: the caller has, e.g. a
            model that checked its inputs once; on a GPU each check waits for the device).

    Returns:
        ``R[E, 3, 3]`` with ``R @ (edge_vec / |edge_vec|) == (0, 1, 0)``. Deterministic,
        differentiable, finite for every direction.

    Example:
        >>> R = edge_frames(torch.tensor([[1.0, 0.0, 0.0]]))
        >>> (R[0] @ torch.tensor([1.0, 0.0, 0.0])).round(decimals=6)
        tensor([0., 1., 0.])
    """
    check_last_dims("edge_vec", edge_vec, (3,), "[E, 3]")
    length = edge_vec.norm(dim=-1, keepdim=True)
    # Data-dependent checks would split a torch.compile graph in two: they run eagerly only.
    if not validate or torch.compiler.is_compiling():
        return _edge_frames(edge_vec / length)
    check_finite("edge_vec", edge_vec)
    if edge_vec.numel() and bool((length == 0).any()):
        index = int((length[..., 0] == 0).nonzero()[0, 0]) if edge_vec.dim() == 2 else 0
        raise ValueError(
            f"edge_vec has a zero-length vector (edge {index}): its direction, and so its frame, "
            "is undefined; two atoms probably sit on top of each other"
        )
    return _edge_frames(edge_vec / length)


def _edge_frames(u: torch.Tensor) -> torch.Tensor:
    r"""Unchecked: frames of unit vectors ``u[..., 3]``.

    The two charts of the module docstring written out: with :math:`s = -1` on the lower
    hemisphere (:math:`u_y < 0`), else :math:`+1`, and :math:`k = 1 / (1 + |u_y|)`,

    .. math::

        R(u) = \begin{pmatrix} 1 - k u_x^2 & -s\,u_x & -k u_x u_z \\ u_x & u_y & u_z \\
        -s\,k u_x u_z & -u_z & s\,(1 - k u_z^2) \end{pmatrix}

    (the middle row is :math:`u` itself: :math:`R u = \hat y`), a handful of elementwise operations.
    """
    x, y, z = u.unbind(-1)
    one = torch.ones_like(y)
    s = torch.where(y < 0, -one, one)
    k = 1.0 / (1.0 + s * y)  # |u_y| (not abs(): its second derivative fixes the number of edges under torch.compile)
    xzk = x * z * k
    rows = (1.0 - k * x * x, -s * x, -xzk, x, y, z, -s * xzk, -z, s * (1.0 - k * z * z))
    return torch.stack(rows, dim=-1).view(u.shape[:-1] + (3, 3))
