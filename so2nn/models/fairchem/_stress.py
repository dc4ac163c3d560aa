"""The rank-2 stress head of a fairchem checkpoint: its weights' names, its options, the trainer's
normalisers of the stress targets, and the trainer's ``outputs.stress`` that says how the head's
parts make the stress."""

from __future__ import annotations

__all__ = ["STRESS_RENAMES", "STRESS_TARGETS", "check_stress_outputs", "stress_config_from_fairchem"]

# The rank-2 stress head's weights, output_heads.stress.{sphharm_norm, xedge_layer_norm, block.*_MLP}:
# reference name -> so2nn name, applied in order (among the other weights' renames)
STRESS_RENAMES = [
    (r"^output_heads\.stress\.", "heads.stress."),
    (r"^heads\.stress\.sphharm_norm\.", "heads.stress.harmonics_norm."),
    (r"^heads\.stress\.xedge_layer_norm\.", "heads.stress.edge_norm."),
    (r"^heads\.stress\.block\.scalar_MLP\.", "heads.stress.isotropic_mlp."),
    (r"^heads\.stress\.block\.irrep2_MLP\.", "heads.stress.anisotropic_mlp."),
    (r"^heads\.stress\.block\.r2tensor_MLP\.", "heads.stress.tensor_mlp."),
]

# rank2_symmetric_head option -> so2nn config field
_STRESS_OPTIONS = {
    "edge_level_mlp": "stress_edge_level_mlp",
    "num_mlp_layers": "stress_num_mlp_layers",
    "use_source_target_embedding": "stress_source_target_embedding",
    "extensive": "stress_extensive",
    "avg_num_nodes": "stress_avg_num_nodes",
}
# Options without effect on the numbers: the head's norm is the backbone's ``norm_type`` whenever
# the backbone has one (EquiformerV2's always does), and the DeNS head's ``use_denoising`` only
# zeroes its output in denoising training steps.
_STRESS_IGNORED = {"module", "default_norm_type", "use_denoising"}
# keys of the trainer's ``outputs.stress`` (and of its decomposition entries, where the trainer
# adds ``parent``, ``level`` and the free-atom flags before it saves the config) that do not
# change the predicted stress (loss bookkeeping, the precision of saved prediction files;
# ``property`` only names the entry of a head's output dict)
_STRESS_OUTPUT_KEYS = {"level", "irrep_dim", "decomposition", "train_on_free_atoms", "eval_on_free_atoms",
                       "prediction_dtype", "shape", "property", "parent"}
_STRESS_PARTS = {"stress_isotropic": 0, "stress_anisotropic": 2}


# the normalised stress targets of the reference's trainer -> the so2nn config fields of (mean, std)
_STATISTICS = {
    "stress_isotropic": ("stress_isotropic_mean", "stress_isotropic_std"),
    "stress_anisotropic": ("stress_anisotropic_mean", "stress_anisotropic_std"),
    "stress": ("stress_mean", "stress_std"),
}
#: The stress targets whose normalisers the reference's trainer applies at prediction.
STRESS_TARGETS = tuple(_STATISTICS)


