"""Import-only stand-in for torch_sparse in the reference environment.

fairchem-core 1.10.0's trainer and ASE calculator import every model in its registry, and a
few of them (DimeNet++, GemNet) import ``torch_sparse.SparseTensor`` at module level; torch_sparse
has no wheel for recent torch. EquiformerV2 never uses it, so this module only has to import:
any use of ``SparseTensor`` raises.
"""


class SparseTensor:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("torch_sparse is not installed in the reference environment "
                                  "(import-only stand-in; EquiformerV2 does not use it)")
