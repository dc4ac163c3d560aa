"""The model to evaluate: a model object or a checkpoint, on a device and in a dtype, in eval mode."""

from __future__ import annotations

import os

import torch
from torch import nn

from ._checkpoint import load_model
from ._protocol import AtomisticModel

__all__ = ["evaluation_model"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def evaluation_model(
    model: nn.Module | str | os.PathLike | dict,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    use_ema: bool = True,
    trust: bool = False,
    **config_changes,
) -> tuple[nn.Module, torch.device, torch.dtype]:
    """``(model, device, dtype)``: an so2nn model, or the model of a checkpoint (read by
    :func:`~so2nn.models.load_model`, built in ``dtype`` so that float64 values of an import stay
    float64), moved to ``device`` and ``dtype`` and put in eval mode. Defaults: where and in what
    dtype a given model's weights are; ``"cuda"`` when available (else ``"cpu"``) and float32 for
    a checkpoint. The calculator and the torch-sim model read their models this way."""
    if isinstance(model, nn.Module):
        if not isinstance(model, AtomisticModel):
            raise TypeError(f"{type(model).__name__} does not offer the so2nn model protocol (AtomisticModel)")
        if config_changes:
            raise ValueError(f"config changes {sorted(config_changes)} apply when loading a checkpoint; "
                             "for a model object, build it with them")
        weight = next(model.parameters())
        default_device, default_dtype = weight.device, weight.dtype
    elif isinstance(model, (str, os.PathLike, dict)):
        default_device = "cuda" if torch.cuda.is_available() else "cpu"
        default_dtype = torch.float32
        model = load_model(model, use_ema=use_ema, trust=trust,
                           dtype=_as_dtype(default_dtype if dtype is None else dtype), **config_changes)
    else:
        raise TypeError(f"model must be an so2nn model or a checkpoint path/dict, got {type(model).__name__}")
    device = torch.device(default_device if device is None else device)
    dtype = _as_dtype(default_dtype if dtype is None else dtype)
    return model.to(device=device, dtype=dtype).eval(), device, dtype
