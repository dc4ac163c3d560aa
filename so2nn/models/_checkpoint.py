"""so2nn's checkpoint format, read and written atomically.

A checkpoint is a dict with ``format="so2nn"``, ``version``, ``model_type`` (the name the
model's class is registered under, see :func:`~so2nn.models.register_model`), ``config`` (the
model config as a dict), ``model`` (a state_dict) and optionally ``ema`` (the EMA weights as a
state_dict) plus whatever a trainer adds (optimiser, scheduler, step, RNG states).

Version 1 (before models recorded their type) was written by EquiformerV2 only, with its head
weights at ``energy_block.*`` / ``force_block.*``: :func:`upgrade_checkpoint` reads it as
version 2 (type ``"equiformer_v2"``, heads under ``heads.energy.*`` / ``heads.forces.*``).

:func:`load_model`, the generic loader, reads a file (or takes a loaded dict) and hands it to the
importer registered for its layout: so2nn's format is read here (importer ``"so2nn"``).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .._files import atomic_write
from ._registry import config_from_dict, importer_of, load_weights, model_class, model_type, register_importer

__all__ = ["FORMAT_VERSION", "atomic_save", "is_so2nn_checkpoint", "load_checkpoint", "load_model",
           "model_checkpoint", "upgrade_checkpoint"]

FORMAT_VERSION = 2

# Version 1's EquiformerV2 head weights -> their module in version 2.
_V1_HEAD_PREFIXES = (("energy_block.", "heads.energy.energy_block."), ("force_block.", "heads.forces.force_block."))


def model_checkpoint(model, ema_state_dict: dict | None = None, **extra) -> dict:
    """The checkpoint dict of ``model`` (type, config, weights), with optional EMA weights and extras."""
    return {
        "format": "so2nn",
        "version": FORMAT_VERSION,
        "model_type": model_type(model),
        "config": model.config.to_dict(),
        "model": model.state_dict(),
        "ema": ema_state_dict,
        **extra,
    }


def _v1_keys(state_dict: dict) -> dict:
    def rename(key: str) -> str:
        for old, new in _V1_HEAD_PREFIXES:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    return {rename(k): v for k, v in state_dict.items()}


def upgrade_checkpoint(checkpoint: dict) -> dict:
    """An so2nn checkpoint dict in the current format (a new dict; the input is not changed).

    A version-1 checkpoint becomes an ``"equiformer_v2"`` one with its head weights renamed,
    in ``model``, ``ema`` and a training checkpoint's ``ema_state``; a version newer than this
    code raises.
    """
    version = checkpoint.get("version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"so2nn checkpoint version {version!r} is newer than this so2nn reads ({FORMAT_VERSION})")
    if version == FORMAT_VERSION:
        return checkpoint
    upgraded = {**checkpoint, "version": FORMAT_VERSION, "model_type": "equiformer_v2",
                "model": _v1_keys(checkpoint["model"])}
    if checkpoint.get("ema") is not None:
        upgraded["ema"] = _v1_keys(checkpoint["ema"])
    if isinstance(checkpoint.get("ema_state"), dict):
        upgraded["ema_state"] = {**checkpoint["ema_state"], "weights": _v1_keys(checkpoint["ema_state"]["weights"])}
    return upgraded


def is_so2nn_checkpoint(checkpoint: dict) -> bool:
    """Whether a loaded checkpoint dict is in so2nn's format (``format="so2nn"``)."""
    return isinstance(checkpoint, dict) and checkpoint.get("format") == "so2nn"


def _load_so2nn(checkpoint: dict, use_ema: bool = True, *, dtype: torch.dtype | None = None,
                **config_changes) -> nn.Module:
    """The model of an so2nn checkpoint dict, of the type it records (the ``"so2nn"`` importer)."""
    checkpoint = upgrade_checkpoint(checkpoint)
    cls = model_class(checkpoint["model_type"])
    config = config_from_dict(cls, checkpoint["config"])
    if config_changes:
        config = config.replace(**config_changes)
    weights = checkpoint["ema"] if use_ema and checkpoint.get("ema") is not None else checkpoint["model"]
    model = cls.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    load_weights(model, weights)
    return model


register_importer("so2nn", is_so2nn_checkpoint, _load_so2nn)


