"""Import of checkpoints of the reference implementation (fairchem's EquiformerV2).

Reads the checkpoint format only: no fairchem import. Handles the model config stored in
the checkpoint, ``module.`` prefixes from DDP, EMA weights, the deprecated monolithic
class (``equiformer_v2``) and the backbone + heads variant (``backbone.``,
``output_heads.energy.``, ``output_heads.forces.``, ``output_heads.stress.``): head ``name``'s
weights become so2nn's ``heads.<name>.*``. The rank-2 stress head's options
(``rank2_symmetric_head``) become the config's ``stress_*`` fields, and the trainer's
``outputs.stress`` (its decomposition) is checked against the head. The DeNS models
(``equiformer_v2_dens_backbone`` with the ``eqV2_DeNS_*`` heads) load their force and
noise-scale encodings and denoising attention into so2nn's DeNS parts (see
``DENS_TRAINING_ONLY`` for the DeNS settings that act only in training). Energy-only models
(``regress_forces: False``, the IS2RE models; or a backbone + heads model without a ``forces``
head) load as so2nn models with ``regress_forces=False``.

Nothing that changes the numbers is skipped: a checkpoint holding target transforms so2nn does
not apply (fairchem's ``mean``/``rmsd`` normaliser state, element references, ``scale_dict``) or
output heads it does not compute raises a ValueError naming them.
"""

from __future__ import annotations

import re

import torch

from ._checkpoint import load_checkpoint
from ._config import EquiformerV2Config

__all__ = ["config_from_fairchem", "state_dict_from_fairchem", "load_fairchem_checkpoint",
           "stress_config_from_fairchem"]

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
    # the rank-2 stress head: output_heads.stress.{sphharm_norm, xedge_layer_norm, block.*_MLP}
    (r"^output_heads\.stress\.", "heads.stress."),
    (r"^heads\.stress\.sphharm_norm\.", "heads.stress.harmonics_norm."),
    (r"^heads\.stress\.xedge_layer_norm\.", "heads.stress.edge_norm."),
    (r"^heads\.stress\.block\.scalar_MLP\.", "heads.stress.isotropic_mlp."),
    (r"^heads\.stress\.block\.irrep2_MLP\.", "heads.stress.anisotropic_mlp."),
    (r"^heads\.stress\.block\.r2tensor_MLP\.", "heads.stress.tensor_mlp."),
    (r"\.rad_func\.net\.", ".radial.net."),
    (r"\.so2_m_conv\.(\d+)\.fc\.", r".fc_m.\1."),
    (r"\.(source_embedding|target_embedding)\.weight$", r".atom_edge.\1.weight"),
    (r"\.(alpha_norm\.(weight|bias)|alpha_dot)$", r".attention.\1"),
    (r"\.grid_mlp\.", ".mlp."),
]

# config keys of the reference that have no effect on the numbers (or are handled elsewhere)
_IGNORED_CONFIG = {
    "name", "use_pbc", "use_pbc_single", "otf_graph", "num_sphere_samples", "attn_activation",
    "ffn_activation", "weight_init", "num_atoms", "bond_feat_dim", "num_targets", "share_atom_edge_embedding",
    "use_m_share_rad", "use_s2_act_attn", "distance_function", "load_energy_lin_ref",
    "direct_forces", "num_distance_basis", "backbone", "heads", "pass_through_head_outputs", "model",
}


