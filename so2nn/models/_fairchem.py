"""Import of checkpoints of the reference implementation (fairchem's EquiformerV2).

Reads the checkpoint format only: no fairchem import. Handles the model config stored in
the checkpoint, ``module.`` prefixes from DDP, EMA weights, the deprecated monolithic
class (``equiformer_v2``) and the backbone + heads variant (``backbone.``,
``output_heads.energy.``, ``output_heads.forces.``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ._config import EquiformerV2Config

__all__ = ["config_from_fairchem", "state_dict_from_fairchem", "load_fairchem_checkpoint"]

# Constants the reference stores as buffers (Wigner helpers, grids, index maps, radial
# centres); so2nn derives them, so they are dropped on import.
_BUFFER = re.compile(
    r"(^|\.)(SO3_rotation|mappingReduced|SO3_grid)\.|"
    r"\.(offset|expand_index|balance_degree_weight|to_grid_mat|from_grid_mat|mapping\.[^.]+)$"
)

# reference name -> so2nn name, applied in order
_RENAMES = [
    (r"^backbone\.", ""),
    (r"^output_heads\.energy\.", ""),
    (r"^output_heads\.forces\.", ""),
    (r"\.rad_func\.net\.", ".radial.net."),
    (r"\.so2_m_conv\.(\d+)\.fc\.", r".fc_m.\1."),
    (r"\.(source_embedding|target_embedding)\.weight$", r".atom_edge.\1.weight"),
    (r"\.(alpha_norm\.(weight|bias)|alpha_dot)$", r".attention.\1"),
    (r"\.grid_mlp\.", ".mlp."),
]

# config keys of the reference that have no effect on the numbers (or are handled elsewhere)
_IGNORED_CONFIG = {
    "name", "use_pbc", "use_pbc_single", "regress_forces", "otf_graph", "num_sphere_samples", "attn_activation",
    "ffn_activation", "weight_init", "num_atoms", "bond_feat_dim", "num_targets", "share_atom_edge_embedding",
    "use_m_share_rad", "use_s2_act_attn", "distance_function", "load_energy_lin_ref", "enforce_max_neighbors_strictly",
    "direct_forces", "num_distance_basis", "backbone", "heads", "pass_through_head_outputs", "model",
}


def _strip(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def config_from_fairchem(model_config: dict, **changes) -> EquiformerV2Config:
    """Translate the reference's model config (a checkpoint's ``config['model']``) to so2nn's."""
    cfg = dict(model_config)
    if isinstance(cfg.get("backbone"), dict):  # backbone + heads variant
        cfg = {**cfg["backbone"], **{k: v for k, v in cfg.items() if k not in ("backbone", "heads")}}
    lmax, mmax = cfg.pop("lmax_list", [6]), cfg.pop("mmax_list", [2])
    if len(lmax) != 1 or len(mmax) != 1:
        raise ValueError(f"only single-resolution models are supported, got lmax_list={lmax}, mmax_list={mmax}")
    for key in ("use_m_share_rad", "use_s2_act_attn", "share_atom_edge_embedding"):
        if cfg.get(key):
            raise ValueError(f"{key}=True is not supported (no released model uses it)")
    use_gate, use_sep = cfg.pop("use_gate_act", False), cfg.pop("use_sep_s2_act", True)
    activation = "gate" if use_gate else ("separable_s2" if use_sep else "s2")
    out = {"lmax": int(lmax[0]), "mmax": int(mmax[0]), "activation": activation}
    fields = set(EquiformerV2Config.__dataclass_fields__)
    unknown = []
    for key, value in cfg.items():
        if key in fields:
            if value is not None:
                out[key] = value
        elif key not in _IGNORED_CONFIG:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown keys in the reference model config: {sorted(unknown)}")
    # The reference hard-codes 600 Gaussians whatever num_distance_basis says.
    out["num_distance_basis"] = 600
    out.update(changes)
    return EquiformerV2Config(**out)


def state_dict_from_fairchem(state_dict: dict, ema: dict | None = None) -> dict[str, torch.Tensor]:
    """so2nn state_dict from the reference's (buffers dropped, names mapped).

    ``ema``: the reference's EMA state (``{"shadow_params": [...]}``, ordered as the model's
    parameters); when given, its values replace the raw weights.
    """
    keys = [_strip(k) for k in state_dict]
    values = list(state_dict.values())
    params = [(k, v) for k, v in zip(keys, values) if not _BUFFER.search(k)]
    if ema is not None:
        shadow = ema.get("shadow_params")
        if shadow is None or len(shadow) != len(params):
            raise ValueError(
                f"EMA state has {None if shadow is None else len(shadow)} shadow parameters, the model {len(params)}"
            )
        params = [(k, s) for (k, _), s in zip(params, shadow)]
    return {_rename(k): v for k, v in params}


def load_fairchem_checkpoint(checkpoint, use_ema: bool = True, **config_changes):
    """``(config, state_dict)`` from a reference checkpoint (path or loaded dict)."""
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        if not path.is_file():
            raise ValueError(f"checkpoint file not found: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # a truncated or foreign file
            raise ValueError(f"could not read checkpoint {path}: {error}") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a fairchem checkpoint: expected a dict with 'state_dict' (and 'config')")
    config = checkpoint.get("config", {})
    model_config = config.get("model") if isinstance(config.get("model"), dict) else config.get("model_attributes")
    if model_config is None:
        raise ValueError("the checkpoint has no model config ('config.model' or 'config.model_attributes')")
    ema = checkpoint.get("ema") if use_ema else None
    return config_from_fairchem(model_config, **config_changes), state_dict_from_fairchem(checkpoint["state_dict"], ema)
