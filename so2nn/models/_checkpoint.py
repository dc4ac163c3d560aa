"""so2nn's checkpoint format, read and written atomically.

A checkpoint is a dict with ``format="so2nn"``, ``version``, ``model_type`` (the name the
model's class is registered under, see :func:`~so2nn.models.register_model`), ``config`` (the
model config as a dict), ``model`` (a state_dict) and optionally ``ema`` (the EMA weights as a
state_dict) plus whatever a trainer adds (optimiser, scheduler, step, RNG states).

Version 1 (before models recorded their type) was written by EquiformerV2 only, with its head
weights at ``energy_block.*`` / ``force_block.*``: :func:`upgrade_checkpoint` reads it as
version 2 (type ``"equiformer_v2"``, heads under ``heads.energy.*`` / ``heads.forces.*``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._files import atomic_write

__all__ = ["FORMAT_VERSION", "atomic_save", "load_checkpoint", "model_checkpoint", "upgrade_checkpoint"]

FORMAT_VERSION = 2

# Version 1's EquiformerV2 head weights -> their module in version 2.
_V1_HEAD_PREFIXES = (("energy_block.", "heads.energy.energy_block."), ("force_block.", "heads.forces.force_block."))


def model_checkpoint(model, ema_state_dict: dict | None = None, **extra) -> dict:
    """The checkpoint dict of ``model`` (type, config, weights), with optional EMA weights and extras."""
    from ._registry import model_type

    return {
        "format": "so2nn",
        "version": FORMAT_VERSION,
        "model_type": model_type(model),
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "ema": ema_state_dict,
        **extra,
    }


def _v1_keys(state_dict: dict) -> dict:
    def rename(key: str) -> str:
        for old, new in _V1_HEAD_PREFIXES:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    return {rename(k): v for k, v in state_dict.items()}


def upgrade_checkpoint(checkpoint: dict) -> dict:
    """An so2nn checkpoint dict in the current format (a new dict; the input is not changed).

    A version-1 checkpoint becomes an ``"equiformer_v2"`` one with its head weights renamed,
    in ``model``, ``ema`` and a training checkpoint's ``ema_state``; a version newer than this
    code raises.
    """
    version = checkpoint.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"so2nn checkpoint version {version!r} is newer than this so2nn reads ({FORMAT_VERSION})")
    if version == FORMAT_VERSION:
        return checkpoint
    upgraded = {**checkpoint, "version": FORMAT_VERSION, "model_type": "equiformer_v2",
                "model": _v1_keys(checkpoint["model"])}
    if checkpoint.get("ema") is not None:
        upgraded["ema"] = _v1_keys(checkpoint["ema"])
    if isinstance(checkpoint.get("ema_state"), dict):
        upgraded["ema_state"] = {**checkpoint["ema_state"], "weights": _v1_keys(checkpoint["ema_state"]["weights"])}
    return upgraded


def atomic_save(obj, path) -> None:
    """``torch.save`` through :func:`~so2nn._files.atomic_write`: a crash mid-write leaves the
    previous file intact, never a truncated one."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


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
