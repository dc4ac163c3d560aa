"""``torch_scatter.utils.broadcast``, which one of fairchem's registered models (GemNet-GP)
imports at module level: the stand-in's own index broadcast, same argument order
(``broadcast(index, src, dim)`` expands ``index`` to the shape of ``src``)."""

from . import _broadcast as broadcast

__all__ = ["broadcast"]
