"""so2nn's checkpoint format, read and written atomically.

A checkpoint is a dict with ``format="so2nn"``, ``version``, ``config`` (the model config as a
dict), ``model`` (a state_dict) and optionally ``ema`` (the EMA weights as a state_dict) plus
whatever a trainer adds (optimiser, scheduler, step, RNG states).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["FORMAT_VERSION", "atomic_save", "load_checkpoint", "model_checkpoint"]

FORMAT_VERSION = 1


def model_checkpoint(model, ema_state_dict: dict | None = None, **extra) -> dict:
    """The checkpoint dict of ``model`` (config + weights), with optional EMA weights and extras."""
    return {
        "format": "so2nn",
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "ema": ema_state_dict,
        **extra,
    }


def atomic_save(obj, path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``:
    a crash mid-write leaves the previous file intact, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(checkpoint, map_location="cpu") -> dict:
    """A loaded checkpoint dict from a path (or the dict itself), with a clear error for a
    missing, truncated or foreign file."""
    if isinstance(checkpoint, dict):
        return checkpoint
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint file not found: {path}")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # truncated, corrupt or not a torch file
        raise ValueError(f"could not read checkpoint {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ValueError(f"checkpoint {path} holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded
