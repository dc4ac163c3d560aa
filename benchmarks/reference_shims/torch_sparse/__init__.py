"""An import-only stand-in for ``torch_sparse``, for the reference implementation only.

fairchem-core 1.10.0's trainer registers every model it ships, and some of them (GemNet,
DimeNet++) import ``torch_sparse.SparseTensor`` at module level; ``torch_sparse`` has no wheel
for recent torch releases. EquiformerV2 never uses it, so the reference's trainer and ASE
calculator (``OCPCalculator``) import with this module in its place; building a
``SparseTensor`` raises, so a model that needs the real package fails loudly, never silently.
so2nn itself never imports it.
"""

from __future__ import annotations

__all__ = ["SparseTensor"]
__version__ = "0.0+so2nn.shim"


class SparseTensor:
    """Raises on use: the real ``torch_sparse`` is needed by the model that builds one."""

    def __init__(self, *args, **kwargs) -> None:
        raise NotImplementedError("torch_sparse is a stand-in here (benchmarks/reference_shims): "
                                  "install the real torch_sparse for models that use SparseTensor")
