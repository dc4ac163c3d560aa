r"""``torch.compile`` for so2nn models: one graph, dynamic shapes, no recompilation per batch.

A model whose forward never waits for the host (a precomputed graph, ``natoms`` and
``validate=False``: see :class:`~so2nn.models.EquiformerV2`) compiles into one graph with
symbolic numbers of atoms, edges and systems. Two of PyTorch's defaults stand in the way, and
:func:`compile_model` changes them (process-wide, as they are global settings):

- *duck sizing* gives input dimensions of equal size one symbol: a first batch of 2 or 3
  systems would share its size with the 2 rows of ``edge_index`` or the 3 columns of ``pos``
  and be fixed to it, so that every other batch size recompiles
  (``torch.fx.experimental._config.use_duck_shape = False``);
- a conservative model (forces :math:`-\partial E/\partial r`, stress through the strain) calls
  :func:`torch.autograd.grad` inside its forward, which Dynamo traces only with
  ``torch._dynamo.config.trace_autograd_ops = True`` (torch versions without that setting
  split the graph there).

To train a conservative model compiled, give it positions that already require a gradient
(``pos.requires_grad_()`` before the call): a leaf made inside the compiled region cannot carry
the gradient of its outputs to the weights. so2nn's trainer does.

The first call of each new kind of input (eval or training, direct or gradient forces)
compiles, which takes tens of seconds; inductor's caches keep the result on disk for the next
process (the performance page says how).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["compile_model", "configure_compile"]


def configure_compile() -> None:
    """Set the two process-wide options that so2nn's compiled models need (module docstring)."""
    import torch._dynamo.config
    import torch.fx.experimental._config

    torch.fx.experimental._config.use_duck_shape = False
    if hasattr(torch._dynamo.config, "trace_autograd_ops"):
        torch._dynamo.config.trace_autograd_ops = True


def compile_model(model: nn.Module, *, dynamic: bool | None = True, fullgraph: bool = True, **options) -> nn.Module:
    """``torch.compile(model, dynamic=dynamic, fullgraph=fullgraph, **options)`` after
    :func:`configure_compile`.

    ``options`` go to :func:`torch.compile` (``mode="reduce-overhead"`` for CUDA graphs,
    ``backend="aot_eager"`` for a quick check on the CPU, ...). The result is the usual
    ``OptimizedModule``: save the original ``model`` (its ``state_dict`` has no ``_orig_mod.``
    prefixes), call the result with a precomputed graph, ``natoms`` and ``validate=False``.

    Example:
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> model = EquiformerV2(EquiformerV2Config(lmax=2, mmax=1, num_layers=1, sphere_channels=8,
        ...     attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4, attn_value_channels=4,
        ...     ffn_hidden_channels=8, edge_channels=8, num_distance_basis=16))
        >>> compiled = compile_model(model, backend="aot_eager")
        >>> type(compiled).__name__
        'OptimizedModule'
    """
    configure_compile()
    return torch.compile(model, dynamic=dynamic, fullgraph=fullgraph, **options)
