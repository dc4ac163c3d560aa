r"""Real Wigner-D matrices from rotation matrices, in e3nn's basis.

The degree-:math:`l` representation is built from the degree-:math:`(l-1)` one and
:math:`D^1(R) = R` (e3nn's basis for :math:`l = 1` is :math:`(x, y, z)`):

.. math::

    D^l(R) = C_l^\top \bigl(D^{l-1}(R) \otimes R\bigr) C_l,

where :math:`C_l \in \mathbb{R}^{(2l-1) \cdot 3 \times (2l+1)}` is the real
Clebsch-Gordan coupling :math:`(l-1) \otimes 1 \to l` with orthonormal columns
(e3nn's ``wigner_3j(l-1, 1, l)`` scaled by :math:`\sqrt{2l+1}`). Because
:math:`C_l` intertwines the representations, the product is exactly :math:`D^l`.

Every entry is a polynomial in the entries of :math:`R`: no Euler angles, so there is
no gimbal lock, and values and gradients are finite for every rotation.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_degree, check_finite, check_last_dims

__all__ = ["wigner_D", "wigner_D_blocks"]


# Couplings in float64 on the CPU, and their copies per (dtype, device): plain dicts filled on
# first use (not functools.lru_cache, which torch.compile would trace through into e3nn).
_COUPLINGS: dict[int, torch.Tensor] = {}
_COUPLING_COPIES: dict[tuple, torch.Tensor] = {}


def _coupling_float64(l: int) -> torch.Tensor:
    if l not in _COUPLINGS:
        from e3nn import o3

        # e3nn normalises wigner_3j to unit Frobenius norm; scaling by sqrt(2l+1) makes the
        # (2l+1) columns of the reshaped [(2l-1)*3, 2l+1] matrix orthonormal.
        with torch.device("cpu"):  # e3nn's factories follow the ambient default device (e.g. meta)
            _COUPLINGS[l] = o3.wigner_3j(l - 1, 1, l, dtype=torch.float64) * math.sqrt(2 * l + 1)
    return _COUPLINGS[l]


def prepare_couplings(lmax: int) -> None:
    """Build the couplings up to ``lmax`` now (layers call this in their constructors, so that
    a compiled forward only reads them)."""
    for l in range(2, lmax + 1):
        _coupling_float64(l)


def _coupling(l: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling():  # a constant of the graph
        return _coupling_float64(l).to(dtype=dtype, device=device)
    key = (l, dtype, device)
    if key not in _COUPLING_COPIES:
        _COUPLING_COPIES[key] = _coupling_float64(l).to(dtype=dtype, device=device)
    return _COUPLING_COPIES[key]


def _blocks(lmax: int, R: torch.Tensor) -> list[torch.Tensor]:
    """Unchecked: ``[D^0(R), ..., D^lmax(R)]``, each ``[..., 2l+1, 2l+1]``."""
    batch = R.shape[:-2]
    R = R.reshape(-1, 3, 3)
    blocks = [R.new_ones(R.shape[0], 1, 1)]
    if lmax >= 1:
        blocks.append(R)
    for l in range(2, lmax + 1):
        n = 3 * (2 * l - 1)
        C = _coupling(l, R.dtype, R.device).reshape(n, 2 * l + 1)  # rows (i, j): degree l-1 times degree 1
        # D^l = C^T (D^{l-1} (x) R) C, the Kronecker product formed once per edge: a few large
        # operations per degree, whatever the number of rotations
        kron = (blocks[-1][:, :, None, :, None] * R[:, None, :, None, :]).reshape(-1, n, n)
        blocks.append(torch.matmul(torch.matmul(C.T, kron), C))
    return [D.reshape(batch + D.shape[1:]) for D in blocks]


def check_rotation(R: torch.Tensor, name: str = "R") -> None:
    r"""Raise a ValueError unless ``R[..., 3, 3]`` holds finite proper rotation matrices.

    Orthogonality and :math:`\det R = 1` are checked to 1e-3 in float32 and lower precisions,
    1e-6 in float64; ``name`` is the argument name the error message uses.

    Example:
        >>> check_rotation(torch.eye(3))
        >>> check_rotation(-torch.eye(3), "frames")
        Traceback (most recent call last):
        ...
        ValueError: frames is not a proper rotation: det = -1 (must be +1)
    """
    check_last_dims(name, R, (3, 3), "[..., 3, 3]")
    check_finite(name, R)
    if R.numel() == 0:
        return
    tol = 1e-3 if R.dtype in (torch.float16, torch.bfloat16, torch.float32) else 1e-6
    eye = torch.eye(3, dtype=R.dtype, device=R.device)
    orth = (R @ R.transpose(-1, -2) - eye).abs().amax()
    if orth > tol:
        raise ValueError(f"{name} is not orthogonal: max |R R^T - I| = {float(orth):.3g} > {tol}")
    det = torch.linalg.det(R)
    if (det - 1).abs().amax() > tol:
        raise ValueError(f"{name} is not a proper rotation: det = {float(det.min()):.6g} (must be +1)")


def wigner_D_blocks(lmax: int, R: torch.Tensor) -> list[torch.Tensor]:
    r"""Wigner-D matrices of every degree ``0..lmax`` for rotations ``R[..., 3, 3]``.

    Args:
        lmax: largest degree.
        R: rotation matrices, ``[..., 3, 3]``, float32 or float64.

    Returns:
        A list whose entry ``l`` is :math:`D^l(R)`, of shape ``[..., 2l+1, 2l+1]``.
        Sharing the recursion, this is cheaper than ``lmax + 1`` calls of :func:`wigner_D`.

    Example:
        >>> R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> [D.shape[-1] for D in wigner_D_blocks(3, R)]
        [1, 3, 5, 7]
        >>> torch.equal(wigner_D_blocks(3, R)[1], R)     # degree 1 is R itself in e3nn's basis
        True
    """
    check_degree("lmax", lmax)
    check_rotation(R)
    return _blocks(lmax, R)


def wigner_D(l: int, R: torch.Tensor) -> torch.Tensor:
    r"""Real Wigner-D matrix of degree ``l`` for a batch of rotation matrices.

    In e3nn's basis: ``wigner_D(l, R)`` equals ``e3nn.o3.Irrep(l, p).D_from_matrix(R)``, and
    real spherical harmonics rotate as :math:`Y^l(R\,r) = D^l(R)\,Y^l(r)`.

    Args:
        l: degree, ``l >= 0``.
        R: proper rotation matrices, ``[..., 3, 3]`` (float32 or float64, differentiable).

    Returns:
        ``[..., 2l+1, 2l+1]``, orthogonal, with :math:`D^l(R_1 R_2) = D^l(R_1) D^l(R_2)`.

    Example:
        >>> R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> wigner_D(2, R).shape
        torch.Size([5, 5])
    """
    check_degree("l", l)
    check_rotation(R)
    return _blocks(l, R)[l]
