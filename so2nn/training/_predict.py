"""Evaluating a model on a dataset, and writing its predictions in OC20's S2EF submission format."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from .._files import atomic_write
from ._metrics import S2EFMetrics
from ._provenance import data_fingerprint

__all__ = ["evaluate_model", "write_predictions"]


def model_outputs(model, dataset, indices: Sequence[int], batch_size: int, device,
                  autocast: Callable | None = None):
    """The one batching loop of evaluation: ``model`` on the items ``indices`` of ``dataset``,
    ``batch_size`` at a time, in order, under ``autocast()`` (default: none). Serves the
    Trainer's validation and predictions, :func:`evaluate_model` and :func:`write_predictions`.

    Yields:
        ``(items, batch, out)``: the batch's items as read, their ``Batch`` on ``device`` and
        the model's outputs on it.
    """
    device = torch.device(device)
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        batch = Batch.from_data_list(items).to(device)
        with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
            out = model(batch)
        yield items, batch, out


def _bar(total: int, desc: str, progress: bool, initial: int = 0):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="system", dynamic_ncols=True)


class EvaluationStopped(Exception):
    """Raised by :func:`accumulate_metrics` when its ``stop`` says so between two batches."""


def accumulate_metrics(model, dataset, indices: Sequence[int], batch_size: int, device, metrics: S2EFMetrics,
                       free_atoms_only: bool = True, autocast: Callable | None = None,
                       progress: bool = False, stop: Callable[[], bool] | None = None) -> S2EFMetrics:
    """Add ``model``'s errors on the items ``indices`` of ``dataset`` (batches of ``batch_size``
    in order) to ``metrics``; the loop behind :func:`evaluate_model` and the Trainer's validation.
    ``stop``: asked after every batch; when it answers True the loop ends with
    :class:`EvaluationStopped` (a Ctrl-C during a long validation)."""
    model.eval()
    bar = _bar(len(indices), "evaluate", progress)
    for _, batch, out in model_outputs(model, dataset, indices, batch_size, device, autocast):
        if stop is not None and stop():
            if bar is not None:
                bar.close()
            raise EvaluationStopped
        fixed = getattr(batch, "fixed", None)
        mask = ~fixed.bool() if free_atoms_only and fixed is not None else None
        metrics.update(out["energy"].float(), batch.energy.view(-1), out["forces"].float(), batch.forces,
                       batch.batch, mask)
        if "stress" in out and getattr(batch, "stress", None) is not None:
            metrics.update_stress(out["stress"].float(), batch.stress)
        if bar is not None:
            bar.update(batch.num_graphs)
    if bar is not None:
        bar.close()
    return metrics


@torch.no_grad()
def evaluate_model(model, dataset, batch_size: int = 16, device: str | torch.device = "cpu",
                   free_atoms_only: bool = True, energy_baseline: float = 0.0,
                   progress: bool = False) -> dict[str, float]:
    """OC20's S2EF metrics of ``model`` on a labelled ``dataset``: energy MAE, force MAE, force
    cosine, EFwT and the baselines (predicting ``energy_baseline``, the training mean, and zero
    forces), plus the stress MAEs where data and model have stress (:class:`S2EFMetrics`).

    The items are batched in order, ``batch_size`` at a time, as the Trainer validates: with
    the Trainer's ``eval_batch_size`` and the exported (EMA) weights it gives the numbers of
    the run's last validation. Forces of free atoms only with ``free_atoms_only`` (OC20's
    convention).

    Example:
        >>> import tempfile
        >>> from so2nn.data import make_emt_dataset, open_dataset
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> _, val = make_emt_dataset(tempfile.mkdtemp(), train_systems=1, val_systems=1, frames_per_system=2)
        >>> model = EquiformerV2(EquiformerV2Config.tiny())
        >>> sorted(evaluate_model(model, open_dataset(val)))[:3]
        ['efwt', 'energy_mae', 'energy_mae_mean_baseline']
    """
    metrics = S2EFMetrics(energy_baseline=energy_baseline)
    model = model.to(device)
    accumulate_metrics(model, dataset, list(range(len(dataset))), batch_size, torch.device(device), metrics,
                       free_atoms_only, progress=progress)
    return metrics.compute()


def _model_hash(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                      if tensor.numel() else b"")
    return digest.hexdigest()[:16]


def _system_id(item) -> str:
    """OC20's id of a frame, ``"<sid>_<fid>"`` (``"<sid>"`` without a frame number)."""
    sid = getattr(item, "sid", None)
    if sid is None:
        raise ValueError("an item has no 'sid': the S2EF submission format identifies every system by it")
    fid = getattr(item, "fid", None)
    return f"{sid}_{fid}" if fid is not None else f"{sid}"


def _save_npz(path: Path, arrays: dict) -> None:
    # a file object: numpy would append .npz to the name
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


