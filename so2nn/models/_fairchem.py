"""Import of checkpoints of the reference implementation (fairchem's EquiformerV2).

Reads the checkpoint format only: no fairchem import. Handles the model config stored in
the checkpoint, ``module.`` prefixes from DDP, EMA weights, the deprecated monolithic
class (``equiformer_v2``) and the backbone + heads variant (``backbone.``,
``output_heads.energy.``, ``output_heads.forces.``, ``output_heads.stress.``): head ``name``'s
weights become so2nn's ``heads.<name>.*``. The rank-2 stress head's options
(``rank2_symmetric_head``) become the config's ``stress`` group, and the trainer's
``outputs.stress`` (its decomposition) is checked against the head. The DeNS models
(``equiformer_v2_dens_backbone`` with the ``eqV2_DeNS_*`` heads) load their force and
noise-scale encodings and denoising attention into so2nn's DeNS parts (see
``DENS_TRAINING_ONLY`` for the DeNS settings that act only in training). Energy-only models
(``regress_forces: False``, the IS2RE models; or a backbone + heads model without a ``forces``
head) load as so2nn models with ``regress_forces=False``.

What fairchem's trainer applies at prediction is applied here too, inside the model: the target
normalisers (of the checkpoint, or of its training dataset config), the element references
(``elementrefs``) and OC22's ``energy_lin_ref``, the scalar head's ``reduce``. Nothing that
changes the numbers is skipped: every key of the checkpoint, its config, the model config and the
training dataset config is applied, ignored as training-only (:data:`FAIRCHEM_IGNORED_KEYS`), or
raises a ValueError naming it; so do output heads so2nn does not compute.
"""

from __future__ import annotations

import re
import warnings

import torch

from ._checkpoint import load_checkpoint
from ._config import FLAT_STRESS_KEYS, EquiformerV2Config

__all__ = [
    "FAIRCHEM_IGNORED_KEYS", "check_fairchem_keys", "config_from_fairchem", "element_references_from_fairchem",
    "load_fairchem_checkpoint", "normalizers_from_fairchem", "state_dict_from_fairchem", "stress_config_from_fairchem",
]

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

