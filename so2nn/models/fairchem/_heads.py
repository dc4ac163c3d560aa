"""The output heads of a fairchem checkpoint, and the trainer's ``outputs``: raise unless so2nn
computes each as the reference does."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ._keys import DENS_TRAINING_ONLY
from ._stress import check_stress_outputs

if TYPE_CHECKING:
    from ._record import FairchemCheckpoint

__all__ = ["check_heads", "check_outputs"]

# The heads of the backbone + heads layout that so2nn's EquiformerV2 is: a head name, the
# registered module names fairchem has given that head, and its options with the values that
# so2nn reproduces (the first is the reference's default).
_KNOWN_HEADS = {
    "energy": ({"equiformer_v2_energy_head", "equiformerV2_scalar_head", "eqV2_DeNS_scalar_head"},
               {"reduce": ("sum", "mean"), "output_name": ("energy",)}),
    "forces": ({"equiformer_v2_force_head", "equiformerV2_vector_head", "equiformerV2_rank1_head",
                "eqV2_DeNS_vector_head"}, {"output_name": ("forces",)}),
    # options mapped onto the config by stress_config_from_fairchem (None: not a fixed set)
    "stress": ({"rank2_symmetric_head", "dens_rank2_symmetric_head"}, None),
}
# the DeNS heads (and the options of theirs that only act in training with denoising)
_DENS_HEADS = {"eqV2_DeNS_scalar_head", "eqV2_DeNS_vector_head", "dens_rank2_symmetric_head"}


def check_heads(checkpoint: FairchemCheckpoint) -> dict:
    """Raise unless every output head (config ``heads`` and ``output_heads.<name>.`` weights) is
    one so2nn computes: a head it does not know would be dropped and its output missing, or
    worse, another head's numbers returned in its place. Returns the config changes of the
    heads' options (``energy_reduce``)."""
    problems, changes = [], {}
    heads = checkpoint.model.heads
    if heads is not None:
        if not isinstance(heads, dict):
            raise ValueError(f"the checkpoint's model config has 'heads' of type {type(heads).__name__}, "
                             "not a dict")
        for name, head in heads.items():
            modules, options = _KNOWN_HEADS.get(name, (set(), {}))
            head = head if isinstance(head, dict) else {}
            module = head.get("module")
            if module not in modules:
                problems.append(f"head '{name}' (module {module!r})")
                continue
            if options is None:  # checked where they are mapped
                continue
            training_only = DENS_TRAINING_ONLY["heads"] if module in _DENS_HEADS else set()
            extra = {k: v for k, v in head.items()
                     if k != "module" and k not in training_only and v not in options.get(k, ())}
            if extra:
                problems.append(f"head '{name}' with options {extra}")
            elif name == "energy":
                changes["energy_reduce"] = head.get("reduce", "sum")
    weight_heads = sorted({m.group(1) for key in checkpoint.weights
                           if (m := re.match(r"^output_heads\.([^.]+)\.", key))})
    problems += [f"weights of head '{name}' (output_heads.{name}.*)" for name in weight_heads
                 if name not in _KNOWN_HEADS and (heads is None or name not in heads)]
    if problems:
        raise ValueError(
            f"the checkpoint has output heads so2nn does not compute: {'; '.join(problems)} "
            f"(known: 'energy' {sorted(_KNOWN_HEADS['energy'][0])} with reduce 'sum' or 'mean', "
            f"'forces' {sorted(_KNOWN_HEADS['forces'][0])}, 'stress' {sorted(_KNOWN_HEADS['stress'][0])})"
        )
    return changes


# The entries of the config's ``outputs`` so2nn checks, with the values it reproduces: each
# output's options (``None``: any value; these only concern training or saved predictions).
# A stress output (and its decomposition targets) gets an entry where the model has a stress head.
_OUTPUTS = {
    "energy": {"level": ("system",), "property": ("energy",), "shape": (1,), "irrep_dim": (0,),
               "prediction_dtype": None},
    "forces": {"level": ("atom",), "property": ("forces",), "shape": (3,), "irrep_dim": (1,),
               "train_on_free_atoms": None, "eval_on_free_atoms": None, "prediction_dtype": None},
}


def check_outputs(checkpoint: FairchemCheckpoint) -> None:
    """Raise unless every entry of the config's ``outputs`` is one so2nn returns, as it returns it
    (``stress``, where the model has a stress head, as :func:`check_stress_outputs` says)."""
    outputs, model_config = checkpoint.outputs, checkpoint.model.config
    if outputs is None:
        return
    if not isinstance(outputs, dict):
        raise ValueError(f"the checkpoint's config has 'outputs' of type {type(outputs).__name__}, "
                         "not a dict")
    problems = []
    heads = model_config.get("heads") if isinstance(model_config.get("heads"), dict) else {}
    for name, entry in outputs.items():
        if name == "stress" and isinstance(heads.get("stress"), dict):
            continue
        if name not in _OUTPUTS:
            problems.append(f"output '{name}' (so2nn returns {sorted(_OUTPUTS)})")
            continue
        for key, value in (entry or {}).items():
            allowed = _OUTPUTS[name].get(key, ())
            if allowed is not None and value not in allowed:
                problems.append(f"outputs['{name}']['{key}'] = {value!r}")
    if problems:
        raise ValueError(f"the checkpoint's outputs are not what so2nn returns: {'; '.join(problems)}")
    check_stress_outputs(outputs, model_config)
