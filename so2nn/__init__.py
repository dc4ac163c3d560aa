"""so2nn: SO(2)-convolution (eSCN-style) equivariant building blocks and a reference EquiformerV2."""

__version__ = "0.1.0"

from . import so3

__all__ = ["so3", "__version__"]