#: The keys of a fairchem checkpoint that only concern training and are ignored on import, by
#: where they sit: ``"checkpoint"`` (the checkpoint dict's top level), ``"config"`` (the top
#: level of ``checkpoint["config"]``), ``"model"`` (the model config, the backbone's for the
#: backbone + heads layout), ``"dataset"`` (the training dataset's config), ``"transforms"``
#: (that dataset's ``transforms``, applied to the training data). Every other key is
#: either applied (weights, model config, normalisers, element references, ``outputs``) or
#: raises a ValueError naming it: nothing that changes the numbers is skipped.
#:
#: The groups: at the top level of the checkpoint, the optimiser's and scheduler's state, the
#: position in training, validation metrics and the mixed-precision scaler; in its config, the
#: training recipe (optimiser, losses, metrics, the old ``task`` section), the trainer class
#: (all of EquiformerV2's de-normalise predictions alike), the validation/test/relaxation
#: datasets, logging and run bookkeeping, hardware and cluster settings; in the model config,
#: how the reference batches and builds its graph (same graph), initialisation and memory
#: options, arguments the reference accepts without using, the head output
#: naming and a fine-tune's starting checkpoint; in the dataset config, where and how the
#: training data is read (and OC22's ``oc20_ref``, read only by a setting that raises); in its
#: transforms, the training data's stress decomposition.
FAIRCHEM_IGNORED_KEYS: dict[str, frozenset[str]] = {
    "checkpoint": frozenset({
        # the optimiser's and scheduler's state and the position in training
        "optimizer", "scheduler", "epoch", "step",
        # validation metrics, and the metric that chose the best checkpoint
        "val_metrics", "best_val_metric", "primary_metric",
        # the mixed-precision loss scaler (training only)
        "amp",
    }),
    "config": frozenset({
        # the training recipe: optimiser, schedule, losses, metrics, the (pre-2.0) task section
        # (dataset type, relaxation settings, free-atom masks of the losses)
        "optim", "loss_functions", "loss_fns", "evaluation_metrics", "eval_metrics", "task",
        # the trainer class: every fairchem trainer of EquiformerV2 (ocp, forces, energy,
        # equiformerv2_forces, equiformerv2_dens) de-normalises its predictions the same way
        "trainer",
        # the validation, test and relaxation datasets (only the training one holds normalisers)
        "val_dataset", "test_dataset", "relax_dataset",
        # logging and the run's bookkeeping (names, directories, seeds of training)
        "logger", "cmd", "identifier", "timestamp_id", "run_dir", "print_every", "mode", "seed", "is_debug",
        "checkpoint", "hide_eval_progressbar", "includes", "logdir",
        # hardware, precision of training and cluster settings
        "amp", "gpus", "gp_gpus", "cpu", "slurm", "submit", "summit", "world_size", "distributed",
        "distributed_backend", "distributed_port", "local_rank", "noddp", "num_nodes", "num_gpus",
    }),
    "model": frozenset({
        # how the reference batches and builds its graph: same graph, same numbers
        "use_pbc_single", "otf_graph",
        # initialisation and memory options of training (the weights are loaded; same numbers)
        "weight_init", "activation_checkpoint", "freeze_backbone",
        # arguments the reference accepts and does not use (it hard-codes 600 Gaussians, SiLU
        # activations and its own sphere samples) or that old trainers pass along
        "num_distance_basis", "num_sphere_samples", "attn_activation", "ffn_activation", "num_atoms",
        "bond_feat_dim", "num_targets",
        # the names of the outputs of the backbone + heads layout (read from its heads)
        "pass_through_head_outputs",
        # the starting checkpoint of a fine-tune: its weights are replaced by this checkpoint's
        "finetune_config",
    }),
    "dataset": frozenset({
        # where and how the training data is read (formats, paths, reader options, subsets)
        "format", "src", "pattern", "a2g_args", "key_mapping", "ase_read_args", "connect_args", "select_args",
        "atoms_transform_args", "include_relaxed_energy", "keep_in_memory", "use_tqdm", "metadata_path",
        "index_file", "splits", "sample_n", "max_atoms", "first_n", "no_shuffle", "subset_to", "shard",
        "total_shards", "seed", "data2train",
        # OC22's reference energies of each adsorbate-free OC20 system (read only when training on
        # OC20 total energies, which raises)
        "oc20_ref",
    }),
    "transforms": frozenset({
        # splits the stress targets of the training data into their irreducible parts (at
        # prediction the config's outputs say how the parts are put back together)
        "decompose_tensor",
    }),
}

# The fairchem model names (config ``name``, or the backbone's ``model``) whose numbers so2nn's
# EquiformerV2 reproduces: the deprecated monolithic class, and the backbone of the backbone +
# heads layout.
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
# fairchem's configs name a module by its registered name or by its class path (the OMat24 and
# DeNS configs use both); so2nn compares registered names.
_FAIRCHEM_EQV2 = "fairchem.core.models.equiformer_v2."
_REGISTERED_NAMES = {
    _FAIRCHEM_EQV2 + "equiformer_v2_deprecated.EquiformerV2": "equiformer_v2",
    _FAIRCHEM_EQV2 + "equiformer_v2.EquiformerV2Backbone": "equiformer_v2_backbone",
    _FAIRCHEM_EQV2 + "equiformer_v2.EquiformerV2EnergyHead": "equiformer_v2_energy_head",
    _FAIRCHEM_EQV2 + "equiformer_v2.EquiformerV2ForceHead": "equiformer_v2_force_head",
    _FAIRCHEM_EQV2 + "heads.scalar.EqV2ScalarHead": "equiformerV2_scalar_head",
    _FAIRCHEM_EQV2 + "heads.vector.EqV2VectorHead": "equiformerV2_vector_head",
    _FAIRCHEM_EQV2 + "heads.rank2.Rank2SymmetricTensorHead": "rank2_symmetric_head",
    _FAIRCHEM_EQV2 + "equiformer_v2_dens.EqV2DeNSBackbone": "equiformer_v2_dens_backbone",
    _FAIRCHEM_EQV2 + "equiformer_v2_dens.DeNSScalarHead": "eqV2_DeNS_scalar_head",
    _FAIRCHEM_EQV2 + "equiformer_v2_dens.DeNSVectorHead": "eqV2_DeNS_vector_head",
    _FAIRCHEM_EQV2 + "equiformer_v2_dens.DeNSRank2Head": "dens_rank2_symmetric_head",
}