# DeNS (the equiformer_v2_dens_backbone and the eqV2_DeNS_* heads). What the DeNS checkpoints hold
# beyond a plain model is applied (the force and noise-scale encodings, the denoising attention:
# config_from_fairchem, _RENAMES) or concerns only training with denoising, where positions are
# corrupted and forces are an input; at prediction neither happens, so these are ignored:
DENS_BACKBONE = "equiformer_v2_dens_backbone"
DENS_TRAINING_ONLY = {
    # backbone: whether the force input is encoded (at prediction it is zero either way; the
    # encoding's bias, which does act, is added in both cases)
    "backbone": {"use_force_encoding"},
    # head options: whether a head predicts the clean structure's target from a corrupted one
    "heads": {"use_denoising"},
    # trainer (config['optim']): noise scale, schedule, corrupted fraction, loss weight
    "optim": {"use_denoising_pos", "denoising_pos_params", "denoising_pos_coefficient"},
    # trainer normaliser of the denoising target (the predicted noise, multiplied by zero at prediction)
    "normalizers": {"denoising_pos_target"},
}
# backbone names of the backbone + heads layout
_BACKBONES = {"equiformer_v2_backbone", DENS_BACKBONE}


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
    dens = {}
    if isinstance(cfg.get("backbone"), dict):  # backbone + heads variant
        dens = _dens_config(cfg["backbone"], cfg.get("heads"))
        applied = DENS_TRAINING_ONLY["backbone"] | {"use_noise_schedule_sigma_encoding"}  # read by _dens_config
        backbone = {k: v for k, v in cfg["backbone"].items()
                    if not (cfg["backbone"].get("model") == DENS_BACKBONE and k in applied)}
        cfg = {**backbone, **{k: v for k, v in cfg.items() if k not in ("backbone", "heads")}}
    lmax, mmax = cfg.pop("lmax_list", [6]), cfg.pop("mmax_list", [2])
    if len(lmax) != 1 or len(mmax) != 1:
        raise ValueError(f"only single-resolution models are supported, got lmax_list={lmax}, mmax_list={mmax}")
    for key in ("use_m_share_rad", "use_s2_act_attn", "share_atom_edge_embedding"):
        if cfg.get(key):
            raise ValueError(f"{key}=True is not supported (no released model uses it)")
    use_gate, use_sep = cfg.pop("use_gate_act", False), cfg.pop("use_sep_s2_act", True)
    activation = "gate" if use_gate else ("separable_s2" if use_sep else "s2")
    out = {"lmax": int(lmax[0]), "mmax": int(mmax[0]), "activation": activation}
    out.update(_graph_mode_from_fairchem(cfg))
    out.update(_regress_forces_from_fairchem(cfg, model_config.get("heads")))
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
    out.update(dens)
    heads = model_config.get("heads")
    if isinstance(heads, dict) and isinstance(heads.get("stress"), dict):
        out.update(stress_config_from_fairchem(heads["stress"]))
    out.update(changes)
    return EquiformerV2Config(**out)


def _graph_mode_from_fairchem(cfg: dict) -> dict:
    """``graph_mode`` for the reference's neighbour rule, popped from ``cfg``: its
    ``enforce_max_neighbors_strictly`` (a key of the monolithic model's config and of the
    backbone's), ``True`` when absent as in the reference's model classes.

    ``False`` trained the model on the non-strict rule, which so2nn reproduces
    (``"reference_nonstrict"``) so that the numbers match. The strict cut splits shells of equal
    distances arbitrarily; so2nn keeps its tie-stable default for those checkpoints (no
    change: ``graph_mode="reference"`` as a config change selects the strict cut).
    """
    strict = cfg.pop("enforce_max_neighbors_strictly", True)
    if strict is None:  # the reference passes it on, and its `if enforce_max_strictly:` reads None as False
        strict = False
    if not isinstance(strict, bool):
        raise ValueError(f"enforce_max_neighbors_strictly must be true or false, got {strict!r}")
    return {} if strict else {"graph_mode": "reference_nonstrict"}


def _regress_forces_from_fairchem(cfg: dict, heads) -> dict:
    """``regress_forces`` for the reference's energy-only models, popped from ``cfg``.

    The monolithic model builds its force block only with ``regress_forces`` (``True`` when
    absent, as in the reference's class), so an energy-only checkpoint (the IS2RE models) has
    no force weights. In the backbone + heads layout the heads decide: the backbone's flag does
    not reach them, and the model returns forces exactly when it has a ``forces`` head.
    """
    flag = cfg.pop("regress_forces", True)
    if not isinstance(flag, bool):
        raise ValueError(f"regress_forces must be true or false, got {flag!r}")
    if isinstance(heads, dict):
        flag = "forces" in heads
    return {} if flag else {"regress_forces": False}


