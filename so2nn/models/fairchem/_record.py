"""A fairchem checkpoint, read once into one record that every step of the import uses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checkpoint import load_checkpoint
from ._config import FairchemModelConfig, read_model_config
from ._keys import check_keys, strip_ddp

__all__ = ["FairchemCheckpoint", "is_fairchem_checkpoint", "read_fairchem_checkpoint"]


@dataclass(frozen=True)
class FairchemCheckpoint:
    """A fairchem checkpoint as so2nn reads it (:func:`read_fairchem_checkpoint`): the parts the
    import applies, each found once, every other key checked against
    :data:`~so2nn.models.FAIRCHEM_IGNORED_KEYS`.

    Attributes:
        model: the model config (:class:`FairchemModelConfig`).
        weights: the ``state_dict``, its names without DDP's ``module.`` prefixes, in stored order
            (the order of the EMA's ``shadow_params``).
        ema: the EMA state (``{"shadow_params": [...]}``), or None.
        outputs: the trainer's ``outputs`` config (None when the checkpoint has none).
        dataset: the training dataset's config (its ``train`` entry, or the first of a list).
        normalizers: the trainer's ``normalizers`` (``Normalizer`` states by target).
        elementrefs: the trainer's ``elementrefs`` (``LinearReferences`` states by target).
    """

    model: FairchemModelConfig
    weights: dict[str, torch.Tensor]
    ema: dict | None
    outputs: dict | None
    dataset: dict
    normalizers: dict
    elementrefs: dict


def is_fairchem_checkpoint(checkpoint: dict) -> bool:
    """Whether a loaded checkpoint dict is in fairchem's layout (a ``state_dict``, and not so2nn's
    own ``format``): the checkpoints :func:`~so2nn.models.load_model` hands to
    :meth:`~so2nn.models.EquiformerV2.from_fairchem`."""
    return isinstance(checkpoint, dict) and "state_dict" in checkpoint and "format" not in checkpoint


def read_fairchem_checkpoint(checkpoint, *, trust: bool = False) -> FairchemCheckpoint:
    """Read a fairchem checkpoint (path or loaded dict) into a :class:`FairchemCheckpoint`.

    ``trust``: as for :func:`~so2nn.models._checkpoint.load_checkpoint` (a file is read as data
    only unless it is True).

    Raises:
        ValueError: not a fairchem checkpoint; a key (of the checkpoint, its config, its
            training dataset config) that so2nn neither applies nor ignores as training-only;
            no model config; a model that so2nn's EquiformerV2 is not.
    """
    checkpoint = load_checkpoint(checkpoint, trust=trust)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a fairchem checkpoint: expected a dict with 'state_dict' (and 'config')")
    config = checkpoint.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"the checkpoint's 'config' is a {type(config).__name__}, not a dict")
    dataset = _dataset_config(config)
    check_keys(checkpoint, config, dataset)
    model_config = config.get("model")
    if not isinstance(model_config, dict):  # older configs
        model_config = config.get("model_attributes")
    if not isinstance(model_config, dict):
        raise ValueError("the checkpoint has no model config ('config.model' or 'config.model_attributes')")
    return FairchemCheckpoint(
        model=read_model_config(model_config),
        weights={strip_ddp(key): value for key, value in checkpoint["state_dict"].items()},
        ema=checkpoint.get("ema"),
        outputs=config.get("outputs"),
        dataset=dataset,
        normalizers=_dict_entry(checkpoint, "normalizers"),
        elementrefs=_dict_entry(checkpoint, "elementrefs"),
    )


def _dict_entry(checkpoint: dict, key: str) -> dict:
    value = checkpoint.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"the checkpoint's {key!r} is a {type(value).__name__}, not a dict")
    return value


def _dataset_config(config: dict) -> dict:
    """The training dataset's config (``config.dataset``, its ``train`` entry, or the first of a list)."""
    dataset = config.get("dataset") or {}
    if isinstance(dataset, list) and dataset and isinstance(dataset[0], dict):  # older configs: [train, val]
        dataset = dataset[0]
    if isinstance(dataset, dict) and any(k in dataset for k in ("train", "val", "test", "relax")):  # YAML
        dataset = dataset.get("train") or {}
    return dataset if isinstance(dataset, dict) else {}