def _with_registered_names(model_config: dict) -> dict:
    """A copy of a model config whose model, backbone and head modules are named by their
    registered names (a class path such as ``fairchem.core.models.equiformer_v2.equiformer_v2_dens.
    DeNSScalarHead`` becomes ``eqV2_DeNS_scalar_head``); other names are kept, to be checked."""
    def registered(name):
        return _REGISTERED_NAMES.get(name, name) if isinstance(name, str) else name

    cfg = dict(model_config)
    if "name" in cfg:
        cfg["name"] = registered(cfg["name"])
    if isinstance(cfg.get("backbone"), dict):
        cfg["backbone"] = {**cfg["backbone"], "model": registered(cfg["backbone"].get("model"))}
    if isinstance(cfg.get("heads"), dict):
        cfg["heads"] = {name: {**head, "module": registered(head.get("module"))} if isinstance(head, dict) else head
                        for name, head in cfg["heads"].items()}
    return cfg


_MONOLITHIC = {"equiformer_v2"}
_BACKBONES = {"equiformer_v2_backbone", DENS_BACKBONE}

# The normalisers the reference's trainer applies at prediction: its target name (after the
# renames of old checkpoints) -> the so2nn config fields of (mean, std). Stress targets are
# read where the model config has the fields of a stress head.
_NORMALIZED_TARGETS = {
    "energy": ("energy_mean", "energy_std"),
    "forces": ("forces_mean", "forces_std"),
    "stress_isotropic": ("stress_isotropic_mean", "stress_isotropic_std"),
    "stress_anisotropic": ("stress_anisotropic_mean", "stress_anisotropic_std"),
    "stress": ("stress_mean", "stress_std"),
}
# Old checkpoints' names of the targets.
_OLD_TARGET_NAMES = {"target": "energy", "grad_target": "forces"}
# Normalisers the reference stores and applies in training only: the DeNS trainer's scale of
# its denoising targets (the positions' noise), never of a prediction.
_TRAINING_ONLY_NORMALIZERS = {"denoising_pos_target"}
# Normalisers whose non-zero mean breaks rotation equivariance (a constant vector or traceless
# tensor added whatever the orientation); reproduced for parity, with a warning.
_NOT_EQUIVARIANT_MEANS = {"forces", "stress_anisotropic", "stress"}