def load_model(checkpoint: str | os.PathLike | dict, use_ema: bool = True, *, trust: bool = False,
               dtype: torch.dtype | None = None, **config_changes) -> nn.Module:
    """The model of a checkpoint (path or loaded dict), read by the importer registered for its
    layout (:func:`~so2nn.models.register_importer`).

    so2nn checkpoints (a model's ``save``, a trainer's ``model.pt`` or ``checkpoint.pt``) name
    their type; those written before types were recorded are EquiformerV2's. A checkpoint of
    the reference implementation (fairchem) is read by
    :meth:`~so2nn.models.EquiformerV2.from_fairchem`. EMA weights are used when present and
    ``use_ema``; ``config_changes`` override config entries (inference options such as
    ``grid_resolution``). A file is read as data only, never running code named in it;
    ``trust=True`` lifts that for a file whose origin you trust (see
    :func:`~so2nn.models._checkpoint.load_checkpoint`). ``dtype``: the model is built in it
    before the weights are copied in, so a float64 model gets the checkpoint's float64 values
    (an imported checkpoint's element references, say) rather than their float32 rounding.

    Raises:
        ValueError: the file cannot be read (see :func:`~so2nn.models._checkpoint.load_checkpoint`);
            no registered importer recognises the checkpoint; the importer's own errors.

    Example:
        >>> import tempfile
        >>> from so2nn.models import EquiformerV2, EquiformerV2Config
        >>> path = tempfile.mkdtemp() + "/model.pt"
        >>> EquiformerV2(EquiformerV2Config(lmax=2, mmax=1, num_layers=1)).save(path)
        >>> load_model(path, grid_resolution=12).config.grid_resolution
        12
    """
    checkpoint = load_checkpoint(checkpoint, trust=trust)
    return importer_of(checkpoint).load(checkpoint, use_ema, dtype=dtype, **config_changes)


def atomic_save(obj, path) -> None:
    """``torch.save`` through :func:`~so2nn._files.atomic_write`: a crash mid-write leaves the
    previous file intact, never a truncated one."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def _numpy_globals() -> list:
    """What a weights-only load must admit for numpy values: arrays (an RNG state from
    ``np.random.get_state``), scalars (``np.float64`` metrics) and numeric, bool and string
    dtypes, under numpy 2's module names and numpy 1's (``numpy.core``), which older files
    name. Object arrays are not admitted."""
    import numpy as np

    reconstruct, scalar = np._core.multiarray._reconstruct, np._core.multiarray.scalar
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes)
              if name.endswith("DType") and name not in ("ObjectDType", "VoidDType", "StringDType")]
    return [np.ndarray, np.dtype, reconstruct, scalar, *dtypes,
            (reconstruct, "numpy.core.multiarray._reconstruct"), (scalar, "numpy.core.multiarray.scalar")]


def _unsafe_globals(path: Path) -> list[str]:
    """The globals (classes, functions) that ``path``'s pickle names beyond the allowlist."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: a plain pickle, read op by op
        names = _pickle_globals(path.read_bytes())
    allowed = {entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"
               for entry in _numpy_globals()}
    return sorted(n for n in names if n not in allowed)


