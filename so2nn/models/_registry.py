"""The registries of model types and of checkpoint importers.

A checkpoint of so2nn's format records the name its model's class is registered under
(``model_type``); the loader resolves that name here. The name is only ever looked up, never
imported: a model type is known to a process because code it ran registered it (so2nn registers
its own models on import; a user's model registers itself where it is defined).

An importer reads one layout of checkpoint (so2nn's own format, fairchem's EquiformerV2
checkpoints): :func:`~so2nn.models.load_model` hands a checkpoint to the one importer that
recognises it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

__all__ = ["Importer", "build_model", "config_from_dict", "importer_of", "load_weights", "model_class",
           "model_type", "register_importer", "register_model", "registered_importers", "registered_models"]

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
        raise ValueError(f"the checkpoint's config has keys {unknown} that "
                         f"{cls.config_class.__qualname__} does not know")
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


class Importer(NamedTuple):
    """A reader of one layout of checkpoint (see :func:`register_importer`)."""

    #: ``recognises(checkpoint) -> bool``: whether a loaded checkpoint dict is in this layout.
    recognises: Callable[[dict], bool]
    #: ``load(checkpoint, use_ema, *, dtype, **config_changes) -> model``, called as
    #: :func:`~so2nn.models.load_model` is.
    load: Callable[..., nn.Module]


_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str, recognises: Callable[[dict], bool], load: Callable[..., nn.Module]) -> None:
    """Register the importer of a checkpoint layout under ``name``: ``recognises(checkpoint)`` tells
    whether a loaded checkpoint dict is in the layout, ``load(checkpoint, use_ema, *, dtype,
    **config_changes)`` builds its model (the arguments of :func:`~so2nn.models.load_model`).

    so2nn registers ``"so2nn"`` (its own format) and ``"fairchem"`` (fairchem's EquiformerV2
    checkpoints, :meth:`~so2nn.models.EquiformerV2.from_fairchem`). Registering the same
    functions again is a no-op; other functions under a taken name raise.

    Example:
        >>> sorted(registered_importers())
        ['fairchem', 'so2nn']
    """
    if not (isinstance(name, str) and name):
        raise ValueError(f"an importer name must be a non-empty string, got {name!r}")
    if not (callable(recognises) and callable(load)):
        raise TypeError(f"an importer is two functions, recognises and load; got {recognises!r} and {load!r}")
    importer = Importer(recognises, load)
    if _IMPORTERS.get(name, importer) != importer:
        raise ValueError(f"a checkpoint importer is already registered as {name!r}")
    _IMPORTERS[name] = importer


def registered_importers() -> dict[str, Importer]:
    """The registered checkpoint importers, by name (a copy)."""
    return dict(_IMPORTERS)


def importer_of(checkpoint: dict) -> Importer:
    """The importer that recognises a loaded checkpoint dict. None or more than one raises a
    ValueError naming the registered importers."""
    found = [name for name, importer in _IMPORTERS.items() if importer.recognises(checkpoint)]
    if len(found) > 1:
        raise ValueError(f"the checkpoint importers {found} all recognise the checkpoint: register importers "
                         "whose layouts do not overlap")
    if not found:
        keys = sorted(map(str, checkpoint))[:12]
        raise ValueError(
            f"no checkpoint importer recognises the checkpoint (keys {keys}; "
            f"registered: {sorted(_IMPORTERS)}): "
            "so2nn reads its own format (format='so2nn') and fairchem's (a 'state_dict' and its 'config'); "
            "another layout needs an importer (so2nn.models.register_importer)"
        )
    return _IMPORTERS[found[0]]
