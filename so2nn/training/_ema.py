"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage(nn.Module):
    r"""A copy of ``model`` whose parameters follow an exponential moving average.

    .. math::
        \bar\theta \leftarrow \beta\,\bar\theta + (1 - \beta)\,\theta,
        \qquad \beta = \min\!\Big(\text{decay}, \frac{1 + n}{10 + n}\Big)

    where :math:`n` counts the updates: the warm-up keeps the average from being dominated
    by the random initial weights early in training. Buffers are copied, not averaged.
    Evaluate with ``ema.module``; its ``state_dict`` loads into a model of the same config.

    Args:
        model: the model being trained (unwrapped from DDP).
        decay: :math:`\beta` after warm-up; the EquiformerV2 paper uses 0.999.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> ema = ExponentialMovingAverage(model, decay=0.999)
        >>> ema.update(model)
        >>> ema.num_updates
        1
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        beta = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for average, current in zip(self.module.parameters(), model.parameters()):
            average.lerp_(current.detach(), 1.0 - beta)
        for average, current in zip(self.module.buffers(), model.buffers()):
            average.copy_(current)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"

    def state(self) -> dict:
        """Averaged weights and update count (for training checkpoints)."""
        return {"weights": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.num_updates = int(state["num_updates"])