def _strip(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def _rename(key: str) -> str:
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def _backbone_config(model_config: dict) -> tuple[dict, bool]:
    """The model config with the backbone's entries at the top level, and whether it is the
    backbone + heads layout. Raises for a model fairchem names that so2nn's EquiformerV2 is not."""
    cfg = dict(model_config)
    if "backbone" in cfg or cfg.get("name") == "hydra":
        backbone = cfg.get("backbone")
        if not isinstance(backbone, dict):
            raise ValueError("the checkpoint's backbone + heads model config has no 'backbone' section (a fine-tune "
                             "that takes its backbone from another checkpoint): so2nn needs the backbone's config")
        name = backbone.get("model")
        if name not in _BACKBONES:
            raise ValueError(f"unknown backbone model {name!r} in the reference model config: not one of "
                             f"so2nn's EquiformerV2 backbones ({sorted(_BACKBONES)})")
        # the DeNS settings read by _dens_config, or acting only in training with denoising
        dens = DENS_TRAINING_ONLY["backbone"] | {"use_noise_schedule_sigma_encoding"} if name == DENS_BACKBONE \
            else set()
        return {**{k: v for k, v in backbone.items() if k != "model" and k not in dens},
                **{k: v for k, v in cfg.items() if k not in ("backbone", "heads", "name")}}, True
    name = cfg.pop("name", "equiformer_v2")
    if name not in _MONOLITHIC:
        raise ValueError(f"the checkpoint's model is {name!r}, not fairchem's EquiformerV2 ({sorted(_MONOLITHIC)})")
    return cfg, False


def config_from_fairchem(model_config: dict, **changes) -> EquiformerV2Config:
    """Translate the reference's model config (a checkpoint's ``config['model']``) to so2nn's.

    Its energy references (``use_energy_lin_ref``, ``load_energy_lin_ref``) are decided by
    :func:`load_fairchem_checkpoint`, which sees the weights and the trainer's state; here they
    are dropped, and ``changes`` (as the loader computes them) set so2nn's fields.

    Raises:
        ValueError: a key that is neither a so2nn field, nor handled here, nor in
            :data:`FAIRCHEM_IGNORED_KEYS` ``["model"]``; options no released model uses.
    """
    model_config = _with_registered_names(model_config)
    cfg, _ = _backbone_config(model_config)
    cfg.pop("use_energy_lin_ref", None), cfg.pop("load_energy_lin_ref", None)
    lmax, mmax = cfg.pop("lmax_list", [6]), cfg.pop("mmax_list", [2])
    if len(lmax) != 1 or len(mmax) != 1:
        raise ValueError(f"only single-resolution models are supported, got lmax_list={lmax}, mmax_list={mmax}")
    for key in ("use_m_share_rad", "use_s2_act_attn", "share_atom_edge_embedding"):
        if cfg.pop(key, False):
            raise ValueError(f"{key}=True is not supported (no released model uses it)")
    distance_function = cfg.pop("distance_function", "gaussian")
    if distance_function != "gaussian":
        raise ValueError(f"distance_function={distance_function!r}: the reference's EquiformerV2 has Gaussians only")
    use_gate, use_sep = cfg.pop("use_gate_act", False), cfg.pop("use_sep_s2_act", True)
    activation = "gate" if use_gate else ("separable_s2" if use_sep else "s2")
    out = {"lmax": int(lmax[0]), "mmax": int(mmax[0]), "activation": activation}
    out.update(_graph_mode_from_fairchem(cfg))
    # None (also when absent: the reference's default) is a grid of its own, the smallest that
    # resolves each layer's layout, which so2nn's None is too; it is not so2nn's default of 18
    out["grid_resolution"] = cfg.pop("grid_resolution", None)
    out.update(_regress_forces_from_fairchem(cfg, model_config.get("heads")))
    fields = set(EquiformerV2Config.__dataclass_fields__)
    unknown = []
    for key, value in cfg.items():
        if key in fields:
            if value is not None:
                out[key] = value
        elif key not in FAIRCHEM_IGNORED_KEYS["model"]:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unknown keys in the reference model config: {sorted(unknown)}")
    # The reference hard-codes 600 Gaussians whatever num_distance_basis says.
    out["num_distance_basis"] = 600
    heads = model_config.get("heads")
    if isinstance(model_config.get("backbone"), dict):
        out.update(_dens_config(model_config["backbone"], heads))
    if isinstance(heads, dict) and isinstance(heads.get("stress"), dict):
        out.update(stress_config_from_fairchem(heads["stress"]))
    out.update(changes)
    return EquiformerV2Config.from_dict(out)


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
            training-only (:data:`FAIRCHEM_IGNORED_KEYS`); or target transforms whose values
            the checkpoint does not hold; or output heads so2nn does not compute.
    """
    checkpoint = load_checkpoint(checkpoint, trust=trust)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError("not a fairchem checkpoint: expected a dict with 'state_dict' (and 'config')")
    check_fairchem_keys(checkpoint)
    config = checkpoint.get("config") or {}
    model_config = config.get("model") if isinstance(config.get("model"), dict) else config.get("model_attributes")
    if not isinstance(model_config, dict):
        raise ValueError("the checkpoint has no model config ('config.model' or 'config.model_attributes')")
    model_config = _with_registered_names(model_config)
    changes = _check_heads(model_config, checkpoint["state_dict"])
    _check_outputs(config.get("outputs"), model_config)
    _check_stress_outputs(config.get("outputs"), model_config)
    ema = checkpoint.get("ema") if use_ema else None
    state_dict = state_dict_from_fairchem(checkpoint["state_dict"], ema)
    override = config_changes.pop("use_energy_lin_ref", None)
    normalizers = normalizers_from_fairchem(checkpoint)
    if not config_changes.get("direct_forces", _backbone_config(model_config)[0].get("direct_forces", True)):
        _check_gradient_forces(normalizers)
    changes.update(normalizers)
    changes.update(_forces_of_weights(model_config, checkpoint["state_dict"]))
    references = element_references_from_fairchem(checkpoint, state_dict.pop("energy_lin_ref", None), override,
                                                  energy_std=changes.get("energy_std", 1.0))
    changes["use_energy_lin_ref"] = references is not None
    config = config_from_fairchem(model_config, **{**changes, **config_changes})
    if references is not None:
        state_dict["energy_lin_ref"] = _fit_references(references, config.max_num_elements)
    return config, state_dict


# -- the key policy ---------------------------------------------------------------------------

# Keys applied on import (or checked, raising when they would change the numbers), by level.
_APPLIED_KEYS = {
    "checkpoint": {"state_dict", "config", "normalizers", "elementrefs", "ema", "scale_dict"},
    "config": {"model", "model_attributes", "dataset", "outputs"},
    "dataset": {"transforms", "normalize_labels", "target_mean", "target_std", "grad_target_mean",
                "grad_target_std", "lin_ref", "train_on_oc20_total_energies"},
    "transforms": {"normalizer", "element_references"},
}


def check_fairchem_keys(checkpoint: dict) -> None:
    """Raise a ValueError naming every key of a fairchem checkpoint (its top level, its
    config's, its training dataset config's) that so2nn neither applies nor ignores as
    training-only (:data:`FAIRCHEM_IGNORED_KEYS`). The model config's keys are checked by
    :func:`config_from_fairchem`."""
    unknown = [f"checkpoint[{k!r}]" for k in checkpoint
               if k not in _APPLIED_KEYS["checkpoint"] | FAIRCHEM_IGNORED_KEYS["checkpoint"]]
    config = checkpoint.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"the checkpoint's 'config' is a {type(config).__name__}, not a dict")
    unknown += [f"config[{k!r}]" for k in config if k not in _APPLIED_KEYS["config"] | FAIRCHEM_IGNORED_KEYS["config"]]
    dataset = _dataset_config(checkpoint)
    unknown += [f"config['dataset'][{k!r}]" for k in dataset
                if k not in _APPLIED_KEYS["dataset"] | FAIRCHEM_IGNORED_KEYS["dataset"]]
    transforms = dataset.get("transforms") or {}
    if not isinstance(transforms, dict):
        raise ValueError(f"the training dataset's 'transforms' is a {type(transforms).__name__}, not a dict")
    unknown += [f"the dataset transforms' {k!r}" for k in transforms
                if k not in _APPLIED_KEYS["transforms"] | FAIRCHEM_IGNORED_KEYS["transforms"]]
    if unknown:
        raise ValueError(f"the checkpoint has keys so2nn does not know: {', '.join(unknown)}. They might change the "
                         "predictions; so2nn applies or ignores (training-only) only the keys it knows")
    if checkpoint.get("scale_dict"):
        raise ValueError("the checkpoint holds scale factors 'scale_dict', which the reference's EquiformerV2 does "
                         "not have and so2nn does not apply")
    if dataset.get("train_on_oc20_total_energies"):
        raise ValueError("the training dataset has train_on_oc20_total_energies=True: the model predicts OC22 "
                         "energies less per-system OC20 references ('oc20_ref'), which so2nn does not apply")


def _dataset_config(checkpoint: dict) -> dict:
    """The training dataset's config (``config.dataset``, its ``train`` entry, or the first of a list)."""
    dataset = (checkpoint.get("config") or {}).get("dataset") or {}
    if isinstance(dataset, list) and dataset and isinstance(dataset[0], dict):  # older configs: [train, val]
        dataset = dataset[0]
    if isinstance(dataset, dict) and any(k in dataset for k in ("train", "val", "test", "relax")):  # the YAML form
        dataset = dataset.get("train") or {}
    return dataset if isinstance(dataset, dict) else {}


# -- heads and outputs --------------------------------------------------------------------------

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


def _check_heads(model_config: dict, state_dict: dict) -> dict:
    """Raise unless every output head (config ``heads`` and ``output_heads.<name>.`` weights) is
    one so2nn computes: a head it does not know would be dropped and its output missing, or
    worse, another head's numbers returned in its place. Returns the config changes of the
    heads' options (``energy_reduce``)."""
    problems, changes = [], {}
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
                     if k != "module" and k not in training_only and v not in options.get(k, ())}
            if extra:
                problems.append(f"head '{name}' with options {extra}")
            elif name == "energy":
                changes["energy_reduce"] = head.get("reduce", "sum")
    weight_heads = sorted({m.group(1) for key in state_dict if (m := re.match(r"^output_heads\.([^.]+)\.", _strip(key)))})
    problems += [f"weights of head '{name}' (output_heads.{name}.*)" for name in weight_heads if name not in _KNOWN_HEADS
                 and (heads is None or name not in heads)]
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


