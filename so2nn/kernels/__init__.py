r"""Fast paths of the layers, behind one policy.

Each kernel computes the same numbers as a composition of public layers (its *reference*,
named in its docstring) with less memory or time; :func:`use_fused` decides, by one rule,
when a layer or block runs it (the rule and the table of kernels are in
:mod:`so2nn.kernels._policy` and on the architecture page of the docs). Kernels take
explicit tensors (node features, edge index, rotation matrices, weights), never a module.
"""

from ._edge_convolution import (
    EDGE_CONVOLUTION,
    SO2Weights,
    atom_edge_linear,
    edge_convolution,
    so2_linear,
)
from ._grid_silu import GRID_SILU, grid_silu
from ._policy import (
    KERNELS,
    RECOMPUTE_DEVICES,
    KernelInfo,
    check_kernels,
    choose_as,
    needs_double_backward,
    policy_device,
    use_fused,
    use_recompute,
)
from ._scatter import SCATTER_SUM, scatter_sum
from ._target_blocks import (
    BLOCK_ELEMENTS,
    TARGET_BLOCK_EDGES,
    Edges,
    in_target_blocks,
    row_block_size,
    target_blocks,
    use_target_blocks,
)

__all__ = [
    "BLOCK_ELEMENTS",
    "EDGE_CONVOLUTION",
    "GRID_SILU",
    "KERNELS",
    "RECOMPUTE_DEVICES",
    "SCATTER_SUM",
    "SO2Weights",
    "TARGET_BLOCK_EDGES",
    "Edges",
    "KernelInfo",
    "atom_edge_linear",
    "check_kernels",
    "choose_as",
    "edge_convolution",
    "grid_silu",
    "in_target_blocks",
    "needs_double_backward",
    "policy_device",
    "row_block_size",
    "scatter_sum",
    "so2_linear",
    "target_blocks",
    "use_fused",
    "use_recompute",
    "use_target_blocks",
]