def _pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` globals a plain pickle imports (GLOBAL and STACK_GLOBAL opcodes)."""
    import pickletools

    names, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged pickle: what was read so far
        pass
    return names


def load_checkpoint(checkpoint, map_location="cpu", trust: bool = False) -> dict:
    """A loaded checkpoint dict from a path (or the dict itself), with a clear error for a
    missing, truncated or foreign file.

    The file is read as data only (``torch.load(..., weights_only=True)``): tensors, plain
    containers and numbers, and numpy arrays, scalars and dtypes, which covers so2nn's own
    checkpoints (with their RNG states) and fairchem's released ones. A pickle that would
    build anything else, i.e. run code named in the file, is refused with a ValueError naming
    what it needs. ``trust=True`` lifts the restriction (a full unpickle): pass it only for
    files whose origin you trust.

    A torch (zip) file's members are checked against their CRCs first, so a damaged byte in a
    tensor raises instead of loading as a wrong weight.

    Raises:
        ValueError: ``checkpoint`` is not a file; the file is empty, truncated or damaged (a
            zip without its directory, a pickle that ends early, a CRC mismatch) or not a
            PyTorch checkpoint (text, another format: said which where it can tell); it needs
            globals outside the allowlist (named) and ``trust`` is False; it holds something
            other than a dict.

    Example:
        >>> import tempfile, numpy as np
        >>> path = tempfile.mkdtemp() + "/state.pt"
        >>> atomic_save({"step": 3, "rng": np.random.get_state()}, path)
        >>> load_checkpoint(path)["step"]
        3
    """
    if isinstance(checkpoint, dict):
        return checkpoint
    path = Path(checkpoint)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory, not a checkpoint file")
    if not path.is_file():
        raise ValueError(f"checkpoint file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"could not read checkpoint {path}: the file is empty")
    _check_kind(path)
    _check_zip(path)
    try:
        if trust:
            loaded = torch.load(path, map_location=map_location, weights_only=False)
        else:
            with torch.serialization.safe_globals(_numpy_globals()), warnings.catch_warnings():
                # plain pickles (protocol > 2) load fine; torch warns about them regardless
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                loaded = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        needed = _unsafe_globals(path)
        if not needed:
            needed = sorted(set(re.findall(r"GLOBAL (\S+) (?:was not an allowed|whose module)", str(error))))
        if needed:
            raise ValueError(
                f"checkpoint {path} needs {', '.join(needed)} to be unpickled, which a data-only load does not "
                f"admit (unpickling it could run code from the file); if you trust the file's origin, load it "
                f"with trust=True"
            ) from None
        raise ValueError(f"could not read checkpoint {path}: the file is truncated or damaged "
                         f"({_first_line(error)})") from None
    except Exception as error:  # truncated, corrupt or not a torch file
        raise ValueError(f"could not read checkpoint {path}: {_what_went_wrong(path, error)}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"checkpoint {path} holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded


def _check_zip(path: Path) -> None:
    """Check the CRC of every member of a torch (zip) checkpoint: torch's reader does not, and a
    damaged byte inside a tensor would otherwise load as a wrong weight (about 2 GB/s)."""
    import zipfile

    try:
        if not _is_zip(path):
            return  # torch's legacy format, or not a checkpoint: torch.load says which
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise ValueError(f"could not read checkpoint {path}: the file is damaged ({error})") from None
    if damaged is not None:
        raise ValueError(f"could not read checkpoint {path}: the file is damaged (its member {damaged!r} fails "
                         f"its CRC check)")


# How other files a user may mistake for a checkpoint begin.
_OTHER_FORMATS = (
    (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy .npy file"),
    (b"SQLite format 3", "an SQLite database"),
    (b"\x1f\x8b", "a gzip file: decompress it first"),
    (b"\xfd7zXZ", "an xz file: decompress it first"),
    (b"BZh", "a bzip2 file: decompress it first"),
    (b"\x89PNG", "a PNG image"),
    (b"version https://git-lfs", "a Git LFS pointer: fetch the file with git lfs pull"),
)


def _check_kind(path: Path) -> None:
    """Refuse, by name, a file that is not a PyTorch checkpoint (torch's zip or its legacy
    pickle) or a zip cut short, before torch reads it and says something less clear."""
    with open(path, "rb") as f:
        head = f.read(4096)
    for magic, kind in _OTHER_FORMATS:
        if head.startswith(magic):
            raise ValueError(f"could not read checkpoint {path}: not a PyTorch checkpoint (it is {kind})")
    if head.startswith(b"PK\x03\x04"):
        if not _is_zip(path):  # a zip's directory is at its end: the end is missing or damaged
            raise ValueError(f"could not read checkpoint {path}: the file is truncated or damaged (a zip archive "
                             f"whose directory at the end is missing or damaged; download or copy it again)")
        return
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # a pickle: torch's legacy format, or a plain pickle
        return
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None  # (a multi-byte character cut at the end of the 4 kB also lands here: binary, then)
    if text is not None and all(c.isprintable() or c in "\n\r\t" for c in text):
        start = text.strip()[:40].splitlines()[0] if text.strip() else ""
        raise ValueError(f"could not read checkpoint {path}: not a PyTorch checkpoint (it looks like text), "
                         f"starting {start!r}")
    raise ValueError(f"could not read checkpoint {path}: not a PyTorch checkpoint (neither torch's zip format nor "
                     f"a pickle; it starts with bytes {head[:8].hex(' ')})")


def _is_zip(path: Path) -> bool:
    """Whether ``path`` ends with a zip directory that can be read (``zipfile.is_zipfile`` itself
    raises on some damaged ones)."""
    import zipfile

    try:
        return zipfile.is_zipfile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return False


def _what_went_wrong(path: Path, error: BaseException) -> str:
    """torch.load's failure, as the file's problem."""
    import zipfile

    if _is_zip(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as damage:
            return f"the file is damaged ({_first_line(damage)})"
        if not any(name.endswith("data.pkl") for name in names):
            kind = " (a NumPy .npz file?)" if names and all(n.endswith(".npy") for n in names) else ""
            return f"not a PyTorch checkpoint: a zip archive without torch's data.pkl{kind}"
        return f"the file is damaged ({_first_line(error)})"
    # a pickle (_check_kind let nothing else through) that torch could not read to its end
    return f"the file is truncated or damaged ({_first_line(error)})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
