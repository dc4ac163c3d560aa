"""Regularisation that keeps equivariance: dropout of whole channels and drop-path of whole graphs."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EquivariantDropout", "GraphDropPath"]


def _check_probability(p: float) -> float:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop probability must be in [0, 1), got {p}")
    return float(p)


class EquivariantDropout(nn.Module):
    r"""Dropout of whole channels: one Bernoulli mask per (node, channel), shared by all
    coefficients of that channel, so a kept channel rotates as before.

    .. math:: y_{nkc} = \frac{b_{nc}}{1 - p}\, x_{nkc}, \qquad b_{nc} \sim \mathrm{Bernoulli}(1 - p)

    ``x: [N, K, C] -> [N, K, C]``; the identity in eval mode.

    Example:
        >>> dropout = EquivariantDropout(p=0.5)
        >>> y = dropout(torch.ones(2, 9, 3))                  # training mode
        >>> bool(((y == 0).all(dim=1) | (y == 2).all(dim=1)).all())   # whole channels kept or dropped
        True
        >>> torch.equal(dropout.eval()(torch.ones(2, 9, 3)), torch.ones(2, 9, 3))
        True
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = _check_probability(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.bernoulli(x.new_full((x.shape[0], 1, x.shape[2]), 1 - self.p))
        return x * keep / (1 - self.p)


class GraphDropPath(nn.Module):
    r"""Stochastic depth per graph: the residual branch of a whole system is dropped with
    probability ``p`` (and kept ones scaled by :math:`1/(1-p)`).

    ``x: [N, ...]``, ``batch: [N]`` system of each node; the identity in eval mode.

    Example:
        >>> drop_path = GraphDropPath(p=0.5)
        >>> batch = torch.tensor([0, 0, 1, 1, 1])               # two systems
        >>> y = drop_path(torch.ones(5, 9, 4), batch)
        >>> all(len(set(y[batch == b].flatten().tolist())) == 1 for b in (0, 1))   # each all 0 or all 2
        True
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = _check_probability(p)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_graphs: int | None = None) -> torch.Tensor:
        """``num_graphs``: the number of systems, when the caller knows it (otherwise it is
        counted from ``batch``, which waits for the device on a GPU)."""
        if not self.training or self.p == 0.0:
            return x
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        keep = torch.bernoulli(x.new_full((num_graphs,), 1 - self.p)) / (1 - self.p)
        return x * keep.index_select(0, batch).view(-1, *([1] * (x.dim() - 1)))
