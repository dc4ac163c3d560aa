"""The keys of a fairchem checkpoint: which are applied, which are ignored as training-only, and
the names fairchem gives EquiformerV2's modules."""

from __future__ import annotations

__all__ = ["BACKBONES", "DENS_BACKBONE", "DENS_TRAINING_ONLY", "FAIRCHEM_IGNORED_KEYS", "MONOLITHIC",
           "check_keys", "registered_name", "strip_ddp"]

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

# Keys applied on import (or checked, raising when they would change the numbers), by level.
_APPLIED_KEYS = {
    "checkpoint": {"state_dict", "config", "normalizers", "elementrefs", "ema", "scale_dict"},
    "config": {"model", "model_attributes", "dataset", "outputs"},
    "dataset": {"transforms", "normalize_labels", "target_mean", "target_std", "grad_target_mean",
                "grad_target_std", "lin_ref", "train_on_oc20_total_energies"},
    "transforms": {"normalizer", "element_references"},
}


# DeNS (the equiformer_v2_dens_backbone and the eqV2_DeNS_* heads). What the DeNS checkpoints hold
# beyond a plain model is applied (the force and noise-scale encodings, the denoising attention:
# config_from_fairchem, the weight renames) or concerns only training with denoising, where positions are
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
# The fairchem model names (config ``name``, or the backbone's ``model``) whose numbers so2nn's
# EquiformerV2 reproduces: the deprecated monolithic class, and the backbones of the backbone +
# heads layout.
MONOLITHIC = {"equiformer_v2"}
BACKBONES = {"equiformer_v2_backbone", DENS_BACKBONE}

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


def registered_name(name):
    """fairchem's registered name of a module named by its class path (other names are kept, to
    be checked where they are read)."""
    return _REGISTERED_NAMES.get(name, name) if isinstance(name, str) else name


def strip_ddp(key: str) -> str:
    """A weight's name without DDP's ``module.`` prefixes."""
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def check_keys(checkpoint: dict, config: dict, dataset: dict) -> None:
    """Raise a ValueError naming every key of a fairchem checkpoint (its top level, its config
    ``config``, its training dataset config ``dataset``) that so2nn neither applies nor ignores
    as training-only (:data:`FAIRCHEM_IGNORED_KEYS`). The model config's keys are checked by
    :func:`~so2nn.models.fairchem.config_from_fairchem`."""
    unknown = [f"checkpoint[{k!r}]" for k in checkpoint
               if k not in _APPLIED_KEYS["checkpoint"] | FAIRCHEM_IGNORED_KEYS["checkpoint"]]
    unknown += [f"config[{k!r}]" for k in config
                if k not in _APPLIED_KEYS["config"] | FAIRCHEM_IGNORED_KEYS["config"]]
    unknown += [f"config['dataset'][{k!r}]" for k in dataset
                if k not in _APPLIED_KEYS["dataset"] | FAIRCHEM_IGNORED_KEYS["dataset"]]
    transforms = dataset.get("transforms") or {}
    if not isinstance(transforms, dict):
        raise ValueError(f"the training dataset's 'transforms' is a {type(transforms).__name__}, not a dict")
    unknown += [f"the dataset transforms' {k!r}" for k in transforms
                if k not in _APPLIED_KEYS["transforms"] | FAIRCHEM_IGNORED_KEYS["transforms"]]
    if unknown:
        raise ValueError(f"the checkpoint has keys so2nn does not know: {', '.join(unknown)}. They might "
                         "change the predictions; so2nn applies or ignores (training-only) only the keys it "
                         "knows")
    if checkpoint.get("scale_dict"):
        raise ValueError("the checkpoint holds scale factors 'scale_dict', which the reference's "
                         "EquiformerV2 does not have and so2nn does not apply")
    if dataset.get("train_on_oc20_total_energies"):
        raise ValueError("the training dataset has train_on_oc20_total_energies=True: the model predicts "
                         "OC22 energies less per-system OC20 references ('oc20_ref'), which so2nn does not "
                         "apply")