@torch.no_grad()
def write_predictions(
    model,
    dataset,
    path: str | os.PathLike,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    dtype: str = "float16",
    save_every: int = 50,
    progress: bool = False,
    stop_after: int | None = None,
) -> Path | None:
    r"""Write ``model``'s predictions on ``dataset`` in OC20's S2EF submission format: an
    ``.npz`` with

    =============  ==================  ====================================================
    key            shape, dtype        what
    =============  ==================  ====================================================
    ``ids``        ``[B]``, str        ``"<sid>_<fid>"`` of each frame, sorted (as
                                       fairchem's trainer writes them: ``np.unique``)
    ``energy``     ``[B]``, dtype      predicted energy (eV), in the dataset's referencing
    ``forces``     ``[F, 3]``, dtype   predicted forces (eV/A) of each frame's free atoms
                                       (not ``fixed``), frames concatenated in ``ids`` order
    ``chunk_idx``  ``[B - 1]``, int64  where each frame's forces end: ``np.split(forces,
                                       chunk_idx)`` gives the frames' arrays
    =============  ==================  ====================================================

    what fairchem's ``predict`` saves and the OC20 evaluation server reads (``dtype`` float16
    by default, as there; ``"float32"`` for full precision). Items need a ``sid`` (and
    ``fid``); labels are not read.

    Resumable: every ``save_every`` batches the results so far are written atomically to
    ``<path>.partial.npz``, with a fingerprint of the model's weights, the dataset and the
    options; a later call with the same ones continues after the last saved batch (one with
    others raises, naming the partial file to delete), and the finished file is the same as
    an uninterrupted run's. ``stop_after`` batches of this call, it saves and returns ``None``
    (as a job that runs out of time would stop); otherwise the path of the finished file.

    Example:
        >>> import tempfile
        >>> from so2nn.data import make_emt_dataset, open_dataset
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> root = tempfile.mkdtemp()
        >>> _, val = make_emt_dataset(root, train_systems=1, val_systems=2, frames_per_system=2)
        >>> model = EquiformerV2(EquiformerV2Config.tiny())
        >>> path = write_predictions(model, open_dataset(val), root + "/val.npz", batch_size=3)
        >>> result = np.load(path)
        >>> frames = np.split(result["forces"], result["chunk_idx"])
        >>> result["ids"].tolist(), result["energy"].dtype, len(frames)
        (['1_0', '1_1', '2_0', '2_1'], dtype('float16'), 4)
    """
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if batch_size < 1 or save_every < 1:
        raise ValueError(f"batch_size and save_every must be >= 1, got {batch_size} and {save_every}")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"the predictions file must end in .npz, got {path.name}")
    partial = path.with_name(path.name[: -len(".npz")] + ".partial.npz")
    device = torch.device(device)
    model = model.to(device).eval()
    fingerprint = json.dumps(
        {
            "model": _model_hash(model),
            "data": data_fingerprint(dataset),
            "batch_size": batch_size,
            "dtype": dtype,
        },
        sort_keys=True,
        default=str,
    )
    ids: list[str] = []
    energies: list[np.ndarray] = []
    forces: list[np.ndarray] = []
    counts: list[int] = []
    if partial.exists():
        try:
            with np.load(partial) as saved:
                if str(saved["fingerprint"]) != fingerprint:
                    raise ValueError(
                        f"{partial}: partial predictions of another model, dataset or options "
                        f"(batch size, dtype); delete it to start again"
                    )
                ids = saved["ids"].tolist()
                energies, forces, counts = [saved["energy"]], [saved["forces"]], saved["counts"].tolist()
        except (OSError, KeyError, EOFError) as error:
            raise ValueError(
                f"{partial}: cannot read the partial predictions ({error}); delete it to start again"
            ) from error
    done = len(ids)
    target = np.float16 if dtype == "float16" else np.float32

    def save(file: Path, final: bool) -> None:
        energy = np.concatenate(energies) if energies else np.zeros(0, target)
        force = np.concatenate(forces) if forces else np.zeros((0, 3), target)
        if not final:
            _save_npz(
                file,
                {
                    "ids": np.array(ids, dtype=str),
                    "energy": energy,
                    "forces": force,
                    "counts": np.array(counts, dtype=np.int64),
                    "fingerprint": np.array(fingerprint),
                },
            )
            return
        unique, first = np.unique(np.array(ids, dtype=str), return_index=True)
        if len(unique) != len(ids):
            raise ValueError(
                f"the dataset repeats system ids ({len(ids) - len(unique)} duplicates): "
                f"the submission format needs one prediction per '<sid>_<fid>'"
            )
        chunks = np.split(force, np.cumsum(counts)[:-1]) if counts else []
        _save_npz(
            file,
            {
                "ids": unique,
                "energy": energy[first],
                "forces": np.concatenate([chunks[i] for i in first]) if len(first) else force,
                "chunk_idx": np.cumsum([counts[i] for i in first])[:-1].astype(np.int64),
            },
        )

    bar = _bar(len(dataset), "predict", progress, initial=done)
    batches = 0
    try:
        indices = range(done, len(dataset))
        for items, batch, out in model_outputs(model, dataset, indices, batch_size, device):
            free = (
                ~batch.fixed.bool()
                if getattr(batch, "fixed", None) is not None
                else torch.ones(batch.num_nodes, dtype=torch.bool, device=device)
            )
            ids.extend(_system_id(item) for item in items)
            energies.append(out["energy"].detach().reshape(-1).float().cpu().numpy().astype(target))
            forces.append(out["forces"].detach()[free].float().cpu().numpy().astype(target))
            counts.extend(torch.bincount(batch.batch[free], minlength=len(items)).tolist())
            batches += 1
            if bar is not None:
                bar.update(len(items))
            finished = done + batches * batch_size >= len(dataset)
            if not finished and (batches % save_every == 0 or batches == stop_after):
                save(partial, final=False)
            if not finished and batches == stop_after:
                return None
    finally:
        if bar is not None:
            bar.close()
    save(path, final=True)
    partial.unlink(missing_ok=True)
    return path
