r"""The one rule that chooses between a kernel and the reference composition of the layers.

Every public layer computes its equation in plain differentiable PyTorch (the *reference*
path). Where a faster or leaner implementation of the same numbers exists, a *kernel* of
:mod:`so2nn.kernels`, the layer (or the block that composes several layers) asks
:func:`use_fused` whether to run it. The rule:

- ``kernels="reference"``: always the reference path;
- ``kernels="auto"``: the kernel, unless

  1. the code is being compiled (``torch.compile`` fuses the reference graph itself, and a
     custom autograd Function would be traced as an opaque call),
  2. autocast is on for the inputs' device and the kernel does not replay autocast's casts, or
  3. a second derivative may flow through the step (``needs_double_backward``: autograd
     records and the edge frames, i.e. the positions, require a gradient, as for
     conservative forces in training or stress through the strain) and the kernel does not
     pass ``gradgradcheck``.

The kernels and what they support:

====================================  ===============  ========
kernel                                double backward  autocast
====================================  ===============  ========
:func:`edge_convolution`              no               no
:func:`grid_silu`                     yes              yes
:func:`scatter_sum`                   yes              yes
====================================  ===============  ========

Inference in blocks (:func:`use_target_blocks`, :func:`row_block_size`) is not a kernel of
this table: it runs the same computation on a block of targets (or nodes) at a time, only
without autograd and outside training, and is decided there.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["KERNELS", "KernelInfo", "check_kernels", "needs_double_backward", "use_fused", "use_recompute"]

#: The values of the ``kernels`` option of the layers and of :class:`~so2nn.models.EquiformerV2Config`.
KERNELS = ("auto", "reference")


class KernelInfo(NamedTuple):
    """What a kernel supports besides the plain first derivative."""

    name: str
    double_backward: bool  # passes gradgradcheck
    autocast: bool  # may run under autocast (its docstring says in which dtype it computes)


def check_kernels(kernels: str) -> str:
    """Raise a ValueError unless ``kernels`` is one of :data:`KERNELS`."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    return kernels


def needs_double_backward(frames: torch.Tensor) -> bool:
    """``True`` when autograd records and the edge frames (built from the positions) need a
    gradient: then forces or stress are taken by autograd, and training differentiates them again."""
    return torch.is_grad_enabled() and frames.requires_grad


def use_fused(kernels: str, kernel: KernelInfo, *, device_type: str, double_backward: bool) -> bool:
    """Whether to run ``kernel`` instead of the reference composition (the rule of this module).

    Example:
        >>> from so2nn.kernels import EDGE_CONVOLUTION
        >>> use_fused("auto", EDGE_CONVOLUTION, device_type="cpu", double_backward=False)
        True
        >>> use_fused("auto", EDGE_CONVOLUTION, device_type="cpu", double_backward=True)
        False
        >>> use_fused("reference", EDGE_CONVOLUTION, device_type="cpu", double_backward=False)
        False
    """
    if kernels == "reference" or torch.compiler.is_compiling():
        return False
    if not kernel.autocast and torch.is_autocast_enabled(device_type):
        return False
    return not double_backward or kernel.double_backward


def use_recompute(requested: bool, *, double_backward: bool) -> bool:
    """Whether a block recomputes its requested regions in backward: when autograd records,
    outside ``torch.compile`` and when no second derivative flows through them."""
    return requested and torch.is_grad_enabled() and not double_backward and not torch.compiler.is_compiling()