def _check_outputs(outputs, model_config: dict) -> None:
    """Raise unless every entry of the config's ``outputs`` is one so2nn returns, as it returns it
    (``stress``, where the model has a stress head, is checked by :func:`_check_stress_outputs`)."""
    if outputs is None:
        return
    if not isinstance(outputs, dict):
        raise ValueError(f"the checkpoint's config has 'outputs' of type {type(outputs).__name__}, not a dict")
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


# -- normalisers and element references ---------------------------------------------------------


def _scalar(value, what: str) -> float:
    tensor = torch.as_tensor(value, dtype=torch.float64)
    if tensor.numel() != 1:
        raise ValueError(f"{what} has shape {tuple(tensor.shape)}; so2nn reads one number")
    return float(tensor.reshape(()))


def _normalizer_state(state, where: str) -> tuple[float, float]:
    """(mean, std) of a ``Normalizer`` state dict (``mean``/``rmsd``, or the legacy ``mean``/``std``)."""
    keys = sorted(state) if isinstance(state, dict) else type(state).__name__
    if not isinstance(state, dict) or set(state) not in ({"mean", "rmsd"}, {"mean", "std"}):
        raise ValueError(f"{where} has fields {keys}; so2nn reads fairchem's 'mean'/'rmsd' (or legacy "
                         "'mean'/'std') normaliser state")
    std = _scalar(state["rmsd"] if "rmsd" in state else state["std"], f"{where}'s std")
    return _scalar(state["mean"], f"{where}'s mean"), std