def _forces_of_weights(model_config: dict, state_dict: dict) -> dict:
    """``regress_forces=True`` for a backbone + heads checkpoint whose ``heads`` config does not
    list the ``forces`` head that its weights (``output_heads.forces.*``) hold: the head is
    loaded, not dropped."""
    heads = model_config.get("heads")
    if not isinstance(heads, dict) or "forces" in heads:
        return {}
    held = any(_strip(key).startswith("output_heads.forces.") for key in state_dict)
    return {"regress_forces": True} if held else {}


def _dens_config(backbone: dict, heads) -> dict:
    """The DeNS config fields of a backbone + heads config (empty for a plain model)."""
    name = backbone.get("model")
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone model {name!r} in the reference model config (known: {sorted(_BACKBONES)})")
    out = {}
    if name == DENS_BACKBONE:
        out["dens_force_embedding"] = True
        out["dens_sigma_embedding"] = bool(backbone.get("use_noise_schedule_sigma_encoding", False))
    forces = heads.get("forces") if isinstance(heads, dict) else None
    if isinstance(forces, dict) and forces.get("module") == "eqV2_DeNS_vector_head":
        out["dens_denoising_head"] = True
    return out


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


def load_fairchem_checkpoint(checkpoint, use_ema: bool = True, trust: bool = False, **config_changes):
    """``(config, state_dict)`` from a reference checkpoint (path or loaded dict).

    ``trust``: passed to :func:`~so2nn.models._checkpoint.load_checkpoint` (a file is read as
    data only unless it is True).

    Raises:
        ValueError: not a fairchem checkpoint; or it holds something that changes the model's
            numbers and that so2nn does not apply (named): normalisers in the ``mean``/``rmsd``
            form or for other targets, element references (``elementrefs``, or
            ``element_references`` in the dataset transforms), ``scale_dict``, output heads
            other than the energy, direct-force and stress heads.
    """
    checkpoint = load_checkpoint(checkpoint, trust=trust)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a fairchem checkpoint: expected a dict with 'state_dict' (and 'config')")
    config = checkpoint.get("config") or {}
    model_config = config.get("model") if isinstance(config.get("model"), dict) else config.get("model_attributes")
    if model_config is None:
        raise ValueError("the checkpoint has no model config ('config.model' or 'config.model_attributes')")
    _check_heads(model_config, checkpoint["state_dict"])
    _check_stress_outputs(config.get("outputs"), model_config)
    ema = checkpoint.get("ema") if use_ema else None
    changes = {**normalizers_from_fairchem(checkpoint),
               **_forces_of_weights(model_config, checkpoint["state_dict"]), **config_changes}
    return config_from_fairchem(model_config, **changes), state_dict_from_fairchem(checkpoint["state_dict"], ema)


# The heads of the backbone + heads layout that so2nn's EquiformerV2 is: a head name, the
# registered module names fairchem has given that head, and the options that keep its numbers.
_KNOWN_HEADS = {
    "energy": ({"equiformer_v2_energy_head", "equiformerV2_scalar_head", "eqV2_DeNS_scalar_head"}, {"reduce": "sum"}),
    "forces": ({"equiformer_v2_force_head", "equiformerV2_vector_head", "equiformerV2_rank1_head",
                "eqV2_DeNS_vector_head"}, {}),
    # options mapped onto the config by stress_config_from_fairchem (None: not a fixed set)
    "stress": ({"rank2_symmetric_head", "dens_rank2_symmetric_head"}, None),
}
# the DeNS heads (and the options of theirs that only act in training with denoising)
_DENS_HEADS = {"eqV2_DeNS_scalar_head", "eqV2_DeNS_vector_head", "dens_rank2_symmetric_head"}