def stress_config_from_fairchem(head: dict | None, normalizers: dict | None = None) -> dict:
    """so2nn config fields (``stress_head``, ``stress_*``) from the reference's
    ``rank2_symmetric_head`` (or ``dens_rank2_symmetric_head``) entry of ``heads`` (None: the
    model has no stress head) and the trainer's normalisers of the stress targets
    (``normalizers``: ``{target: (mean, std)}``, any other targets left out).

    Every config field of the stress that a fairchem checkpoint sets is set here.

    Raises:
        ValueError: an option so2nn does not know, ``output_name`` other than ``"stress"``, or
            ``use_denoising`` on the plain (non-DeNS) head.

    Example:
        >>> stress_config_from_fairchem({"module": "rank2_symmetric_head", "decompose": True},
        ...                             {"stress_isotropic": (0.5, 2.0), "energy": (0.0, 1.0)})
        {'stress_head': 'decomposed', 'stress_isotropic_mean': 0.5, 'stress_isotropic_std': 2.0}
    """
    out = {}
    for target, (mean, std) in (normalizers or {}).items():
        if target in _STATISTICS:
            mean_field, std_field = _STATISTICS[target]
            out[mean_field], out[std_field] = mean, std
    if head is None:
        return out
    unknown = sorted(set(head) - set(_STRESS_OPTIONS) - _STRESS_IGNORED - {"decompose", "output_name"})
    if unknown:
        raise ValueError(f"unknown options of the stress head (rank2_symmetric_head): {unknown}")
    if "use_denoising" in head and head.get("module") != "dens_rank2_symmetric_head":
        raise ValueError("the stress head option 'use_denoising' belongs to dens_rank2_symmetric_head, "
                         f"not {head.get('module')!r}")
    if head.get("output_name", "stress") != "stress":
        raise ValueError(f"the stress head predicts output_name={head['output_name']!r}: so2nn's rank-2 head "
                         "returns 'stress' only")
    out = {"stress_head": "decomposed" if head.get("decompose", False) else "rank2", **out}
    out.update({field: head[option] for option, field in _STRESS_OPTIONS.items() if option in head})
    if "stress_avg_num_nodes" in out:
        out["stress_avg_num_nodes"] = float(out["stress_avg_num_nodes"])
    return out


def check_stress_outputs(outputs, model_config: dict) -> None:
    """Raise unless the trainer's ``outputs.stress`` is rebuilt the way so2nn's stress head
    rebuilds it: from ``stress_isotropic`` (``irrep_dim`` 0) and ``stress_anisotropic``
    (``irrep_dim`` 2) for the decomposed head, as the head's own output for the plain one."""
    heads = model_config.get("heads") if isinstance(model_config.get("heads"), dict) else {}
    if not isinstance(outputs, dict) or "stress" not in outputs or not isinstance(heads.get("stress"), dict):
        return
    entry = outputs["stress"]
    if not isinstance(entry, dict):
        raise ValueError(f"the checkpoint's outputs['stress'] is a {type(entry).__name__}, not a dict")
    unknown = sorted(set(entry) - _STRESS_OUTPUT_KEYS)
    if unknown:
        raise ValueError(f"unknown keys in the checkpoint's outputs['stress']: {unknown}")
    if entry.get("level", "system") != "system":
        raise ValueError(f"outputs['stress'] has level={entry['level']!r}: so2nn's stress is per system")
    decomposition = entry.get("decomposition")
    if not heads["stress"].get("decompose", False):
        if decomposition is not None:
            raise ValueError("outputs['stress'] has a decomposition but the stress head is the plain rank-2 "
                             "block (decompose=False), which predicts the whole tensor")
        return
    if not isinstance(decomposition, dict) or set(decomposition) != set(_STRESS_PARTS):
        found = sorted(decomposition) if isinstance(decomposition, dict) else decomposition
        raise ValueError(f"outputs['stress'] must be decomposed into {sorted(_STRESS_PARTS)} for the "
                         f"decomposed stress head, got decomposition={found}")
    for name, dim in _STRESS_PARTS.items():
        part = decomposition[name] if isinstance(decomposition[name], dict) else {}
        unknown = sorted(set(part) - _STRESS_OUTPUT_KEYS)
        if unknown:
            raise ValueError(f"unknown keys in outputs['stress']['decomposition']['{name}']: {unknown}")
        if part.get("parent", "stress") != "stress" or part.get("level", "system") != "system":
            raise ValueError(f"outputs['stress']['decomposition']['{name}'] must be a per-system part of "
                             f"'stress', got parent={part.get('parent')!r}, level={part.get('level')!r}")
        if part.get("irrep_dim") != dim:
            raise ValueError(f"outputs['stress']['decomposition']['{name}'] has "
                             f"irrep_dim={part.get('irrep_dim')!r}, expected {dim}")
    if not model_config.get("pass_through_head_outputs", False):
        raise ValueError("the decomposed stress head needs pass_through_head_outputs=True in the model "
                         "config: otherwise the reference's trainer does not rebuild stress from its parts")