def _config_normalizers(dataset: dict) -> tuple[dict, set]:
    """The normalisers the training dataset config gives by value, and the targets whose values
    it leaves to a file or a fit (which the checkpoint must then hold)."""
    values, elsewhere = {}, set()
    if dataset.get("normalize_labels"):  # the pre-2.0 form, as fairchem's update_config reads it
        values["energy"] = (float(dataset.get("target_mean", 0.0)), float(dataset.get("target_std", 1.0)))
        values["forces"] = (float(dataset.get("grad_target_mean", 0.0)), float(dataset.get("grad_target_std", 1.0)))
    normalizer = (dataset.get("transforms") or {}).get("normalizer") or {}
    for name, entry in normalizer.items():
        where = f"the dataset transforms normalizer['{name}']"
        if name == "file":  # a file of Normalizer states, for the targets it holds
            elsewhere.add("file")
        elif name == "fit":  # fitted on the training data when training started
            targets = (entry or {}).get("targets") if isinstance(entry, dict) else None
            if not isinstance(targets, (list, dict)):
                raise ValueError(f"{where} has no 'targets' list")
            elsewhere.update(targets)
        elif not isinstance(entry, dict):
            raise ValueError(f"{where} = {entry!r} is not a dict")
        elif "file" in entry or "tensor" in entry:
            elsewhere.add(name)
        elif "state_dict" in entry:
            values[name] = _normalizer_state(entry["state_dict"], where)
        elif set(entry) <= {"mean", "rmsd", "stdev"} and ("rmsd" in entry or "stdev" in entry):
            std = entry["rmsd"] if "rmsd" in entry else entry["stdev"]  # fairchem prefers rmsd
            values[name] = (_scalar(entry.get("mean", 0.0), f"{where}'s mean"), _scalar(std, f"{where}'s std"))
        else:
            raise ValueError(f"{where} has fields {sorted(entry)}; so2nn reads 'mean' with 'rmsd' or 'stdev', "
                             "'state_dict', or a 'file' whose values the checkpoint holds")
    return values, elsewhere