def _check_heads(model_config: dict, state_dict: dict) -> None:
    """Raise unless every output head (config ``heads`` and ``output_heads.<name>.`` weights) is
    one so2nn computes: a head it does not know would be dropped and its output missing, or
    worse, another head's numbers returned in its place."""
    problems = []
    heads = model_config.get("heads")
    if heads is not None:
        if not isinstance(heads, dict):
            raise ValueError(f"the checkpoint's model config has 'heads' of type {type(heads).__name__}, not a dict")
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
                     if k != "module" and k not in training_only and options.get(k, object()) != v}
            if extra:
                problems.append(f"head '{name}' with options {extra}")
    weight_heads = sorted({m.group(1) for key in state_dict if (m := re.match(r"^output_heads\.([^.]+)\.", _strip(key)))})
    problems += [f"weights of head '{name}' (output_heads.{name}.*)" for name in weight_heads if name not in _KNOWN_HEADS
                 and (heads is None or name not in heads)]
    if problems:
        raise ValueError(
            f"the checkpoint has output heads so2nn does not compute: {'; '.join(problems)} "
            f"(known: 'energy' {sorted(_KNOWN_HEADS['energy'][0])} with reduce='sum', "
            f"'forces' {sorted(_KNOWN_HEADS['forces'][0])}, 'stress' {sorted(_KNOWN_HEADS['stress'][0])})"
        )


