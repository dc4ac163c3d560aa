"""Learning-rate schedule: linear warm-up, then cosine decay."""

from __future__ import annotations

import math

__all__ = ["warmup_cosine"]


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, warmup_factor: float = 0.2,
                  min_factor: float = 0.01) -> float:
    r"""Multiplier of the base learning rate at ``step`` (for ``torch.optim.lr_scheduler.LambdaLR``).

    Linear from ``warmup_factor`` to 1 over ``warmup_steps``, then a cosine from 1 down to
    ``min_factor`` at ``total_steps`` (the EquiformerV2 recipe: factor 0.2, minimum 0.01):

    .. math::
        f(t) = f_{\min} + \tfrac12 (1 - f_{\min}) \Big(1 + \cos \pi\,\frac{t - t_w}{T - t_w}\Big),
        \qquad t \ge t_w

    Example:
        >>> warmup_cosine(0, 100, 10), warmup_cosine(10, 100, 10), warmup_cosine(100, 100, 10)
        (0.2, 1.0, 0.01)
    """
    if step < warmup_steps:
        return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_factor + 0.5 * (1.0 - min_factor) * (1.0 + math.cos(math.pi * progress))
