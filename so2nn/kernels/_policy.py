r"""The one rule that chooses between a kernel and the reference composition of the layers.

Every public layer computes its equation in plain differentiable PyTorch (the *reference*
path). Where a faster or leaner implementation of the same numbers exists, a *kernel* of
:mod:`so2nn.kernels`, the layer (or the block that composes several layers) asks
:func:`use_fused` whether to run it. The rule:

- ``kernels="reference"``: always the reference path;
- ``kernels="auto"``: the kernel, unless

  1. the inputs live on a device the kernel is not chosen for (its ``devices``: each kernel
     runs by default only where it was measured faster, or leaner at equal speed, than the
     reference composition; on a GPU the cost of a step is the number of operations the host
     issues, not their arithmetic, and the reference composition with fewer, larger
     operations wins: see the performance page),
  2. the code is being compiled (``torch.compile`` fuses the reference graph itself, and a
     custom autograd Function would be traced as an opaque call),
  3. autocast is on for the inputs' device and the kernel does not replay autocast's casts, or
  4. a second derivative may flow through the step (``needs_double_backward``: autograd
     records and the edge frames, i.e. the positions, require a gradient, as for
     conservative forces in training or stress through the strain) and the kernel does not
     pass ``gradgradcheck``.

The kernels and what they support:

====================================  ===============  ========  ==============
kernel                                double backward  autocast  devices (auto)
====================================  ===============  ========  ==============
:func:`edge_convolution`              no               no        cpu
:func:`grid_silu`                     yes              yes       cpu, cuda
:func:`scatter_sum`                   yes              yes       cpu, cuda
====================================  ===============  ========  ==============

The same rule decides two techniques that are not kernels of this table, by device as well:
recomputation in backward (:func:`use_recompute`: memory for time, on the CPU only, where the
recomputed work is cheap against the step) and inference in blocks of targets or rows
(:func:`use_target_blocks`, :func:`row_block_size`: small temporaries for the CPU's caches and
its allocator, without autograd and outside training; a GPU runs every edge at once).
"""

from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple

import torch

__all__ = ["KERNELS", "RECOMPUTE_DEVICES", "KernelInfo", "check_kernels", "choose_as", "needs_double_backward",
           "policy_device", "use_fused", "use_recompute"]

#: The values of the ``kernels`` option of the layers and of :class:`~so2nn.models.EquiformerV2Config`.
KERNELS = ("auto", "reference")


class KernelInfo(NamedTuple):
    """What a kernel supports besides the plain first derivative, and where it runs by default."""

    name: str
    double_backward: bool  # passes gradgradcheck
    autocast: bool  # may run under autocast (its docstring says in which dtype it computes)
    devices: tuple[str, ...] = ("cpu",)  # device types on which kernels="auto" runs it


_CHOSEN_AS = threading.local()


@contextlib.contextmanager
def choose_as(device_type: str):
    """Inside this context every choice of the policy is made as for tensors on ``device_type``.

    For measuring on one device what the policy runs on another: ``benchmarks/dispatch_count.py``
    counts on the CPU the operations a model dispatches on a GPU (``choose_as("cuda")``), and the
    tests check there that the GPU's path never waits for the host. Only the choices change: the
    tensors stay where they are, and the numbers are the same either way.

    Example:
        >>> from so2nn.kernels import EDGE_CONVOLUTION
        >>> with choose_as("cuda"):
        ...     use_fused("auto", EDGE_CONVOLUTION, device_type=policy_device(torch.zeros(1)),
        ...               double_backward=False)
        False
    """
    if not isinstance(device_type, str) or not device_type:
        raise ValueError(f"device_type must be a device type such as 'cuda' or 'cpu', got {device_type!r}")
    previous = getattr(_CHOSEN_AS, "device_type", None)
    _CHOSEN_AS.device_type = device_type
    try:
        yield
    finally:
        _CHOSEN_AS.device_type = previous


def policy_device(x: torch.Tensor) -> str:
    """The device type the policy chooses for ``x``: ``x.device.type``, or that of :func:`choose_as`."""
    return getattr(_CHOSEN_AS, "device_type", None) or x.device.type


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
        >>> use_fused("auto", EDGE_CONVOLUTION, device_type="cuda", double_backward=False)
        False
        >>> use_fused("auto", EDGE_CONVOLUTION, device_type="cpu", double_backward=True)
        False
        >>> use_fused("reference", EDGE_CONVOLUTION, device_type="cpu", double_backward=False)
        False
    """
    if kernels == "reference" or device_type not in kernel.devices or torch.compiler.is_compiling():
        return False
    if not kernel.autocast and torch.is_autocast_enabled(device_type):
        return False
    return not double_backward or kernel.double_backward


#: Device types on which a block's requested recomputation (``recompute=True``) runs.
RECOMPUTE_DEVICES = ("cpu",)


def use_recompute(requested: bool, *, double_backward: bool, device_type: str = "cpu") -> bool:
    """Whether a block recomputes its requested regions in backward: when autograd records,
    outside ``torch.compile``, when no second derivative flows through them, and on a device of
    :data:`RECOMPUTE_DEVICES` (on a GPU the recomputed operations cost more launch time than the
    memory they save is worth; ``checkpoint_activations`` is the memory switch there).

    Example:
        >>> with torch.enable_grad():
        ...     use_recompute(True, double_backward=False), use_recompute(True, double_backward=False,
        ...                                                                 device_type="cuda")
        (True, False)
    """
    return (requested and device_type in RECOMPUTE_DEVICES and torch.is_grad_enabled() and not double_backward
            and not torch.compiler.is_compiling())
