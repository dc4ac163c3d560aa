"""Unpickling of OC20's LMDB records that admits only what those records are made of.

A pickle names the functions and classes it calls to rebuild its objects, so loading one with
:func:`pickle.loads` runs whatever the file names (``os.system`` included). OC20's records are
torch_geometric ``Data`` objects of tensors, numpy arrays and numbers; :func:`restricted_loads`
resolves only those names and refuses any other with :class:`pickle.UnpicklingError`:

- ``torch_geometric.data``: ``Data`` and what it pickles (its ``GlobalStorage`` and the
  ``DataEdgeAttr``/``DataTensorAttr`` records of PyG 2.4+; PyG 1.x pickles name ``Data`` only);
- torch: tensors rebuilt from their storage bytes (``torch._utils._rebuild_tensor[_v2]``; the
  storage bytes themselves are read data-only, ``torch.load(..., weights_only=True)``), dtypes,
  ``torch.Size``;
- numpy: arrays, scalars and their dtypes (numpy 1 and 2 module names), object arrays excepted;
- plain containers: ``collections.OrderedDict``, ``set``, ``frozenset``, ``complex``, ``slice``,
  and ``_codecs.encode`` (protocol 2's bytes), ``copyreg._reconstructor`` (protocol 0/1 objects,
  whose classes are themselves looked up here).
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle

import numpy as np
import torch

__all__ = ["restricted_loads"]


def _storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes``, but data-only: the bytes are a torch stream of one
    storage, and torch's own version would unpickle them without restriction."""
    return torch.load(io.BytesIO(data), weights_only=True)


def _allowed() -> dict[tuple[str, str], object]:
    from torch_geometric.data import data as pyg_data
    from torch_geometric.data import storage as pyg_storage

    allowed: dict[tuple[str, str], object] = {
        ("torch_geometric.data.data", "Data"): pyg_data.Data,
        ("torch_geometric.data.storage", "GlobalStorage"): pyg_storage.GlobalStorage,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        # calls a function and sets attributes, both resolved through this table
        ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
        ("torch._tensor", "Tensor"): torch.Tensor,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("collections", "OrderedDict"): __import__("collections").OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("builtins", "object"): object,  # the base class protocol 0/1 name with _reconstructor
        ("_codecs", "encode"): __import__("_codecs").encode,
        ("copyreg", "_reconstructor"): __import__("copyreg")._reconstructor,
    }
    for name in ("DataEdgeAttr", "DataTensorAttr"):  # PyG >= 2.4
        if hasattr(pyg_data, name):
            allowed[("torch_geometric.data.data", name)] = getattr(pyg_data, name)
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    core = np._core
    for module in ("numpy._core", "numpy.core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in dir(np.dtypes):
        if name.endswith("DType") and name not in ("ObjectDType", "VoidDType", "StringDType"):
            allowed[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    for kind in (np.bool_, np.number, np.str_, np.bytes_, np.datetime64, np.timedelta64):
        for cls in (kind, *_subclasses(kind)):
            allowed[("numpy", cls.__name__)] = cls
    return allowed


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


_ALLOWED: dict | None = None


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        # Python 2's names (copy_reg, __builtin__; protocols 0-2 write them), mapped as pickle does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"it names {module}.{name}, which an OC20 record does not hold (records are torch_geometric "
                f"Data of tensors, numpy arrays and numbers); it is not loaded, as unpickling it could run code"
            )
        return found


def restricted_loads(data: bytes):
    """``pickle.loads(data)`` resolving only the names OC20's records use (see the module
    docstring); anything else raises :class:`pickle.UnpicklingError` naming it.

    Example:
        >>> import os, pickle
        >>> restricted_loads(pickle.dumps({"y": 1.5, "shape": (2, 3)}))
        {'y': 1.5, 'shape': (2, 3)}
        >>> class Payload:
        ...     def __reduce__(self):
        ...         return (os.system, ("echo never",))
        >>> restricted_loads(pickle.dumps(Payload()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: it names posix.system, ...
    """
    return _RestrictedUnpickler(io.BytesIO(data)).load()
