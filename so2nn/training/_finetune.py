"""Fine-tuning: a model that starts from a checkpoint's weights, its energy referencing, and
what the run records about where it started."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models import TargetStatistics, build_model, load_checkpoint, load_model, target_statistics_fields

__all__ = ["FAR_SCALE", "FAR_SCALE_GRADIENT", "FINE_TUNING_SETTINGS", "REFIT_CHOICES", "file_sha256",
           "parameter_groups", "pretrained_model", "referenced_statistics", "referencing_notes", "referencing_table"]

#: Model config entries a fine-tuning run may change: regularisation, the graph, the grid and
#: memory options. None of them changes a weight's shape.
FINE_TUNING_SETTINGS = (
    "alpha_drop",
    "drop_path_rate",
    "proj_drop",
    "max_radius",
    "max_neighbors",
    "graph_mode",
    "grid_resolution",
    "checkpoint_activations",
    "recompute_edge_activations",
    "kernels",
)
#: Of those, the ones that change the function the pretrained weights compute (the neighbours
#: each atom sees): allowed, with a warning.
_FUNCTION_CHANGING = ("max_radius", "max_neighbors", "graph_mode")
#: How the energy referencing is set from the new training set (see :func:`referenced_statistics`).
REFIT_CHOICES = ("references", "none", "all")


def _head_of(field: str) -> str | None:
    """The head a config entry belongs to (the stress head's options), or None."""
    return "stress" if field == "stress" or field.startswith("stress_") else None


def _as_entries(old, changes: dict) -> dict:
    """``changes`` as entries of ``old`` (a config): names of an older layout of the config
    (EquiformerV2's flat ``stress_*``) become the entry they change, in plain values."""
    legacy = {name: value for name, value in changes.items() if name not in old.to_dict()}
    if not legacy:
        return changes
    current, grouped = old.to_dict(), old.replace(**legacy).to_dict()  # raises naming a key it does not know
    return {**{k: v for k, v in grouped.items() if v != current[k]},
            **{k: v for k, v in changes.items() if k not in legacy}}


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in chunks: checkpoints may be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_model(
    checkpoint, *, use_ema: bool = True, trust: bool = False, reinit_heads=(), seed: int = 0, **config_changes
) -> tuple[nn.Module, dict]:
    """A model with a checkpoint's architecture and weights, to fine-tune, and its provenance.

    ``checkpoint`` is an so2nn checkpoint (``model.pt``, ``checkpoint.pt``, :meth:`save`) or an
    official fairchem one (path or loaded dict); its EMA weights are taken when present and
    ``use_ema``. The architecture is the checkpoint's. ``config_changes`` may change the
    :data:`FINE_TUNING_SETTINGS` (the cutoff, ``max_neighbors`` and ``graph_mode`` with a
    warning: the pretrained weights then see other neighbours) and add a head the checkpoint
    has none of (``stress={"head": "equivariant"}``, say, or the older flat
    ``stress_head="equivariant"``), whose weights are fresh (seeded with ``seed``).
    ``reinit_heads`` names heads whose weights start fresh instead of from the checkpoint (their
    options may then change too). Any other change (one that would change a weight's shape, or
    what the weights compute) raises a ValueError naming it.

    Returns:
        ``(model, provenance)``: ``provenance`` records the source (``path``, ``sha256`` of
        the file, ``format``), ``use_ema``, the ``config_changes``, ``added_heads`` and
        ``reinitialised_heads``.
    """
    source_path = None if isinstance(checkpoint, dict) else Path(checkpoint)
    state = load_checkpoint(checkpoint, trust=trust)
    source = load_model(state, use_ema)
    old = source.config
    config_changes = _as_entries(old, config_changes)
    heads = getattr(source, "heads", None)
    if heads is None and (reinit_heads or any(_head_of(k) for k in config_changes)):
        raise ValueError(f"{type(source).__name__} has no `heads`: cannot add or re-initialise a head")
    present = set(heads) if heads is not None else set()
    reinit = tuple(dict.fromkeys(reinit_heads))
    unknown = sorted(set(reinit) - present)
    if unknown:
        raise ValueError(f"re-initialise heads {unknown}: the checkpoint's model has heads {sorted(present)}")
    problems = []
    derived = target_statistics_fields(source)
    for name, value in config_changes.items():
        if name not in old.to_dict():
            problems.append(f"{name}: not a {type(old).__name__} entry")
        elif value == getattr(old, name) or name in FINE_TUNING_SETTINGS:
            continue
        elif name in derived:
            problems.append(f"{name}: set by the energy referencing of the run (refit=...), not by hand")
        elif _head_of(name) is not None and (_head_of(name) in reinit or _head_of(name) not in present):
            continue  # an option of a head that starts fresh
        else:
            problems.append(f"{name}: {getattr(old, name)!r} in the checkpoint, {value!r} asked")
    if problems:
        raise ValueError(
            "fine-tuning keeps the checkpoint's architecture (these would change a weight's shape "
            "or what the weights compute; start from scratch to change them, or re-initialise the "
            "head they belong to):\n  " + "\n  ".join(problems)
        )
    moved = [
        f"{k}: {getattr(old, k)!r} -> {config_changes[k]!r}"
        for k in _FUNCTION_CHANGING
        if k in config_changes and config_changes[k] != getattr(old, k)
    ]
    if moved:
        warnings.warn(
            "fine-tuning with another graph than the checkpoint was trained on ("
            + "; ".join(moved)
            + "): the pretrained weights see other neighbours, and the first steps re-learn them",
            stacklevel=2,
        )
    config = old.replace(**config_changes)
    torch.manual_seed(seed)
    model = build_model(config)
    added = sorted(set(getattr(model, "heads", {})) - present)
    fresh = tuple(f"heads.{h}." for h in (*reinit, *added))
    own, weights = model.state_dict(), source.state_dict()
    taken = {k: v for k, v in weights.items() if not k.startswith(fresh)}
    missing = sorted(k for k in own if not k.startswith(fresh) and k not in taken)
    extra = sorted(set(taken) - set(own))
    shapes = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in taken.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or extra or shapes:
        raise ValueError(
            f"the checkpoint's weights do not fit the fine-tuning model: missing {missing}, "
            f"unknown {extra}, shapes {shapes}"
        )
    model.load_state_dict({**own, **taken})
    provenance = {
        "path": None if source_path is None else str(source_path.resolve()),
        "sha256": None if source_path is None else file_sha256(source_path),
        "format": "so2nn" if state.get("format") == "so2nn" else "fairchem",
        "use_ema": bool(use_ema),
        "config_changes": {k: v for k, v in config_changes.items() if v != getattr(old, k)},
        "added_heads": added,
        "reinitialised_heads": list(reinit),
    }
    return model, provenance


def _statistics(stats: TargetStatistics) -> dict:
    return {
        "energy_mean": stats.energy_mean,
        "energy_std": stats.energy_std,
        "forces_std": stats.forces_std,
        "element_references": None if stats.element_references is None else list(stats.element_references),
    }


def referenced_statistics(
    checkpoint: TargetStatistics, data: dict, refit: str
) -> tuple[TargetStatistics, dict]:
    r"""The target statistics a fine-tuning run uses, from the checkpoint's and the new training set's.

    ``data`` is :func:`~so2nn.data.target_statistics` of the training set with element
    references. ``refit``:

    * ``"references"`` (default): element references :math:`\varepsilon_Z` and energy mean
      :math:`\mu_E` re-fitted on the new set, the checkpoint's scales :math:`\sigma_E,
      \sigma_F` kept (a new scale would rescale every pretrained output);
    * ``"none"``: the checkpoint's statistics, all of them;
    * ``"all"``: everything re-fitted, as a run from scratch does.

    Returns the statistics to use and a record of the three (``checkpoint``, ``training_set``,
    ``used``) for the run's provenance and :func:`referencing_table`.
    """
    if refit not in REFIT_CHOICES:
        raise ValueError(f"refit must be one of {REFIT_CHOICES}, got {refit!r}")
    references = tuple(data["element_references"])
    if refit == "none":
        used = checkpoint
    elif refit == "references":
        used = TargetStatistics(data["energy_mean"], checkpoint.energy_std, checkpoint.forces_std, references)
    else:
        used = TargetStatistics(data["energy_mean"], data["energy_std"], data["forces_rms"], references)
    new = TargetStatistics(data["energy_mean"], data["energy_std"], data["forces_rms"], references)
    record = {
        "refit": refit,
        "checkpoint": _statistics(checkpoint),
        "training_set": _statistics(new),
        "used": _statistics(used),
        "raw_energy_mean": data.get("raw_energy_mean", data["energy_mean"]),
        "stress_std": data.get("stress_std"),
    }  # the stress loss's scale, when the data has stress
    return used, record


def referencing_table(record: dict, *, gradient_forces: bool = False) -> str:
    """The statistics of a fine-tuning run (:func:`referenced_statistics`'s record) as a table,
    followed by :func:`referencing_notes` (``gradient_forces``: the model's forces are -dE/dpos).

    Example:
        >>> stats = {"energy_mean": -0.1, "energy_std": 0.4, "forces_rms": 0.2,
        ...          "element_references": [0.0, -3.0],
        ...          "raw_energy_mean": -12.1}
        >>> record = referenced_statistics(TargetStatistics(1.0, 2.0, 0.3), stats, "references")[1]
        >>> print(referencing_table(record))  # doctest: +ELLIPSIS
        energy referencing (refit=references)   checkpoint   training set   used
          energy_mean (eV)                       1.0000        -0.1000    -0.1000
          energy_std (eV)                        2.0000         0.4000     2.0000
          forces_std (eV/A)                      0.3000         0.2000     0.3000
          element references                       none         fitted     fitted
          (training energies: mean -12.1000 eV before the references)
        note: the training set's energy scale (0.4 eV) is 0.2 times the checkpoint's (2 eV)...--refit all...
    """
    columns = [record["checkpoint"], record["training_set"], record["used"]]
    lines = [f"{'energy referencing (refit=' + record['refit'] + ')':<38}  checkpoint   training set   used"]
    for key, label in (
        ("energy_mean", "energy_mean (eV)"),
        ("energy_std", "energy_std (eV)"),
        ("forces_std", "forces_std (eV/A)"),
    ):
        a, b, c = (column[key] for column in columns)
        lines.append(f"  {label:<34}{a:>11.4f}    {b:>11.4f}{c:>11.4f}")
    marks = [
        "none"
        if column["element_references"] is None
        else (
            "fitted"
            if column is not columns[0] and column["element_references"] == columns[1]["element_references"]
            else "stored"
        )
        for column in columns
    ]
    lines.append(f"  {'element references':<34}{marks[0]:>11}    {marks[1]:>11}{marks[2]:>11}")
    lines.append(f"  (training energies: mean {record['raw_energy_mean']:.4f} eV before the references)")
    notes = referencing_notes(record, gradient_forces=gradient_forces)
    return "\n".join(lines + [f"note: {note}" for note in notes])


#: How far (a factor either way) the training set's energy or force scale may be from the
#: checkpoint's kept one before :func:`referencing_notes` names ``refit="all"``: beyond what was
#: measured (with direct forces, fine-tuning with the kept scales ended at or ahead of training
#: from scratch, or level with it, with energy scales up to 3.1 times apart, force scales up to 1.3).
FAR_SCALE = 4.0
#: The same for the energy scale of a model whose forces are the energy's gradient: its forces
#: are scaled by the energy's scale. Measured (slabs to bulk, energy scales 1.75 and 2.3 times
#: apart): the kept scale ended 5 % and 4 % behind training from scratch, ``refit="all"`` 4 % and
#: 6 % ahead of it.
FAR_SCALE_GRADIENT = 1.5


def referencing_notes(record: dict, *, gradient_forces: bool = False) -> list[str]:
    """What a run with these statistics (:func:`referenced_statistics`'s record) should know:
    with ``refit="references"``, a training set whose energy or force scale is more than
    :data:`FAR_SCALE` times (or less than 1 / :data:`FAR_SCALE` of) the checkpoint's kept one;
    for a model with ``gradient_forces`` (forces = -dE/dpos), an energy scale beyond
    :data:`FAR_SCALE_GRADIENT`.

    The kept scale then weighs the loss's energy and force terms, and sizes every step of the
    pretrained outputs, for data of another scale; ``refit="all"`` (``--refit all``) re-fits
    it, as a run from scratch does.
    """
    if record["refit"] != "references":
        return []
    notes = []
    for key, what, unit in (("energy_std", "energy", "eV"), ("forces_std", "force", "eV/A")):
        kept, new = record["checkpoint"][key], record["training_set"][key]
        far = FAR_SCALE_GRADIENT if gradient_forces and key == "energy_std" else FAR_SCALE
        if not (kept > 0 and new > 0) or 1 / far <= new / kept <= far:
            continue
        notes.append(f"the training set's {what} scale ({new:.4g} {unit}) is {new / kept:.3g} times the checkpoint's "
                     f"({kept:.4g} {unit}), which this run keeps"
                     + (" (the scale of the forces too: they are the energy's gradient)"
                        if gradient_forces and key == "energy_std" else "")
                     + ": should it end behind the same model trained from scratch, re-fit the scales with "
                     "--refit all (refit='all')")
    return notes


def parameter_groups(
    model: nn.Module, freeze_backbone: bool, backbone_lr_factor: float, lr: float
) -> list[dict]:
    """The optimiser's parameter groups: one of all weights, or (when the backbone is frozen or
    has its own learning rate) the heads' at ``lr`` first, then the backbone's at
    ``backbone_lr_factor * lr``. Freezing turns off the backbone's gradients (in place)."""
    if not freeze_backbone and backbone_lr_factor == 1.0:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if not isinstance(getattr(model, "heads", None), nn.ModuleDict):
        raise ValueError(
            f"{type(model).__name__} has no `heads` (a ModuleDict): "
            "cannot tell the backbone from the heads, to freeze it or give it its own learning rate"
        )
    heads, backbone = [], []
    for name, parameter in model.named_parameters():
        (heads if name.startswith("heads.") else backbone).append(parameter)
    if freeze_backbone:
        for parameter in backbone:
            parameter.requires_grad_(False)
        return [{"params": [p for p in heads if p.requires_grad], "lr": lr, "name": "heads"}]
    return [
        {"params": [p for p in heads if p.requires_grad], "lr": lr, "name": "heads"},
        {
            "params": [p for p in backbone if p.requires_grad],
            "lr": lr * backbone_lr_factor,
            "name": "backbone",
        },
    ]
