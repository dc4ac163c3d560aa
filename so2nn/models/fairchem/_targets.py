"""The targets of a fairchem checkpoint: the trainer's normalisers and the element references it
adds to the energy, which so2nn applies inside the model."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from ._stress import STRESS_TARGETS

if TYPE_CHECKING:
    from ._record import FairchemCheckpoint

__all__ = ["check_gradient_forces", "element_references_from_fairchem", "energy_and_force_fields",
           "fit_references", "normalizers_from_fairchem"]

# The normalisers the reference's trainer applies at prediction: its target name (after the
# renames of old checkpoints) -> the so2nn config fields of (mean, std). The stress targets'
# fields are set with the stress head's options (stress_config_from_fairchem).
_ENERGY_AND_FORCES = {
    "energy": ("energy_mean", "energy_std"),
    "forces": ("forces_mean", "forces_std"),
}
_NORMALIZED_TARGETS = (*_ENERGY_AND_FORCES, *STRESS_TARGETS)
# Old checkpoints' names of the targets.
_OLD_TARGET_NAMES = {"target": "energy", "grad_target": "forces"}
# Normalisers the reference stores and applies in training only: the DeNS trainer's scale of
# its denoising targets (the positions' noise), never of a prediction.
_TRAINING_ONLY_NORMALIZERS = {"denoising_pos_target"}
# Normalisers whose non-zero mean breaks rotation equivariance (a constant vector or traceless
# tensor added whatever the orientation); reproduced for parity, with a warning.
_NOT_EQUIVARIANT_MEANS = {"forces", "stress_anisotropic", "stress"}


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
        values["forces"] = (float(dataset.get("grad_target_mean", 0.0)),
                            float(dataset.get("grad_target_std", 1.0)))
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
            values[name] = (_scalar(entry.get("mean", 0.0), f"{where}'s mean"),
                            _scalar(std, f"{where}'s std"))
        else:
            raise ValueError(f"{where} has fields {sorted(entry)}; so2nn reads 'mean' with 'rmsd' or "
                             "'stdev', 'state_dict', or a 'file' whose values the checkpoint holds")
    return values, elsewhere


def normalizers_from_fairchem(checkpoint: FairchemCheckpoint) -> dict[str, tuple[float, float]]:
    """The reference's target normalisation (kept by its trainer, not its model), by target:
    ``{"energy": (mean, std), "forces": (mean, std)}`` and, for a checkpoint with a stress head,
    ``"stress_isotropic"`` ... (empty when it has none). :func:`energy_and_force_fields` and
    :func:`~so2nn.models.fairchem.stress_config_from_fairchem` make so2nn config fields of them.

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
    values, elsewhere = _config_normalizers(checkpoint.dataset)
    stored = checkpoint.normalizers
    for name, state in stored.items():
        target = _OLD_TARGET_NAMES.get(name, name)
        if target in _TRAINING_ONLY_NORMALIZERS:
            continue
        values[target] = _normalizer_state(state, f"normalizers['{name}']")
        elsewhere.discard(target)
    if stored:  # a file's normalisers are among those the trainer saved
        elsewhere.discard("file")
    if elsewhere:
        raise ValueError(f"the training dataset config reads normalisers of {sorted(elsewhere)} from a file "
                         "or a fit whose values the checkpoint does not hold (checkpoint['normalizers'])")
    found = {}
    for target, (mean, std) in values.items():
        if target in _TRAINING_ONLY_NORMALIZERS:
            continue
        if target not in _NORMALIZED_TARGETS:
            raise ValueError(f"a normaliser of '{target}', a target so2nn does not predict "
                             f"(so2nn reads {sorted(_NORMALIZED_TARGETS)})")
        if mean != 0.0 and target in _NOT_EQUIVARIANT_MEANS:
            warnings.warn(f"the checkpoint's '{target}' normaliser has mean {mean:g}: reproduced as the "
                          "reference applies it, it adds the same number to every component and breaks "
                          "rotation equivariance", stacklevel=3)
        found[target] = (mean, std)
    return found


def energy_and_force_fields(normalizers: dict[str, tuple[float, float]]) -> dict:
    """The so2nn config fields (``energy_mean``, ``energy_std``, ``forces_mean``, ``forces_std``) of
    the energy's and the forces' normalisers among ``normalizers`` (``{target: (mean, std)}``)."""
    found = {}
    for target, (mean_field, std_field) in _ENERGY_AND_FORCES.items():
        if target in normalizers:
            found[mean_field], found[std_field] = normalizers[target]
    return found


def element_references_from_fairchem(checkpoint: FairchemCheckpoint, energy_lin_ref: torch.Tensor | None,
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
    references = None
    stored = checkpoint.elementrefs
    dataset = checkpoint.dataset
    in_config = (dataset.get("transforms") or {}).get("element_references") or {}
    if not isinstance(in_config, dict):
        raise ValueError(f"the dataset transforms element_references = {in_config!r} is not a dict")
    # as the reference's trainer: the dataset config's references given by value, then the checkpoint's
    by_value = {name: entry["state_dict"] for name, entry in in_config.items()
                if name not in ("file", "fit") and isinstance(entry, dict) and "state_dict" in entry}
    sources = [*(("the dataset transforms element_references", n, v) for n, v in by_value.items()),
               *(("elementrefs", n, v) for n, v in stored.items())]
    for where, name, state in sources:
        if name != "energy":
            raise ValueError(f"element references '{where}' for '{name}': "
                             "the reference adds them to the energy only (so2nn reads the energy's)")
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
            raise ValueError(f"the training dataset config reads element_references of {missing} from a file "
                             "or a fit whose values the checkpoint does not hold (checkpoint['elementrefs'])")
    if use_energy_lin_ref is None:  # the reference's own flag, which only its monolithic model reads
        use = bool(checkpoint.model.backbone.get("use_energy_lin_ref", False)) and not checkpoint.model.hydra
    else:
        use = bool(use_energy_lin_ref)
    if dataset.get("lin_ref") and energy_lin_ref is None:
        raise ValueError("the training dataset subtracts linear references read from "
                         f"lin_ref={dataset['lin_ref']!r}, and the checkpoint has no energy_lin_ref weight "
                         "holding them")
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


def fit_references(references: torch.Tensor, max_num_elements: int) -> torch.Tensor:
    """``references`` cut to the model's element table (the reference's have 119 entries; atomic
    numbers beyond the table cannot be input)."""
    if len(references) < max_num_elements:
        raise ValueError(f"the checkpoint's element references have {len(references)} entries, fewer than "
                         f"the model's {max_num_elements} elements")
    return references[:max_num_elements].clone()


def check_gradient_forces(normalizers: dict) -> None:
    """For gradient forces (``direct_forces=False``): the reference de-normalises its forces
    (-dE/dr of the normalised energy) with the force normaliser, separately from the energy,
    while so2nn's are the gradient of the de-normalised energy. Raise where the two differ, and
    drop the force entries (so2nn's gradient forces have none)."""
    mean, std = normalizers.pop("forces", (0.0, 1.0))
    energy_std = normalizers.get("energy", (0.0, 1.0))[1]
    if mean != 0.0 or std != energy_std:
        raise ValueError(f"gradient forces (direct_forces=False) with a force normaliser (mean {mean:g}, "
                         f"std {std:g}) other than the energy's std ({energy_std:g}): the reference's forces "
                         "would not be the gradient of its energy")
