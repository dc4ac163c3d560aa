"""The registry of model types, and the generic loader of checkpoints.

A checkpoint records the name its model's class is registered under (``model_type``); the
loader resolves that name here. The name is only ever looked up, never imported: a model type
is known to a process because code it ran registered it (so2nn registers its own models on
import; a user's model registers itself where it is defined).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ._checkpoint import load_checkpoint, upgrade_checkpoint

__all__ = ["build_model", "config_from_dict", "load_model", "load_weights", "model_class", "model_type", "register_model",
           "registered_models"]

_MODELS: dict[str, type] = {}


def register_model(name: str, cls: type) -> type:
    """Register the model class ``cls`` (an :class:`~so2nn.models.AtomisticModel` with a
    ``config_class``) under ``name``, the ``model_type`` its checkpoints record. Returns ``cls``.

    Registering the same class again is a no-op; another class under a taken name, or one class
    under two names, raises.

    Example:
        >>> from so2nn.models import EquiformerV2
        >>> register_model("equiformer_v2", EquiformerV2) is EquiformerV2   # done by so2nn itself
        True
        >>> model_class("equiformer_v2").__name__
        'EquiformerV2'
    """
    if not (isinstance(name, str) and name):
        raise ValueError(f"a model type name must be a non-empty string, got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"only torch.nn.Module classes can be registered, got {cls!r}")
    if not isinstance(getattr(cls, "config_class", None), type):
        raise TypeError(f"{cls.__name__} has no config_class: a registered model names its config dataclass")
    if _MODELS.get(name, cls) is not cls:
        raise ValueError(f"model type {name!r} is already registered for {_MODELS[name].__qualname__}")
    other = [n for n, c in _MODELS.items() if c is cls and n != name]
    if other:
        raise ValueError(f"{cls.__qualname__} is already registered as {other[0]!r}")
    _MODELS[name] = cls
    return cls


def registered_models() -> dict[str, type]:
    """The registered model types, by name (a copy)."""
    return dict(_MODELS)


def model_class(name: str) -> type:
    """The model class registered under ``name``; an unknown name raises, naming the known ones."""
    if name not in _MODELS:
        raise ValueError(
            f"unknown model type {name!r}: registered are {sorted(_MODELS)}. A model defined outside so2nn "
            "must be registered (so2nn.models.register_model) in this process before its checkpoints load"
        )
    return _MODELS[name]


def model_type(model) -> str:
    """The registered name of ``model``'s class (``model`` may be the class itself)."""
    cls = model if isinstance(model, type) else type(model)
    for name, registered in _MODELS.items():
        if registered is cls:
            return name
    raise ValueError(f"{cls.__qualname__} is not a registered model type: call so2nn.models.register_model first")


def build_model(config) -> nn.Module:
    """A model with fresh weights for ``config``, of the registered type whose ``config_class``
    is ``type(config)``.

    Example:
        >>> from so2nn.models import EquiformerV2Config
        >>> type(build_model(EquiformerV2Config(lmax=2, mmax=1, num_layers=1))).__name__
        'EquiformerV2'
    """
    matches = [cls for cls in _MODELS.values() if cls.config_class is type(config)]
    if len(matches) != 1:
        raise ValueError(
            f"{type(config).__qualname__} is the config of {len(matches)} registered model types "
            f"({[c.__qualname__ for c in matches]}): pass a model instead"
        )
    return matches[0].from_config(config)


def config_from_dict(cls: type, fields: dict):
    """``cls.config_class(**fields)``, or the config class's own ``from_dict(fields)`` where it
    has one (to read the older layouts of its fields); keys the config does not have raise a
    ValueError naming them."""
    import dataclasses

    if hasattr(cls.config_class, "from_dict"):
        return cls.config_class.from_dict(fields)
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"the checkpoint's config has keys {unknown} that {cls.config_class.__qualname__} does not know")
    return cls.config_class(**fields)


def load_weights(model: nn.Module, state_dict: dict) -> None:
    """Load ``state_dict`` into ``model`` exactly; unknown or missing keys and wrong shapes raise
    a ValueError naming them (never a partial load)."""
    own = model.state_dict()
    unknown = sorted(set(state_dict) - set(own))
    missing = sorted(set(own) - set(state_dict))
    if unknown or missing:
        raise ValueError(f"checkpoint does not match the model: unknown keys {unknown}, missing keys {missing}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items() if v.shape != own[k].shape]
    if bad:
        raise ValueError(f"checkpoint shapes do not match the model config: {bad}")
    model.load_state_dict(state_dict)


def load_model(checkpoint: str | os.PathLike | dict, use_ema: bool = True, *, trust: bool = False,
               dtype: torch.dtype | None = None, **config_changes) -> nn.Module:
    """The model of a checkpoint (path or loaded dict), of the type the checkpoint records.

    so2nn checkpoints (a model's ``save``, a trainer's ``model.pt`` or ``checkpoint.pt``) name
    their type; those written before types were recorded are EquiformerV2's. A checkpoint of
    the reference implementation (fairchem) is read by
    :meth:`~so2nn.models.EquiformerV2.from_fairchem`. EMA weights are used when present and
    ``use_ema``; ``config_changes`` override config entries (inference options such as
    ``grid_resolution``). A file is read as data only, never running code named in it;
    ``trust=True`` lifts that for a file whose origin you trust (see
    :func:`~so2nn.models._checkpoint.load_checkpoint`). ``dtype``: the model is built in it
    before the weights are copied in, so a float64 model gets the checkpoint's float64 values
    (an imported checkpoint's element references, say) rather than their float32 rounding.

    Example:
        >>> import tempfile
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> path = tempfile.mkdtemp() + "/model.pt"
        >>> EquiformerV2(EquiformerV2Config(lmax=2, mmax=1, num_layers=1)).save(path)
        >>> load_model(path, grid_resolution=12).config.grid_resolution
        12
    """
    checkpoint = load_checkpoint(checkpoint, trust=trust)
    if checkpoint.get("format") != "so2nn":
        # the reference's checkpoints hold one model family: EquiformerV2
        return model_class("equiformer_v2").from_fairchem(checkpoint, use_ema, dtype=dtype, **config_changes)
    checkpoint = upgrade_checkpoint(checkpoint)
    cls = model_class(checkpoint["model_type"])
    config = config_from_dict(cls, checkpoint["config"])
    if config_changes:
        config = config.replace(**config_changes)
    weights = checkpoint["ema"] if use_ema and checkpoint.get("ema") is not None else checkpoint["model"]
    model = cls.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    load_weights(model, weights)
    return model
