"""Exponential moving average of a model's weights (torch.optim.swa_utils.AveragedModel)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage(AveragedModel):
    r"""A copy of ``model`` whose parameters follow an exponential moving average.

    .. math::
        \bar\theta \leftarrow \beta\,\bar\theta + (1 - \beta)\,\theta,
        \qquad \beta = \min\!\Big(\text{decay}, \frac{1 + n}{10 + n}\Big)

    where :math:`n` counts the updates: the warm-up keeps the average from being dominated
    by the random initial weights early in training. Buffers are copied, not averaged.
    Evaluate with ``ema.module``; its ``state_dict`` loads into a model of the same config.

    A :class:`torch.optim.swa_utils.AveragedModel` with this warm-up as its ``multi_avg_fn``
    (``get_ema_multi_avg_fn`` has a fixed decay); the copy made at construction counts as the
    first average, so the first update already averages (the reference's EMA does the same).

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
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        super().__init__(model, multi_avg_fn=self._warmup_lerp, use_buffers=False)
        self.decay = decay
        self.module.eval().requires_grad_(False)
        self.n_averaged.fill_(1)  # the initial copy is the first average

    def _warmup_lerp(self, averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        # n_averaged - 1 updates so far; this is update n = n_averaged
        n = int(n_averaged)
        beta = min(self.decay, (1 + n) / (10 + n))
        torch._foreach_lerp_(averaged, current, 1.0 - beta)

    @property
    def num_updates(self) -> int:
        return int(self.n_averaged) - 1

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.update_parameters(model)
        for average, current in zip(self.module.buffers(), model.buffers()):
            average.copy_(current)

    def extra_repr(self) -> str:
        return f"decay={self.decay}"

    def state(self) -> dict:
        """Averaged weights and update count (for training checkpoints)."""
        return {"weights": self.module.state_dict(), "num_updates": self.num_updates}

    def load_state(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])
        self.n_averaged.fill_(int(state["num_updates"]) + 1)