def normalizers_from_fairchem(checkpoint: dict) -> dict:
    """The reference's target normalisation (kept by its trainer, not its model) as so2nn config
    changes: ``energy_mean``, ``energy_std``, ``forces_mean``, ``forces_std`` and, for a
    checkpoint with a stress head, ``stress_isotropic_mean`` ... (empty when it has none).

    As fairchem's trainer does at prediction: the training dataset config's normalisers (the
    pre-2.0 ``normalize_labels`` with ``target_mean`` ...; ``transforms.normalizer`` with
    ``mean`` and ``rmsd`` or ``stdev``), each replaced by the checkpoint's own
    (``checkpoint["normalizers"]``: ``Normalizer`` state dicts, ``mean``/``rmsd``, or the legacy
    ``mean``/``std``; old names ``target``, ``grad_target``). A non-zero mean that breaks
    rotation equivariance (forces, anisotropic stress) is reproduced, with a warning.

    Raises:
        ValueError: a normaliser of a target so2nn does not predict, a field it does not read,
            or a ``file``/``fit`` entry of the dataset config whose values the checkpoint does
            not hold.
    """
    values, elsewhere = _config_normalizers(_dataset_config(checkpoint))
    stored = checkpoint.get("normalizers") or {}
    if not isinstance(stored, dict):
        raise ValueError(f"the checkpoint's 'normalizers' is a {type(stored).__name__}, not a dict")
    for name, state in stored.items():
        target = _OLD_TARGET_NAMES.get(name, name)
        if target in _TRAINING_ONLY_NORMALIZERS:
            continue
        values[target] = _normalizer_state(state, f"normalizers['{name}']")
        elsewhere.discard(target)
    if stored:  # a file's normalisers are among those the trainer saved
        elsewhere.discard("file")
    if elsewhere:
        raise ValueError(f"the training dataset config reads normalisers of {sorted(elsewhere)} from a file or a fit "
                         "whose values the checkpoint does not hold (checkpoint['normalizers'])")
    fields = set(EquiformerV2Config.__dataclass_fields__) | set(FLAT_STRESS_KEYS)
    found = {}
    for target, (mean, std) in values.items():
        if target in _TRAINING_ONLY_NORMALIZERS:
            continue
        if target not in _NORMALIZED_TARGETS:
            raise ValueError(f"a normaliser of '{target}', a target so2nn does not predict "
                             f"(so2nn reads {sorted(_NORMALIZED_TARGETS)})")
        mean_field, std_field = _NORMALIZED_TARGETS[target]
        if mean_field not in fields:
            raise ValueError(f"a normaliser of '{target}': so2nn's EquiformerV2 has no output it applies to")
        if mean != 0.0 and target in _NOT_EQUIVARIANT_MEANS:
            warnings.warn(f"the checkpoint's '{target}' normaliser has mean {mean:g}: reproduced as the reference "
                          "applies it, it adds the same number to every component and breaks rotation equivariance",
                          stacklevel=3)
        found[mean_field], found[std_field] = mean, std
    return found


