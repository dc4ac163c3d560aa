"""Argument checks shared by the public entry points.

Public constructors and forwards validate what a user can get wrong and raise a
:class:`ValueError` that names the argument; inner code trusts its inputs.
"""

from __future__ import annotations

import torch

__all__ = ["check_degree", "check_layout", "check_finite", "check_last_dims"]


def check_degree(name: str, value: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_layout(lmax: int, mmax: int) -> None:
    check_degree("lmax", lmax)
    check_degree("mmax", mmax)
    if mmax > lmax:
        raise ValueError(f"mmax must be <= lmax, got mmax={mmax} > lmax={lmax}")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    if not torch.is_tensor(tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if not bool(torch.isfinite(tensor).all()):
        bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {bad})")


def check_last_dims(name: str, tensor: torch.Tensor, dims: tuple[int, ...], what: str) -> None:
    """Check ``tensor.shape[-len(dims):] == dims``; ``what`` spells the expected shape."""
    if not torch.is_tensor(tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {what}, got {type(tensor).__name__}")
    if tensor.dim() < len(dims) or tuple(tensor.shape[-len(dims):]) != tuple(dims):
        raise ValueError(f"{name} must have shape {what}, got {tuple(tensor.shape)}")
