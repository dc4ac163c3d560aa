"""The math of so2nn: layouts, Wigner-D matrices, edge frames, harmonics and S2 grids.

No ``nn.Module`` state lives here; everything is a function or a small immutable object,
cached per (lmax, mmax, dtype, device) where it is worth it.
"""

from ._e3nn import from_e3nn, to_e3nn
from ._frames import edge_frames
from ._grid import S2Grid, default_grid_resolution, s2_grid
from ._harmonics import spherical_harmonics
from ._layout import CoefficientLayout
from ._rotation import EdgeRotation
from ._wigner import check_rotation, prepare_couplings, wigner_D, wigner_D_blocks

__all__ = [
    "CoefficientLayout",
    "EdgeRotation",
    "S2Grid",
    "check_rotation",
    "default_grid_resolution",
    "edge_frames",
    "from_e3nn",
    "prepare_couplings",
    "s2_grid",
    "spherical_harmonics",
    "to_e3nn",
    "wigner_D",
    "wigner_D_blocks",
]