def _check_unapplied(checkpoint: dict) -> None:
    """Raise for trainer state that changes the numbers and that so2nn does not apply yet."""
    problems = []
    elementrefs = checkpoint.get("elementrefs")
    if elementrefs:
        problems.append(f"element references 'elementrefs' for {sorted(elementrefs)}")
    if checkpoint.get("scale_dict"):
        problems.append("scale factors 'scale_dict'")
    normalizers = checkpoint.get("normalizers") or {}
    if not isinstance(normalizers, dict):
        raise ValueError(f"the checkpoint's 'normalizers' is a {type(normalizers).__name__}, not a dict")
    for name, state in normalizers.items():
        if name in DENS_TRAINING_ONLY["normalizers"]:
            continue
        if name not in ("target", "grad_target", "energy", "forces"):
            problems.append(f"normalizers['{name}'] (a target so2nn does not predict)")
        elif not isinstance(state, dict) or set(state) != {"mean", "std"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            problems.append(f"normalizers['{name}'] with fields {keys} (so2nn reads the 'mean'/'std' form)")
    transforms = _dataset_config(checkpoint).get("transforms") or {}
    if isinstance(transforms, dict):
        if transforms.get("element_references"):
            problems.append("element references in the dataset transforms ('element_references')")
        for name, entry in (transforms.get("normalizer") or {}).items():
            if name not in ("energy", "forces") or not isinstance(entry, dict) or "stdev" not in entry \
                    or set(entry) - {"mean", "stdev"}:
                fields = sorted(entry) if isinstance(entry, dict) else entry
                problems.append(f"dataset transforms normalizer['{name}'] = {fields} (so2nn reads 'mean'/'stdev')")
    if problems:
        raise ValueError(
            "the checkpoint holds target transforms that change the model's outputs and that so2nn does not "
            "apply: " + "; ".join(problems) + ". Loading it would return numbers in the wrong units or offsets."
        )


def _dataset_config(checkpoint: dict) -> dict:
    """The training dataset's config (``config.dataset``, its ``train`` entry, or the first of a list)."""
    dataset = (checkpoint.get("config") or {}).get("dataset") or {}
    if isinstance(dataset, list) and dataset and isinstance(dataset[0], dict):  # older configs: [train, val]
        dataset = dataset[0]
    if isinstance(dataset, dict) and isinstance(dataset.get("train"), dict):
        dataset = dataset["train"]
    return dataset if isinstance(dataset, dict) else {}


def _mean_std(entry: dict | None, mean_key="mean", std_key="std"):
    if not isinstance(entry, dict) or entry.get(std_key) is None:
        return None
    return float(torch.as_tensor(entry.get(mean_key, 0.0))), float(torch.as_tensor(entry[std_key]))


def normalizers_from_fairchem(checkpoint: dict) -> dict:
    """The reference's target normalisation (kept by its trainer, not its model) as so2nn config
    entries ``energy_mean``, ``energy_std``, ``forces_std``; empty when the checkpoint has none.

    Looked up where fairchem's trainers store it: ``checkpoint["normalizers"]`` (``target`` /
    ``grad_target``, or ``energy`` / ``forces``), then the dataset config (``normalize_labels``
    with ``target_mean`` ...; or ``transforms.normalizer`` with ``mean`` / ``stdev``).

    Raises:
        ValueError: the checkpoint holds target transforms so2nn does not apply (they are
            named): fairchem's current normaliser state (``mean``/``rmsd``), normalisers of other
            targets, element references, ``scale_dict``; or a force normaliser with a mean.
    """
    _check_unapplied(checkpoint)
    found = {}
    normalizers = checkpoint.get("normalizers") or {}
    energy = _mean_std(normalizers.get("target") or normalizers.get("energy"))
    forces = _mean_std(normalizers.get("grad_target") or normalizers.get("forces"))
    dataset = _dataset_config(checkpoint)
    if energy is None and isinstance(dataset, dict) and dataset.get("normalize_labels"):
        energy = (float(dataset.get("target_mean", 0.0)), float(dataset.get("target_std", 1.0)))
        forces = (float(dataset.get("grad_target_mean", 0.0)), float(dataset.get("grad_target_std", 1.0)))
    normalizer = ((dataset.get("transforms") or {}).get("normalizer") or {}) if isinstance(dataset, dict) else {}
    if energy is None and normalizer:
        energy = _mean_std(normalizer.get("energy"), std_key="stdev")
        forces = _mean_std(normalizer.get("forces"), std_key="stdev")
    if energy is not None:
        found["energy_mean"], found["energy_std"] = energy
    if forces is not None:
        if forces[0] != 0.0:
            raise ValueError(f"a force normaliser with non-zero mean ({forces[0]}) is not rotation equivariant")
        found["forces_std"] = forces[1]
    return found


# -- the rank-2 stress head ----------------------------------------------------------------------

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


def stress_config_from_fairchem(head: dict) -> dict:
    """so2nn config fields (``stress_head``, ``stress_*``) from the reference's
    ``rank2_symmetric_head`` (or ``dens_rank2_symmetric_head``) entry of ``heads``.

    Raises:
        ValueError: an option so2nn does not know, ``output_name`` other than ``"stress"``, or
            ``use_denoising`` on the plain (non-DeNS) head.
    """
    unknown = sorted(set(head) - set(_STRESS_OPTIONS) - _STRESS_IGNORED - {"decompose", "output_name"})
    if unknown:
        raise ValueError(f"unknown options of the stress head (rank2_symmetric_head): {unknown}")
    if "use_denoising" in head and head.get("module") != "dens_rank2_symmetric_head":
        raise ValueError("the stress head option 'use_denoising' belongs to dens_rank2_symmetric_head, "
                         f"not {head.get('module')!r}")
    if head.get("output_name", "stress") != "stress":
        raise ValueError(f"the stress head predicts output_name={head['output_name']!r}: so2nn's rank-2 head "
                         "returns 'stress' only")
    out = {"stress_head": "decomposed" if head.get("decompose", False) else "rank2"}
    out.update({field: head[option] for option, field in _STRESS_OPTIONS.items() if option in head})
    if "stress_avg_num_nodes" in out:
        out["stress_avg_num_nodes"] = float(out["stress_avg_num_nodes"])
    return out


def _check_stress_outputs(outputs, model_config: dict) -> None:
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
        raise ValueError(f"outputs['stress'] must be decomposed into {sorted(_STRESS_PARTS)} for the decomposed "
                         f"stress head, got decomposition={found}")
    for name, dim in _STRESS_PARTS.items():
        part = decomposition[name] if isinstance(decomposition[name], dict) else {}
        unknown = sorted(set(part) - _STRESS_OUTPUT_KEYS)
        if unknown:
            raise ValueError(f"unknown keys in outputs['stress']['decomposition']['{name}']: {unknown}")
        if part.get("parent", "stress") != "stress" or part.get("level", "system") != "system":
            raise ValueError(f"outputs['stress']['decomposition']['{name}'] must be a per-system part of 'stress', "
                             f"got parent={part.get('parent')!r}, level={part.get('level')!r}")
        if part.get("irrep_dim") != dim:
            raise ValueError(f"outputs['stress']['decomposition']['{name}'] has irrep_dim={part.get('irrep_dim')!r}, "
                             f"expected {dim}")
    if not model_config.get("pass_through_head_outputs", False):
        raise ValueError("the decomposed stress head needs pass_through_head_outputs=True in the model config: "
                         "otherwise the reference's trainer does not rebuild stress from its parts")