def element_references_from_fairchem(checkpoint: dict, energy_lin_ref: torch.Tensor | None,
                                     use_energy_lin_ref: bool | None = None, *, energy_std: float = 1.0):
    r"""The per-element energies (eV, float64, indexed by atomic number) the reference adds to the
    de-normalised energy, or None when it adds none.

    Two sources, summed: fairchem's element references (``checkpoint["elementrefs"]["energy"]``,
    the ``LinearReferences`` state, added after de-normalisation), and OC22's ``energy_lin_ref``
    weight, which the monolithic model adds to the normalised energy when its config has
    ``use_energy_lin_ref`` (and ``load_energy_lin_ref``): :math:`(\hat E + \sum_i l_{Z_i})\sigma_E
    + \mu_E = \hat E\sigma_E + \mu_E + \sum_i \sigma_E l_{Z_i}`, so it is imported as
    :math:`\sigma_E l`. The backbone + heads layout has the weight but no head adds it.
    ``use_energy_lin_ref`` (not None) overrides the config's flag. The model holds the result in
    its weight ``energy_lin_ref``, in the model's dtype: load with ``dtype=torch.float64`` for
    float64 evaluation, so that :math:`\sigma_E l` is not rounded to float32 on the way.

    Raises:
        ValueError: references of a target other than the energy; a dataset config's
            ``element_references`` or ``lin_ref`` whose values the checkpoint does not hold;
            ``use_energy_lin_ref`` without an ``energy_lin_ref`` weight.
    """
    config = checkpoint.get("config") or {}
    model_config = config.get("model") if isinstance(config.get("model"), dict) else config.get("model_attributes")
    cfg, hydra = _backbone_config(_with_registered_names(model_config or {}))
    references = None
    stored = checkpoint.get("elementrefs") or {}
    if not isinstance(stored, dict):
        raise ValueError(f"the checkpoint's 'elementrefs' is a {type(stored).__name__}, not a dict")
    dataset = _dataset_config(checkpoint)
    in_config = (dataset.get("transforms") or {}).get("element_references") or {}
    if not isinstance(in_config, dict):
        raise ValueError(f"the dataset transforms element_references = {in_config!r} is not a dict")
    # as the reference's trainer: the dataset config's references given by value, then the checkpoint's
    by_value = {name: entry["state_dict"] for name, entry in in_config.items()
                if name not in ("file", "fit") and isinstance(entry, dict) and "state_dict" in entry}
    for where, name, state in [*(("the dataset transforms element_references", n, v) for n, v in by_value.items()),
                               *(("elementrefs", n, v) for n, v in stored.items())]:
        if name != "energy":
            raise ValueError(f"element references '{where}' for '{name}': the reference adds them to the energy "
                             "only (so2nn reads the energy's)")
        if not isinstance(state, dict) or set(state) != {"element_references"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"{where}['energy'] has fields {keys}; so2nn reads fairchem's LinearReferences "
                             "state ('element_references')")
        references = torch.as_tensor(state["element_references"], dtype=torch.float64).reshape(-1)
    if in_config:
        named = set(in_config) - {"file", "fit"} - set(by_value)
        fitted = in_config.get("fit", {}).get("targets", []) if isinstance(in_config.get("fit"), dict) else []
        missing = sorted((named | set(fitted)) - set(stored))
        if "file" in in_config and not stored:  # a file's references are among those the trainer saved
            missing.append("file")
        if missing:
            raise ValueError(f"the training dataset config reads element_references of {missing} from a file or a "
                             "fit whose values the checkpoint does not hold (checkpoint['elementrefs'])")
    use = bool(cfg.get("use_energy_lin_ref", False)) and not hydra if use_energy_lin_ref is None \
        else bool(use_energy_lin_ref)
    if dataset.get("lin_ref") and energy_lin_ref is None:
        raise ValueError(f"the training dataset subtracts linear references read from lin_ref={dataset['lin_ref']!r}, "
                         "and the checkpoint has no energy_lin_ref weight holding them")
    if use:
        if energy_lin_ref is None:
            raise ValueError("use_energy_lin_ref is set, but the checkpoint has no energy_lin_ref weight "
                             "(load_energy_lin_ref: True in the reference's config)")
        lin = energy_std * energy_lin_ref.detach().to(torch.float64).reshape(-1)
        references = lin if references is None else _sum_padded(references, lin)
    return references


def _sum_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(max(len(a), len(b)), dtype=torch.float64)
    out[: len(a)] += a
    out[: len(b)] += b
    return out


def _fit_references(references: torch.Tensor, max_num_elements: int) -> torch.Tensor:
    """``references`` cut to the model's element table (the reference's have 119 entries; atomic
    numbers beyond the table cannot be input)."""
    if len(references) < max_num_elements:
        raise ValueError(f"the checkpoint's element references have {len(references)} entries, fewer than the "
                         f"model's {max_num_elements} elements")
    return references[:max_num_elements].clone()


def _check_gradient_forces(normalizers: dict) -> None:
    """For gradient forces (``direct_forces=False``): the reference de-normalises its forces
    (-dE/dr of the normalised energy) with the force normaliser, separately from the energy,
    while so2nn's are the gradient of the de-normalised energy. Raise where the two differ, and
    drop the force entries (so2nn's gradient forces have none)."""
    mean, std = normalizers.pop("forces_mean", 0.0), normalizers.pop("forces_std", 1.0)
    energy_std = normalizers.get("energy_std", 1.0)
    if mean != 0.0 or std != energy_std:
        raise ValueError(f"gradient forces (direct_forces=False) with a force normaliser (mean {mean:g}, std {std:g}) "
                         f"other than the energy's std ({energy_std:g}): the reference's forces would not be the "
                         "gradient of its energy")


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
