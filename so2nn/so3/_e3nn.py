r"""Conversion between so2nn's feature layout and e3nn's.

so2nn: ``[..., (lmax+1)**2, C]``, l-major coefficients, channels last.
e3nn:  ``[..., C * (lmax+1)**2]`` for the irreps ``C x 0e + C x 1o + C x 2e + ...``: degree by
degree, and within a degree channel-major (``C`` copies of ``2l+1`` coefficients).

Both directions are a single gather with a cached permutation, so the round trip is exact.
"""

from __future__ import annotations

from functools import cache

import torch

from .._checks import check_degree

__all__ = ["to_e3nn", "from_e3nn"]


@cache
def _to_e3nn_perm(lmax: int, channels: int, device: torch.device) -> torch.Tensor:
    # e3nn position of (l, c, m) holds so2nn's flat index (l*l + l + m) * C + c.
    perm = [
        (l * l + l + m) * channels + c
        for l in range(lmax + 1)
        for c in range(channels)
        for m in range(-l, l + 1)
    ]
    return torch.tensor(perm, device=device)


@cache
def _from_e3nn_perm(lmax: int, channels: int, device: torch.device) -> torch.Tensor:
    return torch.argsort(_to_e3nn_perm(lmax, channels, device))


def _check(x: torch.Tensor, lmax: int, dims: int) -> None:
    check_degree("lmax", lmax)
    if not torch.is_tensor(x) or x.dim() < dims:
        raise ValueError(f"x must be a tensor with at least {dims} dimensions")


def to_e3nn(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """so2nn ``[..., (lmax+1)**2, C]`` -> e3nn ``[..., C*(lmax+1)**2]`` (irreps ``layout.irreps(C)``).

    Example:
        >>> x = torch.randn(4, 9, 3)
        >>> torch.equal(from_e3nn(to_e3nn(x, lmax=2), lmax=2), x)
        True
    """
    _check(x, lmax, 2)
    if x.shape[-2] != (lmax + 1) ** 2:
        raise ValueError(f"x must have shape [..., {(lmax + 1) ** 2}, C] for lmax={lmax}, got {tuple(x.shape)}")
    channels = x.shape[-1]
    flat = x.reshape(x.shape[:-2] + (-1,))
    return flat.index_select(-1, _to_e3nn_perm(lmax, channels, x.device))


def from_e3nn(x: torch.Tensor, lmax: int) -> torch.Tensor:
    """e3nn ``[..., C*(lmax+1)**2]`` -> so2nn ``[..., (lmax+1)**2, C]`` (inverse of :func:`to_e3nn`).

    The number of channels ``C`` is read from the size of the last dimension.

    Example:
        >>> flat = torch.randn(4, 27)                   # irreps 3x0e + 3x1o + 3x2e
        >>> from_e3nn(flat, lmax=2).shape
        torch.Size([4, 9, 3])
        >>> torch.equal(to_e3nn(from_e3nn(flat, lmax=2), lmax=2), flat)
        True
    """
    _check(x, lmax, 1)
    dim = (lmax + 1) ** 2
    if x.shape[-1] % dim:
        raise ValueError(f"x's last dimension must be a multiple of (lmax+1)**2 = {dim}, got {x.shape[-1]}")
    channels = x.shape[-1] // dim
    out = x.index_select(-1, _from_e3nn_perm(lmax, channels, x.device))
    return out.reshape(x.shape[:-1] + (dim, channels))
