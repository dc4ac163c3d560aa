"""What a training run was run on, recorded in its checkpoint, and the checks of a resume against it."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

from torch.utils.data import ConcatDataset, Subset

from ..data import ValidationSplit, sidecar_path
from ..models import ModelConfig, config_from_dict, model_class, target_statistics_fields
from ._config import RESUMABLE, TrainingConfig

__all__ = ["check_resume", "data_fingerprint", "fingerprint_differences", "recorded_split"]

_PROBES = 3  # items whose energies are recorded (first, middle, last): cheap, and catch in-memory swaps


def data_fingerprint(dataset) -> dict:
    """A cheap fingerprint of a dataset: its type, record count, files, and a few of its energies.

    For a file-backed dataset (so2nn's readers, which list their ``files``), each file's
    absolute path, size in bytes and modification time; for OC20's extxyz files, their
    ``.txt`` sidecars too. No file is read beyond the few probed items, so it costs the same
    for a test set and for hundreds of GB: a changed file of the same size and modification
    time, in an item not probed, is not seen. ``Subset`` and ``ConcatDataset`` are described
    by their parts; any other dataset (a list of ``Data``, say) by its length and probes. Only
    plain Python values, so that it can be stored in a checkpoint. A part of a validation split
    (:func:`~so2nn.data.split_dataset`) records the whole split, which :func:`recorded_split`
    reads back.

    Example:
        >>> import torch
        >>> from torch_geometric.data import Data
        >>> frames = [Data(energy=torch.tensor([float(i)])) for i in range(5)]
        >>> data_fingerprint(frames)
        {'type': 'list', 'length': 5, 'energies': [0.0, 2.0, 4.0]}
        >>> fingerprint_differences(data_fingerprint(frames), data_fingerprint(frames[:4]), "training data")
        ['training data: 5 records in the run, 4 now']
        >>> before = data_fingerprint(frames)
        >>> frames[4] = Data(energy=torch.tensor([-1.0]))
        >>> fingerprint_differences(before, data_fingerprint(frames), "training data")
        ['training data: energies of items 0, middle, last: [0.0, 2.0, 4.0] in the run, [0.0, 2.0, -1.0] now']
    """
    if isinstance(dataset, Subset):
        indices = [int(i) for i in dataset.indices]
        record = {"type": "Subset", "length": len(indices), "indices": _summary(indices),
                  "of": data_fingerprint(dataset.dataset)}
        if isinstance(getattr(dataset, "split", None), ValidationSplit):
            record["split"] = dataset.split.to_dict()
        return record
    if isinstance(dataset, ConcatDataset):
        return {
            "type": "ConcatDataset",
            "length": len(dataset),
            "parts": [data_fingerprint(d) for d in dataset.datasets],
        }
    record: dict = {"type": type(dataset).__name__, "length": len(dataset)}
    if getattr(dataset, "path", None) is not None:
        record["path"] = str(dataset.path)
    files = [Path(f) for f in getattr(dataset, "files", None) or []]
    if files:
        listed = []
        for file in files:
            listed.append(file)
            if file.name.endswith((".extxyz", ".extxyz.xz")):
                try:
                    listed.append(sidecar_path(file))
                except (FileNotFoundError, ValueError):
                    pass  # the reader itself reports a missing sidecar
        record["files"] = [_stat(f) for f in listed]
        if getattr(dataset, "lengths", None) is not None:
            record["records_per_file"] = [int(n) for n in dataset.lengths]
    energies = _probe(dataset)
    if energies is not None:
        record["energies"] = energies
    return record


def fingerprint_differences(recorded: dict, current: dict, what: str) -> list[str]:
    """How ``current`` differs from ``recorded`` (both from :func:`data_fingerprint`), one line each."""
    out = []
    if recorded.get("type") != current.get("type"):
        out.append(f"{what}: a {recorded.get('type')} in the run, a {current.get('type')} now")
    if recorded.get("length") != current.get("length"):
        out.append(f"{what}: {recorded.get('length')} records in the run, {current.get('length')} now")
    if recorded.get("indices") != current.get("indices"):
        out.append(
            f"{what}: other subset indices ({recorded.get('indices')} in the run, "
            f"{current.get('indices')} now)"
        )
    if "of" in recorded or "of" in current:
        out += fingerprint_differences(recorded.get("of") or {}, current.get("of") or {}, what)
    old_parts, new_parts = recorded.get("parts") or [], current.get("parts") or []
    if len(old_parts) != len(new_parts):
        out.append(f"{what}: {len(old_parts)} concatenated datasets in the run, {len(new_parts)} now")
    for k, (old, new) in enumerate(zip(old_parts, new_parts)):
        out += fingerprint_differences(old, new, f"{what}, part {k}")
    old_files = {f["path"]: f for f in recorded.get("files") or []}
    new_files = {f["path"]: f for f in current.get("files") or []}
    for path in sorted(old_files.keys() - new_files.keys()):
        out.append(f"{what}: {path} was in the run, not now")
    for path in sorted(new_files.keys() - old_files.keys()):
        out.append(f"{what}: {path} is new (not in the run)")
    for path in sorted(old_files.keys() & new_files.keys()):
        old, new = old_files[path], new_files[path]
        if old["size"] != new["size"]:
            out.append(f"{what}: {path} had {old['size']} bytes in the run, {new['size']} now")
        elif old["mtime_ns"] != new["mtime_ns"]:
            out.append(f"{what}: {path} was modified since the run (same size, other modification time)")
    if not out and recorded.get("records_per_file") != current.get("records_per_file"):
        out.append(
            f"{what}: other records per file ({recorded.get('records_per_file')} in the run, "
            f"{current.get('records_per_file')} now)"
        )
    if not out and recorded.get("energies") != current.get("energies"):
        out.append(
            f"{what}: energies of items 0, middle, last: {recorded.get('energies')} in the run, "
            f"{current.get('energies')} now"
        )
    return out


def check_resume(
    state: dict,
    config: TrainingConfig,
    model_config: ModelConfig | None,
    train_set,
    val_set,
    allow_data_change: bool = False,
    where: str = "the checkpoint",
) -> ModelConfig:
    """Check that resuming the run of ``state`` (an so2nn training checkpoint, upgraded) with
    ``config``, ``model_config`` (None: not compared) and these datasets is the same run, and
    return the run's model config.

    Raises a ValueError naming each difference: a training setting other than the
    :data:`~so2nn.training.RESUMABLE` ones, a ``max_steps`` before the run's step, a model config
    entry (but the :func:`~so2nn.models.target_statistics_fields`, which the run derived from its
    data), and data whose :func:`data_fingerprint` differs from the recorded one (a warning
    instead with ``allow_data_change``).
    """
    recorded = TrainingConfig(**state["training_config"])
    problems = [
        f"{field.name}: {getattr(recorded, field.name)!r} in the run, {getattr(config, field.name)!r} now"
        for field in dataclasses.fields(TrainingConfig)
        if field.name not in RESUMABLE and getattr(config, field.name) != getattr(recorded, field.name)
    ]
    if config.max_steps < state["step"]:
        problems.append(f"max_steps: {config.max_steps} is before the run's step {state['step']}")
    model_type = model_class(state["model_type"])
    run_model = config_from_dict(model_type, state["config"])
    if model_config is not None:
        derived = target_statistics_fields(model_type)
        problems += [
            f"model {name}: {getattr(run_model, name)!r} in the run, {getattr(model_config, name)!r} now"
            for name in run_model.to_dict()
            if name not in derived and _plain(getattr(model_config, name)) != _plain(getattr(run_model, name))
        ]
    data_problems = []
    recorded_data = state.get("data")
    if recorded_data is None:
        warnings.warn(
            "the checkpoint records no data sources (written by an older so2nn): "
            "cannot check that the resume uses the run's data",
            stacklevel=3,
        )
    else:
        for key, what, dataset in (
            ("train", "training data", train_set),
            ("val", "validation data", val_set),
        ):
            data_problems += fingerprint_differences(recorded_data[key], data_fingerprint(dataset), what)
    if data_problems and allow_data_change:
        warnings.warn(
            "resuming on data that differs from the run's: " + "; ".join(data_problems), stacklevel=3
        )
    elif data_problems:
        problems += [
            *data_problems,
            (
                "(the same data moved or copied elsewhere: allow_data_change=True, "
                "--allow-data-change on the command line)"
            ),
        ]
    if problems:
        raise ValueError(
            f"cannot resume {where}: this would not be the same run.\n  "
            + "\n  ".join(problems)
            + f"\nA resume may change only {', '.join(RESUMABLE)} (and the device, threads, logging); "
            "for another recipe or other data, start a new run in another output directory."
        )
    return run_model


def _plain(value):
    """Config values as compared across a checkpoint round trip (tuples and lists alike)."""
    return list(value) if isinstance(value, tuple) else value


def recorded_split(checkpoint) -> ValidationSplit | None:
    """The validation split a run drew from its training data, from its checkpoint (a path or
    the loaded dict); ``None`` when the run had a validation set of its own.

    Resuming with the recorded split (:meth:`~so2nn.data.ValidationSplit.apply`) validates on
    the same frames, whatever the seed or fraction given now.
    """
    if not isinstance(checkpoint, dict):
        from ..models import load_checkpoint

        checkpoint = load_checkpoint(checkpoint)
    record = ((checkpoint.get("data") or {}).get("val") or {}).get("split")
    return None if record is None else ValidationSplit.from_dict(record)


def _stat(path: Path) -> dict:
    path = Path(os.path.abspath(path))
    try:
        stat = path.stat()
    except OSError:
        return {"path": str(path), "size": -1, "mtime_ns": -1}
    return {"path": str(path), "size": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def _summary(indices: list[int]) -> list[int]:
    """A short stand-in for a list of indices: count, first, last, and a checksum."""
    checksum = 0
    for i, index in enumerate(indices):
        checksum = (checksum * 1_000_003 + index + i) % (2**61 - 1)
    return [len(indices), indices[0] if indices else -1, indices[-1] if indices else -1, checksum]


def _probe(dataset) -> list[float] | None:
    n = len(dataset)
    if n == 0:
        return None
    energies = []
    for index in sorted({0, n // 2, n - 1})[:_PROBES]:
        energy = getattr(dataset[index], "energy", None)
        if energy is None:
            return None
        energies.append(float(energy.reshape(-1)[0]) if hasattr(energy, "reshape") else float(energy))
    return energies
