"""``torch_scatter.utils.broadcast`` for the stand-in (fairchem's GemNet-GP imports it at module
level; EquiformerV2 does not use it): ``src`` expanded to the shape of ``other`` along ``dim``."""

from __future__ import annotations

import torch


def broadcast(src: torch.Tensor, other: torch.Tensor, dim: int) -> torch.Tensor:
    if dim < 0:
        dim = other.dim() + dim
    if src.dim() == 1:
        for _ in range(dim):
            src = src.unsqueeze(0)
    for _ in range(src.dim(), other.dim()):
        src = src.unsqueeze(-1)
    return src.expand(other.size())
