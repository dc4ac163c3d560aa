"""The import of a fairchem checkpoint: one record read, then so2nn's config and weights made
from it."""

from __future__ import annotations

import torch

from .._config import EquiformerV2Config
from ._config import equiformer_v2_config
from ._heads import check_heads, check_outputs
from ._record import read_fairchem_checkpoint
from ._targets import (
    check_gradient_forces,
    element_references_from_fairchem,
    fit_references,
    normalizers_from_fairchem,
)
from ._weights import forces_of_weights, state_dict_from_fairchem

__all__ = ["load_fairchem_checkpoint"]


def load_fairchem_checkpoint(checkpoint, use_ema: bool = True, trust: bool = False,
                             **config_changes) -> tuple[EquiformerV2Config, dict[str, torch.Tensor]]:
    """``(config, state_dict)`` from a reference checkpoint (path or loaded dict).

    Everything the reference's trainer applies at prediction becomes part of the so2nn model:
    the normalisers (:func:`normalizers_from_fairchem`), the element references and OC22's
    ``energy_lin_ref`` (:func:`element_references_from_fairchem`), the scalar head's ``reduce``.

    ``trust``: passed to :func:`~so2nn.models._checkpoint.load_checkpoint` (a file is read as
    data only unless it is True). ``config_changes`` override so2nn config fields, except
    ``use_energy_lin_ref``, which overrides the reference's own flag: ``False`` leaves OC22's
    ``energy_lin_ref`` out (the energy less its linear composition fit), ``True`` adds it where
    the reference would not (a backbone + heads model, whose heads never add it).

    Raises:
        ValueError: not a fairchem checkpoint; or a key (of the checkpoint, its config, the
            model or training-dataset config) that so2nn neither applies nor ignores as
            training-only (:data:`~so2nn.models.FAIRCHEM_IGNORED_KEYS`); or target transforms
            whose values the checkpoint does not hold; or output heads so2nn does not compute.
    """
    record = read_fairchem_checkpoint(checkpoint, trust=trust)
    changes = check_heads(record)
    check_outputs(record)
    state_dict = state_dict_from_fairchem(record.weights, record.ema if use_ema else None)
    override = config_changes.pop("use_energy_lin_ref", None)
    normalizers = normalizers_from_fairchem(record)
    if not config_changes.get("direct_forces", record.model.backbone.get("direct_forces", True)):
        check_gradient_forces(normalizers)
    changes.update(forces_of_weights(record))
    energy_std = normalizers.get("energy", (0.0, 1.0))[1]
    references = element_references_from_fairchem(record, state_dict.pop("energy_lin_ref", None), override,
                                                  energy_std=energy_std)
    changes["use_energy_lin_ref"] = references is not None
    config = equiformer_v2_config(record.model, normalizers, {**changes, **config_changes})
    if references is not None:
        state_dict["energy_lin_ref"] = fit_references(references, config.max_num_elements)
    return config, state_dict
