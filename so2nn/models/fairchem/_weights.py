"""The weights of a fairchem checkpoint under so2nn's names."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from ._keys import strip_ddp
from ._stress import STRESS_RENAMES

if TYPE_CHECKING:
    from ._record import FairchemCheckpoint

__all__ = ["forces_of_weights", "state_dict_from_fairchem"]

# Constants the reference stores as buffers (Wigner helpers, grids, index maps, radial
# centres); so2nn derives them, so they are dropped on import.
_BUFFER = re.compile(
    r"(^|\.)(SO3_rotation|mappingReduced|SO3_grid)\.|"
    r"\.(offset|expand_index|balance_degree_weight|to_grid_mat|from_grid_mat|mapping\.[^.]+)$"
)

# reference name -> so2nn name, applied in order
_RENAMES = [
    (r"^backbone\.", ""),
    # DeNS: the backbone's encodings of forces and noise scale, the heads' inner names
    (r"^force_embedding\.", "denoising_embedding.force_embedding."),
    (r"^noise_schedule_sigma_embedding\.", "denoising_embedding.sigma_embedding."),
    (r"^output_heads\.energy\.scalar_block\.", "heads.energy.energy_block."),
    (r"^output_heads\.forces\.vector_block\.", "heads.forces.force_block."),
    # the heads: the monolithic model's blocks, or the backbone + heads variant's output_heads.<name>
    (r"^energy_block\.", "heads.energy.energy_block."),
    (r"^force_block\.", "heads.forces.force_block."),
    (r"^output_heads\.(energy|forces)\.", r"heads.\1."),
    # the rank-2 stress head (its own room: _stress)
    *STRESS_RENAMES,
    (r"\.rad_func\.net\.", ".radial.net."),
    (r"\.so2_m_conv\.(\d+)\.fc\.", r".fc_m.\1."),
    (r"\.(source_embedding|target_embedding)\.weight$", r".atom_edge.\1.weight"),
    (r"\.(alpha_norm\.(weight|bias)|alpha_dot)$", r".attention.\1"),
    (r"\.grid_mlp\.", ".mlp."),
]


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def state_dict_from_fairchem(state_dict: dict, ema: dict | None = None) -> dict[str, torch.Tensor]:
    """so2nn state_dict from the reference's (DDP's ``module.`` prefixes and buffers dropped, names
    mapped).

    ``ema``: the reference's EMA state (``{"shadow_params": [...]}``, ordered as the model's
    parameters); when given, its values replace the raw weights.
    """
    keys = [strip_ddp(k) for k in state_dict]
    values = list(state_dict.values())
    params = [(k, v) for k, v in zip(keys, values) if not _BUFFER.search(k)]
    if ema is not None:
        shadow = ema.get("shadow_params")
        if shadow is None or len(shadow) != len(params):
            raise ValueError(
                f"EMA state has {None if shadow is None else len(shadow)} shadow parameters, "
                f"the model {len(params)}"
            )
        params = [(k, s) for (k, _), s in zip(params, shadow)]
    return {_rename(k): v for k, v in params}


def forces_of_weights(checkpoint: FairchemCheckpoint) -> dict:
    """``regress_forces=True`` for a backbone + heads checkpoint whose ``heads`` config does not
    list the ``forces`` head that its weights (``output_heads.forces.*``) hold: the head is
    loaded, not dropped."""
    heads = checkpoint.model.heads
    if not isinstance(heads, dict) or "forces" in heads:
        return {}
    held = any(key.startswith("output_heads.forces.") for key in checkpoint.weights)
    return {"regress_forces": True} if held else {}
